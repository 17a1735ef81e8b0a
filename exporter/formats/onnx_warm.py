"""Imported by the fork server that isolated workers are forked from (verify/pipeline/isolation.py PRELOAD), and
by nothing else: ONNX's operator tables built there once, so no worker exporting a --model builds them again
(exporter/formats/onnx_tables.py)."""

from exporter.formats.onnx_tables import build_tables

build_tables()
