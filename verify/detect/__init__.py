"""Whole detectors: detections matched by IoU (match.py), a detector exported and judged before and after NMS
(check.py: export.py writes the files; eager_runs.py, scripted_runs.py and onnx_runs.py run them, onnx_graph.py reads
the ONNX graph, runners.py picks a format's runner; verdict.py judges into report.py's types)."""
