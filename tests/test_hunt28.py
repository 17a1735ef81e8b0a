"""Hunt 28: models and export bugs the suite never held. A correct model the dynamo ONNX exporter cannot translate
(`AdaptiveMaxPool2d` to a size that does not divide its input) ended in "Failed to convert the exported program to
an ONNX model. \\x1b[96mThis is step 3/3\\x1b[0m of exporting the model to ONNX. Next steps:": terminal colour codes,
no operator named and nothing to do. The message now names the operator torch could not translate and the way out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exporter.formats import default_formats
from exporter.formats.onnx import OnnxFormat, export_failure_reason


class _OddMaxPool(nn.Module):
    def forward(self, x):
        return nn.functional.adaptive_max_pool2d(x, 3)  # 8 -> 3: no ONNX translation, in either exporter


@pytest.fixture(scope="module")
def dynamo_failure() -> BaseException:
    try:
        torch.onnx.export(_OddMaxPool().eval(), (torch.randn(1, 2, 8, 8),), None, dynamo=True)
    except Exception as exc:  # noqa: BLE001 - the failure is what is judged
        return exc
    pytest.fail("the dynamo exporter translated an adaptive max pool of 8 -> 3: pick another untranslatable model")


def test_a_dynamo_translation_failure_names_the_operator_and_the_way_out(dynamo_failure):
    reason = export_failure_reason(dynamo_failure, "dynamo", OnnxFormat.name)
    assert "\x1b" not in reason and "\n" not in reason
    assert "aten.adaptive_max_pool2d" in reason
    assert "--onnx-exporter torchscript" in reason
    others = [name for name in default_formats() if name != OnnxFormat.name]
    assert others and all(f"--format {name}" in reason for name in others)
    assert f"--format {OnnxFormat.name}" not in reason


def test_a_plain_failure_keeps_its_first_line_and_points_at_the_other_exporter():
    reason = export_failure_reason(RuntimeError("\x1b[1mUnsupported: op foo\x1b[0m\nmore detail"), "torchscript",
                                   OnnxFormat.name)
    assert reason.startswith("Unsupported: op foo;") and "more detail" not in reason
    assert "--onnx-exporter dynamo" in reason
