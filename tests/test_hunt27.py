"""Hunt 27: a new user's bad inputs on the newest surfaces (Mask and Keypoint R-CNN): report paths that name standard
output (`--json -` wrote a file named `-`; `--json /dev/stdout` with stdout redirected to a file replaced the link
/dev/stdout itself with the report, as root), and `verify compare` of a whole detector (it said "Unknown backbone" and
listed the backbones). Every case is refused while the command line is parsed, before anything is built."""

from __future__ import annotations

import json
import os

import pytest

from exporter.families.detectors import DETECTORS, KEYPOINT_KINDS, MASK_KINDS
from tests.helpers import invoke
from verify.render.claim import REPORT_OPTIONS, claim_report_paths, names_a_stream

HEAD_DETECTORS = [name for name in DETECTORS.names() if DETECTORS.get(name).kind in (*MASK_KINDS, *KEYPOINT_KINDS)]
"""The detectors with a per-detection head (Mask R-CNN, Keypoint R-CNN): the surfaces this hunt tried."""


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("option", REPORT_OPTIONS)
def test_a_report_path_naming_standard_output_is_refused_and_nothing_is_written(option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "report-link"
    link.symlink_to("/dev/stdout")
    was_link = os.path.islink("/dev/stdout")
    for target in ("-", "/dev/stdout", "/proc/self/fd/1", str(link)):
        result = invoke("export", "-b", HEAD_DETECTORS[0], "--out", tmp_path / "out", option, target)
        assert result.exit_code == 2, (target, result.output)
        assert "not a file" in _one_line(result.output), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name]  # no file named `-`, no export folder
    assert os.path.islink("/dev/stdout") == was_link


def test_the_claim_of_earlier_reports_never_removes_a_link_to_a_stream(tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"passed": True}))
    with open(earlier) as handle:  # /proc/self/fd/N: the stream the shell redirected, here an earlier report
        link = tmp_path / "r.json"
        link.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        assert names_a_stream(link) and names_a_stream("-") and not names_a_stream(earlier)
        assert claim_report_paths(["export", "--json", str(link)]) == []
    assert link.is_symlink() and earlier.exists()
    assert claim_report_paths(["export", "--json", str(earlier)]) == [earlier]  # a plain earlier report still goes


@pytest.mark.parametrize("name", HEAD_DETECTORS)
def test_compare_of_a_whole_detector_points_at_explain_and_export(name):
    norm = DETECTORS.get(name).default_norm
    for a, b in ((f"{name}:{norm}", f"{name}:{norm}"), ("resnet18:batch:body", name)):
        result = invoke("compare", a, b)
        assert result.exit_code == 2, result.output
        line = _one_line(result.output)
        assert "verify explain" in line and f"verify export -b {name}" in line and "Unknown backbone" not in line



def test_explain_in_a_pipe_prints_each_output_whole_on_one_line():
    """`verify explain A B | cat` printed its evidence as a table cut to 80 columns (`rpn.head.cls_logi…`, floors as
    `2.15…`) and wrapped a structural difference into two lines. In a pipe, each output is one whole line now."""
    result = invoke("explain", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x3x32x32")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    evidence = [line for line in lines if line.startswith("  layer")]
    assert [line.split(":")[0].strip() for line in evidence] == ["layer1", "layer2", "layer3", "layer4"], lines
    assert all("floor A" in line and "x floor" in line and "…" not in line for line in evidence), evidence
    differences = [line for line in lines if line.startswith("  • ")]
    assert differences and all(line.rstrip().endswith(")") for line in differences), lines


def test_an_image_too_thin_for_a_detector_is_told_the_detectors_own_size():
    """A detector registered at TINY_DETECTOR px was told it "resizes each image to fit 320 pixels" (the default size)
    for a 2x400 image: the message names the detector's own size now."""
    from exporter.errors import UsageError
    from exporter.families.detectors import Detector, check_image_size
    from tests.helpers import TINY_DETECTOR, tiny_rcnn_options

    tiny = Detector("fasterrcnn_tiny_hunt27", "fasterrcnn", None, ("batch",), tiny_rcnn_options(),
                    builder="fasterrcnn_resnet50_fpn")
    with DETECTORS.adding(tiny.name, tiny), pytest.raises(UsageError) as caught:
        check_image_size(tiny.name, 2, 400 * TINY_DETECTOR)
    assert f"fit {TINY_DETECTOR} pixels" in str(caught.value) and "\n" not in str(caught.value)
