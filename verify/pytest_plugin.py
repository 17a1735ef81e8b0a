"""pytest plugin: verify your own model's exports from your own test suite, with `verify export`'s verdicts.

    def test_my_model_exports(assert_exports_agree):
        assert_exports_agree(MyNet(), torch.randn(1, 3, 224, 224))

The fixture `assert_exports_agree` writes the artifacts under the test's `tmp_path`; the function of the
same name (`from verify.pytest_plugin import assert_exports_agree`) takes `out=` instead. A disagreement
fails the test with the verdict table and the notes as plain text. Installed, the plugin loads through its
`pytest11` entry point (`backbone_verify`); from a checkout, `pytest -p verify.pytest_plugin`.
Nothing heavy is imported until a test calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from verify.compare import Tolerance
    from verify.report import Report

TABLE_WIDTH = 120
"""Columns of the table in the assertion message (wide enough that pair labels do not wrap)."""


def assert_exports_agree(module: Any, example: Any, *, out: Path | str, formats: Sequence[str] | None = None,
                         runtimes: Sequence[str] | None = None, tolerance: Tolerance | None = None,
                         trace: bool = False, onnx_exporter: str = "dynamo", opset: int = 18, dynamic: bool = True,
                         device: str = "cpu", name: str | None = None) -> Report:
    """Export `module` (default formats: those `verify export` writes), run every runtime on `example` (one
    float NCHW tensor, used as the input), judge every pair and each run against the float64 oracle, and
    raise AssertionError with the table and notes if any pair disagrees. Returns the Report.

    `tolerance`: `verify.compare.Tolerance()` (auto, the default) or e.g. `Tolerance.from_options(rtol=1e-5,
    atol=1e-6)`; a model that cannot run in float64 needs an explicit one. `trace`: TorchScript by tracing.
    Artifacts go to `out/<name>/` (the manifest and goldens with them), the report to `out/<name>-report.json`.
    The module is copied first: the caller's object is left as it was."""
    __tracebackhide__ = True  # a failure points at the user's test line, not here
    import numpy as np
    import torch

    from exporter.errors import UsageError
    from exporter.export import ExportOptions
    from exporter.formats import default_formats
    from exporter.formats.aoti import AotiOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.formats.torchscript import TorchScriptOptions
    from exporter.user_model import ModuleSpec
    from verify.api import RunSettings, verify_export
    from verify.compare import Tolerance
    from verify.report import write_json_report
    from verify.runtimes import RuntimeOptions

    if not (isinstance(example, torch.Tensor) and example.is_floating_point() and example.dim() == 4):
        raise UsageError(f"example must be one float NCHW tensor, e.g. torch.randn(1, 3, 224, 224); got "
                         f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}")
    spec = ModuleSpec.of(module, example, name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    input_file = out / f"{spec.slug}-input.npy"
    np.save(input_file, example.detach().to("cpu", torch.float32).numpy())
    settings = RunSettings(input_file=input_file, tolerance=tolerance or Tolerance(),
                           runtime=RuntimeOptions(device=device))
    options = ExportOptions(formats=tuple(formats or default_formats()), dynamic=dynamic, format_options=(
        TorchScriptOptions("trace" if trace else "script"), OnnxOptions(onnx_exporter, opset), AotiOptions(device)))
    report = verify_export(spec, settings, out=out, export=options, runtimes=runtimes)
    write_json_report(report.to_dict(), out / f"{spec.slug}-report.json")
    if not report.passed:
        raise AssertionError(f"exports of {spec} disagree (artifacts in {report.artifacts.get('folder')}):\n"
                             + render_text(report))
    return report


def render_text(report: Report, width: int = TABLE_WIDTH) -> str:
    """The verdict table (one row per pair and output) and the notes, as plain text."""
    import io

    from rich.console import Console

    from verify.report import render_pairs

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False,
                      emoji=False)
    render_pairs(report, console, verbose=True)
    return buffer.getvalue().rstrip()


@pytest.fixture(name="assert_exports_agree")
def _assert_exports_agree_fixture(tmp_path: Path, request: pytest.FixtureRequest):
    """`assert_exports_agree(module, example, **options)`, with artifacts under this test's tmp_path and the
    test's name as the model's."""

    def check(module: Any, example: Any, **options: Any) -> Report:
        __tracebackhide__ = True
        options.setdefault("out", tmp_path)
        options.setdefault("name", request.node.name)
        return assert_exports_agree(module, example, **options)

    return check
