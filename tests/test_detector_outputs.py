"""A whole detector's report through JUnit, Markdown and HTML (verify/render/detections.py) and the export
command's detector function (verify/cli/detector.py): one case or row per judged pair, the detection-level
table, each image drawn with every run's boxes, every string escaped."""

from __future__ import annotations

import base64
import copy
import io
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer

from exporter.errors import UsageError
from verify.cli.detector import SUPPORTED_OPTIONS, export_detector, refuse_unsupported
from verify.detect.check import verify_detector
from verify.detect.verdict import EAGER
from verify.render.detections import (
    TABLE_HEADER,
    detector_html,
    detector_junit,
    detector_markdown,
)

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"
SMALL_IMAGE = (1, 3, 160, 160)
"""Where the explain test's question does not depend on the image's size (which norm differs, and where first):
fasterrcnn_resnet50_fpn traced twice in float64 at 320 px took 23 s of the suite."""
HOSTILE = "<script>alert(1)</script> | `x` & *y*"
"""A refusal text no page may show raw."""


@pytest.fixture(scope="module")
def report(module_tmp):
    """Its files stay for the module: the command test below writes its folder from them."""
    return verify_detector(NAME, shape=(2, 3, 320, 320), out=module_tmp("detector-outputs"))


@pytest.fixture
def failing(report):
    bad = copy.copy(report)
    bad.refusals = {"onnx": HOSTILE}
    return bad


def test_junit_holds_one_case_per_row_and_fails_what_failed(report, failing):
    assert report.exit_code == 0, report.summary()
    for case, expected_failures in ((report, 0), (failing, 1)):
        root = ET.fromstring(detector_junit(case))
        cases = root.findall("./testsuite/testcase")
        assert len(cases) == len(case.rows())
        assert int(root.get("failures")) == expected_failures == len(root.findall("./testsuite/testcase/failure"))
    names = {c.get("name") for c in ET.fromstring(detector_junit(report)).iter("testcase")}
    assert "after NMS: onnxruntime vs eager fp64" in names and "before NMS: onnxruntime vs eager fp64" in names
    failure = ET.fromstring(detector_junit(failing)).find("./testsuite/testcase/failure")
    assert failure.get("message") == HOSTILE


def test_markdown_has_the_detection_table_and_escapes_every_string(report, failing):
    text = detector_markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(report.detections)
    assert text.startswith("## ✅") and all(line.count(" | ") == len(TABLE_HEADER) - 1 for line in rows)
    pair = next(p for p in report.detections if p.a == "onnxruntime")
    assert f"{pair.matched} of {sum(pair.reference_per_image)}" in text
    bad = detector_markdown(failing)
    assert bad.startswith("## ❌") and "<script>" not in bad and "### What failed" in bad
    assert r"&lt;script&gt;alert(1)&lt;/script&gt; \| \`x\` &amp; \*y\*" in bad


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_draws_each_image_with_every_runs_boxes(report):
    from PIL import Image

    page = _Collect()
    page.feed(detector_html(report))
    assert sum(tag == "svg" for tag, _ in page.tags) == len(report.images)
    drawn = [label for label in report.boxes if label != EAGER]
    assert {"eager fp64", "torchscript", "onnxruntime"} <= set(drawn)
    assert sum(tag == "rect" for tag, _ in page.tags) == sum(len(d) for label in drawn for d in report.boxes[label])
    pictures = [attrs["href"] for tag, attrs in page.tags if tag == "image"]
    assert len(pictures) == len(report.images)
    png = Image.open(io.BytesIO(base64.b64decode(pictures[0].split(",", 1)[1])))
    assert png.size == tuple(reversed(report.images[0].shape[-2:]))
    assert sum(tag == "table" for tag, _ in page.tags) == 2  # after NMS, before NMS
    assert any(f"{p.a} vs {p.b}" in "".join(page.text) for p in report.detections)


def test_html_escapes_every_string(failing):
    text = detector_html(failing)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"<(?!/?(?:html|head|meta|title|style|body|h1|h2|p|table|tr|th|td|ul|li|code|figure|svg|"
                         r"image|rect|figcaption|span)\b|!DOCTYPE)", text)


