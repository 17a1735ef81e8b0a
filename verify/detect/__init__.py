"""Whole detectors: detections matched by IoU (match.py), a detector exported and judged before and after NMS
(check.py)."""
