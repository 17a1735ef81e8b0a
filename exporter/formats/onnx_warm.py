"""Imported by the fork server that isolated workers are forked from (verify/pipeline/isolation.py PRELOAD), and
by nothing else: ONNX's operator tables built there once, so no worker exporting a --model builds them again
(exporter/formats/onnx_tables.py). A warm-up that fails is skipped: the fork server stops at any error but an
ImportError in its preload, and then no worker could start; each export builds what it needs as before."""

import contextlib

with contextlib.suppress(Exception):
    from exporter.formats.onnx_tables import build_tables

    build_tables()