def test_the_detector_command_writes_every_report_and_exits_with_the_verdict(report, tmp_path, monkeypatch):
    """The command's own function, its judging replaced by the module's report (judged above)."""
    import verify.detect.check

    def judged(*args, out, **kwargs):  # as verify_detector does: its files in `out`, the command's staging folder
        copied = copy.copy(report)
        copied.files = {fmt: str(shutil.copy(path, out)) for fmt, path in report.files.items()}
        return copied

    monkeypatch.setattr(verify.detect.check, "verify_detector", judged)
    paths = {name: tmp_path / f"r.{name}" for name in ("json", "junit", "markdown", "html")}
    with pytest.raises(typer.Exit) as done:
        export_detector(NAME, "frozen", "synthetic", 0, None, None, None, tmp_path / "out", None, paths["json"],
                        junit=paths["junit"], markdown=paths["markdown"], html=paths["html"])
    assert done.value.exit_code == report.exit_code == 0
    assert ET.fromstring(paths["junit"].read_text()).get("failures") == "0"
    assert paths["markdown"].read_text() == detector_markdown(report)
    assert paths["html"].read_text().startswith("<!DOCTYPE html>") and paths["json"].stat().st_size
    folder = tmp_path / "out" / f"{NAME}-frozen"  # the folder proves itself: goldens and manifest beside the files
    assert {"manifest.json", "goldens.npz", *(Path(f).name for f in report.files.values())} <= {
        p.name for p in folder.iterdir()}


@pytest.mark.parametrize("flags, refused", [(["--junit", "--rtol"], "--rtol"), (["--trace"], "--trace")])
def test_an_option_a_detector_does_not_apply_is_refused(flags, refused):
    with pytest.raises(UsageError, match=f"^{refused} is not supported for a whole detector"):
        refuse_unsupported(flags)
    refuse_unsupported(list(SUPPORTED_OPTIONS))


def test_two_reports_into_one_file_are_refused_before_building(tmp_path):
    same = tmp_path / "r.xml"
    with pytest.raises(UsageError, match="both write"):
        export_detector(NAME, "frozen", "synthetic", 0, None, None, None, tmp_path / "out", None, None,
                        junit=same, html=same)


def test_explain_names_eps_at_the_first_norm_of_a_detector():
    """The issue's example: Faster R-CNN's FrozenBN with eps 1e-5 against the COCO weights' eps 0."""
    from verify.detect.explain import explain_detectors
    from verify.explain.localize import EQUIVALENCE_RTOL

    result = explain_detectors("fasterrcnn_resnet50_fpn:frozen", "fasterrcnn_resnet50_fpn:frozen-eps0",
                               shape=SMALL_IMAGE)
    assert result.exit_code == 1 and not result.equivalent
    assert result.first_divergence == "backbone.body.bn1", result.divergence_text()
    assert "eps 1e-05 vs 0" in result.divergence_text()
    assert {d.kind for d in result.structural_differences} == {"eps"}
    assert all(d["max_rel"] > EQUIVALENCE_RTOL for d in result.float64_difference.values())
    assert any(name.startswith("roi_heads.") for name in result.outputs)


def test_explain_calls_one_detector_built_twice_equivalent(tmp_path, capsys):
    """Through the explain command's detector function: exit 0, the verdict printed, the JSON written."""
    import json

    from verify.cli.detector import explain_detector

    with pytest.raises(typer.Exit) as done:
        explain_detector(NAME, f"{NAME}:frozen", "synthetic", 0, None, None, tmp_path / "e.json")
    result = json.loads((tmp_path / "e.json").read_text())
    assert done.value.exit_code == 0 and result["equivalent"] and not result["structural_differences"]
    assert result["first_divergence"] is None and "roi_heads.box_predictor.cls_score#0" in result["outputs"]
    assert "equivalent" in capsys.readouterr().out


@pytest.mark.parametrize("b, named", [("resnet50:frozen:body", "is not one"),
                                      (f"{NAME}:frozen:body", "drop the view")])
def test_explain_refuses_a_detector_against_what_is_not_one(tmp_path, b, named):
    from verify.cli.detector import explain_detector

    with pytest.raises(UsageError, match=named):
        explain_detector(NAME, b, "synthetic", 0, None, None)
