"""Hunt 10a: the whole detector, attacked (verify export -b, detector cells of verify matrix, detector folders).

Each test failed on the code before its fix (the "Before:" of its docstring, measured). The forged matrix cells start
from the suite's shared detector export (`detector_export`, the numbers `verify matrix` stores for such a cell) and
are judged again as `verify matrix merge` judges them; the rest are unit cases on the export's own functions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tests.helpers import NAME
from verify.detect.goldens import CLASSES
from verify.detect.match import Detections, iou_matrix
from verify.detect.proposals import Bands, ProposalCheck, RpnRules, explain_lone, explain_unpaired, kept_order
from verify.detect.verdict import ORACLE, RUNTIMES
from verify.judge.compare import Tolerance
from verify.matrix.result import AGREE, DISAGREE, CellResult

ORT = RUNTIMES["onnx"]
FORMATS = ("torchscript", "onnx")


@pytest.fixture(scope="module")
def cell_numbers(detector_export):
    """The numbers a matrix shard stores for the shared export's detector cell (verify/matrix/detector_cell.py)."""
    from verify.matrix.detector_cell import detector_numbers

    return detector_numbers(detector_export[0])


def judged(numbers: dict) -> CellResult:
    """The cell judged again from `numbers`, as `verify matrix merge` does (a shard that claims `agree`)."""
    from verify.matrix.detector_judging import judge_detector_cell

    cell = CellResult("c1", NAME, "frozen", "detector", AGREE, detector=copy.deepcopy(numbers), problems=[])
    return judge_detector_cell(cell, Tolerance(), FORMATS, 1)


def with_stored_pairings(numbers: dict) -> dict:
    """`numbers` with their stored proposal pairings replaced by the recomputed ones (what a forger stores)."""
    numbers["proposals"] = judged(numbers).detector["proposals"]
    return numbers


def rpn_candidates(numbers: dict) -> Detections:
    return Detections.of(numbers["rpn_candidates"][0])


def drop_ort_proposal(numbers: dict, box: np.ndarray) -> None:
    """ONNX Runtime's proposal closest to `box` removed: a run that lost it."""
    boxes = numbers["proposal_boxes"][ORT][0]
    lost = int(np.argmax(iou_matrix(box[None], np.asarray(boxes))[0]))
    numbers["proposal_boxes"][ORT][0] = [b for i, b in enumerate(boxes) if i != lost]


def add_rpn_candidate(numbers: dict, box: np.ndarray, score: float, level: int) -> None:
    found = numbers["rpn_candidates"][0]
    found["boxes"].append([float(v) for v in box])
    found["scores"].append(score)
    found["labels"].append(level)


def test_the_honest_cell_still_agrees(cell_numbers):
    assert judged(cell_numbers).verdict == AGREE


@pytest.mark.parametrize("candidate", [([0.0, 0.0, 10.0, 10.0], 10 ** 12), ([0.0, 0.0, 1e9, 1e9], 1)])
def test_an_nms_candidate_no_detector_gives_cannot_explain_lost_detections(cell_numbers, candidate):
    """Before: a shard whose ONNX Runtime run lost 22 of its 50 detections (each one with a same-class detection
    scored higher), plus one appended final-NMS candidate of label 10**12 or with a box at 1e9 px, merged as
    `agree`: the candidate's label and coordinate set torchvision's class offset, so every NMS band covered any IoU
    and each lost detection read as an `NMS` borderline. The matrix checked the candidates for finite numbers only
    (a detector folder checks their range and replays the NMS on them)."""
    numbers = copy.deepcopy(cell_numbers)
    run = numbers["runs"][ORT][0]
    labels, scores = np.asarray(run["labels"]), np.asarray(run["scores"])
    lost = {k for k in range(len(labels)) if ((labels == labels[k]) & (scores > scores[k])).any()}
    assert len(lost) > 10
    for key in ("boxes", "scores", "labels"):
        run[key] = [v for k, v in enumerate(run[key]) if k not in lost]
    assert judged(numbers).verdict == DISAGREE
    box, label = candidate
    found = numbers["candidates"][0]
    found["boxes"].append(box), found["scores"].append(0.5), found["labels"].append(label)
    result = judged(numbers)
    assert result.verdict == DISAGREE
    assert any("NMS candidates of image 0 outside" in p for p in result.problems)


def test_nms_candidates_that_do_not_give_the_oracles_detections_fail_the_cell(cell_numbers):
    """Before: a final-NMS candidate within range that the model's NMS would keep (a detection eager fp64 does not
    have) merged as `agree`, the candidates never replayed; now the NMS is replayed on them, as a detector folder's
    `postprocess` check does."""
    numbers = copy.deepcopy(cell_numbers)
    found = numbers["candidates"][0]
    found["boxes"].append([1.0, 1.0, 2.0, 2.0]), found["scores"].append(0.999), found["labels"].append(CLASSES - 1)
    result = judged(numbers)
    assert result.verdict == DISAGREE
    assert any("do not give eager fp64's stored detections" in p for p in result.problems)


def _kept_rival(numbers: dict) -> tuple[np.ndarray, np.ndarray, float, int]:
    """A proposal away from the image's edges, and a box of its level at the RPN's NMS threshold from it, that
    stays inside the image: (lost box, rival box, lost score, level)."""
    cands = rpn_candidates(numbers)
    nms = numbers["rpn_rules"]["nms_thresh"]
    for k in kept_order(cands, nms)[30:]:
        x1, y1, x2, y2 = cands.boxes[k]
        for shift in np.linspace(0.0, x2 - x1, 20001):
            rival = np.array([x1 - shift, y1, x2 - shift, y2])
            if iou_matrix(rival[None], cands.boxes[k][None])[0, 0] <= nms:
                break
        if rival[0] >= 0:
            return cands.boxes[k], rival, float(cands.scores[k]), int(cands.labels[k])
    raise AssertionError("no proposal to lose")


def test_an_rpn_candidate_the_oracle_never_had_cannot_explain_a_lost_proposal(cell_numbers):
    """Before: a shard whose ONNX Runtime run lost one proposal, with one RPN candidate appended at the NMS threshold
    of it (same level, scored as high) and its stored pairings recomputed, merged as `agree`: the lost proposal read
    as an `RPN NMS` borderline. The RPN candidates were range-checked only; now the RPN's NMS and cap are replayed
    on them and must give the oracle's stored proposals."""
    numbers = copy.deepcopy(cell_numbers)
    box, rival, score, level = _kept_rival(numbers)
    drop_ort_proposal(numbers, box)
    add_rpn_candidate(numbers, rival, score + 1e-9, level)
    result = judged(with_stored_pairings(numbers))
    assert result.verdict == DISAGREE
    assert any("do not give eager fp64's stored proposals" in p for p in result.problems)


def _suppressed_rival(numbers: dict) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Two kept proposals Q (higher) and k of one level, and a box between them that overlaps Q past the RPN's NMS
    threshold (so the NMS removes it) and k at that threshold: (k's box, the rival, k's score, level)."""
    cands = rpn_candidates(numbers)
    nms = numbers["rpn_rules"]["nms_thresh"]
    keep = kept_order(cands, nms)[:numbers["rpn_rules"]["post_nms_top_n"]]
    for q in keep:
        for k in keep:
            if cands.labels[q] != cands.labels[k] or cands.scores[q] <= cands.scores[k]:
                continue
            for t in np.linspace(0.0, 1.0, 401):
                rival = cands.boxes[q] + t * (cands.boxes[k] - cands.boxes[q])
                if iou_matrix(rival[None], cands.boxes[q][None])[0, 0] > nms + 5e-4 and \
                        abs(iou_matrix(rival[None], cands.boxes[k][None])[0, 0] - nms) < 2e-4:
                    return cands.boxes[k], rival, float(cands.scores[k]), int(cands.labels[k])
    raise AssertionError("no two proposals to put a rival between")


def test_an_rpn_candidate_the_nms_removes_explains_no_lost_proposal(cell_numbers):
    """Before: a candidate the float64 NMS removes (it overlaps a higher kept proposal past the threshold) still
    counted as a rival: appended at the threshold of a proposal ONNX Runtime lost, it left the replayed NMS exactly
    as recorded and made the loss an `RPN NMS` borderline (the shard merged as `agree`). A removed candidate
    suppresses nothing; only kept ones are rivals now."""
    numbers = copy.deepcopy(cell_numbers)
    box, rival, score, level = _suppressed_rival(numbers)
    drop_ort_proposal(numbers, box)
    add_rpn_candidate(numbers, rival, score + 1e-12, level)
    cands, rules = rpn_candidates(numbers), numbers["rpn_rules"]
    replayed = cands.boxes[kept_order(cands, rules["nms_thresh"])[:rules["post_nms_top_n"]]]
    assert np.array_equal(replayed, np.asarray(numbers["proposal_boxes"][ORACLE][0]))  # passes the replay
    result = judged(with_stored_pairings(numbers))
    assert result.verdict == DISAGREE
    assert any("rounding does not explain" in p for p in result.problems)


RULES = RpnRules(nms_thresh=0.7, post_nms_top_n=5, score_thresh=0.05)
BANDS = Bands(boxes=1e-4, scores=1e-6)


def test_a_removed_candidate_at_the_threshold_explains_nothing_in_the_export_either():
    """The unit case: Q kept (0.9), R removed by Q (IoU 0.78, 0.85), k kept (0.8) at IoU exactly the threshold from R
    and 0.54 from Q. Before: k in one run only was an `RPN NMS` borderline on R; now unexplained, while the same k
    against a kept rival at the threshold is still a borderline."""
    shift = (RULES.nms_thresh * 130 - 70) / (1 + RULES.nms_thresh)  # IoU(R, k) = nms_thresh
    q, r, k = ([x, 0.0, x + 100.0, 100.0] for x in (0.0, shift, 30.0))
    cands = Detections(np.array([q, r, k]), np.array([0.9, 0.85, 0.8]), np.zeros(3, np.int64))
    assert kept_order(cands, RULES.nms_thresh).tolist() == [0, 2]
    check = ProposalCheck("run", "ref")
    explain_lone(check, 0, "reference", np.array(k), cands, RULES, BANDS)
    assert not check.passed and not check.borderline
    kept = Detections(np.array([r, k]), np.array([0.85, 0.8]), np.zeros(2, np.int64))  # now R is kept
    check = ProposalCheck("run", "ref")
    explain_lone(check, 0, "reference", np.array(k), kept, RULES, BANDS)
    assert check.passed and "RPN NMS" in check.borderline[0]


def _cap_case() -> tuple[np.ndarray, Detections]:
    """Eight apart boxes of one level, the first dropped by the cap within rounding of the last kept."""
    boxes = np.array([[20.0 * i, 0.0, 20.0 * i + 10.0, 10.0] for i in range(8)])
    scores = np.linspace(0.99, 0.6, 8)
    cap = RULES.post_nms_top_n
    scores[cap] = scores[cap - 1] - BANDS.scores / 2
    return boxes, Detections(boxes, scores, np.zeros(8, np.int64))


def test_a_run_that_lost_its_last_proposal_is_no_swap_across_the_cap():
    """Before: a run that kept only 4 of the cap's 5 proposals, missing the last one, passed: the missing one was a
    `proposal cap` borderline because the first dropped candidate scored within rounding of it, though the run kept
    no proposal in its place (in the matrix: a shard whose ONNX Runtime run lost its 100th proposal, with a
    candidate appended just under it, merged as `agree`). A swap across the cap leaves the side without it full."""
    boxes, cands = _cap_case()
    cap = RULES.post_nms_top_n
    lost = ProposalCheck("run", "ref")
    explain_unpaired(lost, [([], [cap - 1])], [boxes[:cap - 1]], [boxes[:cap]], [cands], RULES, BANDS)
    assert not lost.passed and not lost.borderline
    swapped = ProposalCheck("run", "ref")
    run = np.concatenate([boxes[:cap - 1], boxes[cap:cap + 1]])
    explain_unpaired(swapped, [([cap - 1], [cap - 1])], [run], [boxes[:cap]], [cands], RULES, BANDS)
    assert swapped.passed and len(swapped.borderline) == 2 and all("proposal cap" in b for b in swapped.borderline)


def test_a_shard_whose_runtime_lost_its_last_proposal_does_not_merge(cell_numbers):
    """The matrix case of the test above: ONNX Runtime's lowest-scored proposal removed, and an RPN candidate appended
    just under it (it ranks first past the cap, so the replayed NMS still gives the oracle's proposals)."""
    numbers = copy.deepcopy(cell_numbers)
    cands, rules = rpn_candidates(numbers), numbers["rpn_rules"]
    keep = kept_order(cands, rules["nms_thresh"])
    last = keep[rules["post_nms_top_n"] - 1]
    assert len(keep) > rules["post_nms_top_n"]
    drop_ort_proposal(numbers, cands.boxes[last])
    free = next(np.array([x, y, x + 6.0, y + 6.0]) for y in range(0, 300, 4) for x in range(0, 300, 4)
                if iou_matrix(np.array([[x, y, x + 6.0, y + 6.0]]), cands.boxes)[0].max() < 0.3)
    add_rpn_candidate(numbers, free, float(cands.scores[last]) - 1e-7, int(cands.labels[last]))
    result = judged(with_stored_pairings(numbers))
    assert result.verdict == DISAGREE
    assert any("rounding does not explain" in p for p in result.problems)


def _nan_image() -> np.ndarray:
    image = np.full((3, 64, 64), 0.5, np.float32)
    image[:, 10, 10] = np.nan
    return image


@pytest.mark.parametrize(("images", "dynamic", "says"), [
    ([], True, "No detector images given"),
    ([_nan_image()], True, "holds NaN or infinite values"),
    ([np.zeros((3, 64, 64), np.float32), np.zeros((3, 64, 80), np.float32)], False, "Images of several sizes"),
])
def test_images_the_library_cannot_judge_are_refused_before_the_build(monkeypatch, images, dynamic, says):
    """Before (verify_detector, the library call; the CLI reads no such input): no image built the detector, exported,
    then ended in "IndexError: list index out of range"; one NaN pixel ran everything and failed with a wrong cause,
    "eager changed its input (image) in place while running" (the repeat guard's torch.equal reads NaN != NaN); two
    sizes without `dynamic` were refused only after the detector was built. Each is now one UsageError, no build."""
    from exporter.errors import UsageError
    from exporter.families import detectors
    from verify.detect.check import verify_detector

    monkeypatch.setattr(detectors, "build_detector", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(UsageError, match=says):
        verify_detector(NAME, images=images, dynamic=dynamic)


@pytest.mark.parametrize("shape", [(3, 4, 4), (3, 1, 1), (3, 4, 400)])
def test_rebuild_can_draw_images_of_every_golden_size(shape):
    """Before: `verify export -b NAME --format onnx --input tiny.png` of a textured 4x4 image agreed (exit 0), but
    `verify artifact <folder> --rebuild` failed that genuine folder: "rebuild · reference: rebuilt: RuntimeError:
    random_ expects 'from' to be less than 'to'", and the ONNX file was never loaded (exit 1). The rebuild draws seeded
    images of the golden sizes (verify/detect/rebuild.py), and calibration_image could not draw a side under
    MIN_IMAGE_SIDE; such an image is now its seeded texture alone (after: all 19 checks pass, exit 0)."""
    from exporter.families.detectors import calibration_image

    image = calibration_image(7, shape)
    assert tuple(image.shape) == shape and float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert bool((image == calibration_image(7, shape)).all())


@pytest.mark.parametrize("flag", ["--input", "--weights", "--sign-key"])
def test_overwrite_never_deletes_a_file_the_export_reads(tmp_path, monkeypatch, flag):
    """Before: `verify export -b NAME --input out/NAME-frozen/imgs --out out --overwrite` judged the images, agreed
    (exit 0) and then replaced the folder, deleting the user's images with it (a backbone export refuses this); the
    same held for --weights and --sign-key. Now a usage error before any work (exit 2), and the file stays."""
    from typer.testing import CliRunner

    from exporter.families import detectors
    from verify.cli import app

    monkeypatch.setattr(detectors, "build_detector", lambda *a, **k: pytest.fail("built"))
    inside = tmp_path / "out" / f"{NAME}-frozen"
    inside.mkdir(parents=True)
    given = {"--input": inside / "image.npy", "--weights": inside / "ckpt.pth", "--sign-key": inside / "key.pem"}[flag]
    np.save(given, np.zeros((1, 3, 32, 32), np.float32)) if flag == "--input" else given.write_bytes(b"x")
    result = CliRunner().invoke(app, ["export", "-b", NAME, "--out", str(tmp_path / "out"), "--overwrite", flag,
                                      str(given)])
    assert result.exit_code == 2, result.output
    assert "inside the export folder" in result.output and given.exists()


@pytest.mark.parametrize(("flag", "report"), [("--weights", "--markdown"), ("--sign-key", "--junit"),
                                              ("--weights", "--json"), ("--sign-key", "--html")])
def test_a_report_is_never_written_over_a_file_the_export_reads(tmp_path, monkeypatch, flag, report):
    """Before: `verify export -b NAME --format onnx --sign-key ci.pem --junit ci.pem` signed the folder, agreed
    (exit 0, "wrote ci.pem") and left the JUnit XML where the private key was; a report over a --weights checkpoint
    went the same way (a report over --input was already refused). Now a usage error before any work (exit 2), and
    the file stays as it was."""
    from typer.testing import CliRunner

    from exporter.families import detectors
    from verify.cli import app

    monkeypatch.setattr(detectors, "build_detector", lambda *a, **k: pytest.fail("built"))
    given = tmp_path / ("ckpt.pth" if flag == "--weights" else "key.pem")
    given.write_bytes(b"read, never written")
    result = CliRunner().invoke(app, ["export", "-b", NAME, "--out", str(tmp_path / "out"), flag, str(given), report,
                                      str(given)])
    assert result.exit_code == 2, result.output
    assert f"is the file {flag} reads" in result.output and given.read_bytes() == b"read, never written"


@pytest.fixture
def unsigned_folder(detector_export, tmp_path):
    """The suite's exported detector folder, unsigned, as hard links in a folder of this test (edit by replacing)."""
    from tests.helpers import linked_copy, strip_signature

    _, signed, result, _ = detector_export
    assert result.exit_code == 0, result.output
    return strip_signature(linked_copy(linked_copy(signed, tmp_path / "a"), tmp_path / "b"))


def test_a_moved_nms_candidate_box_fails_the_cell(cell_numbers):
    """Before: a shard whose ONNX Runtime run lost a detection D merged as `agree` once the stored final-NMS input of
    D was moved toward a kept same-class detection K, to IoU 0.4999 with it (from 0.485): the replayed NMS kept the
    same scores and labels, and the loss of D became an `NMS` borderline on the moved float64 box. The kept boxes,
    scaled back to the image as torchvision does, must now be eager fp64's stored boxes."""
    numbers = copy.deepcopy(cell_numbers)
    oracle, cands = Detections.of(numbers["runs"][ORACLE][0]), Detections.of(numbers["candidates"][0])
    pairs = [(d, k) for d in range(len(oracle)) for k in range(len(oracle)) if d != k
             and oracle.labels[d] == oracle.labels[k] and oracle.scores[k] > oracle.scores[d]
             and 0.3 < iou_matrix(oracle.boxes[d][None], oracle.boxes[k][None])[0, 0] < 0.5]
    d, k = max(pairs, key=lambda p: iou_matrix(oracle.boxes[p[0]][None], oracle.boxes[p[1]][None])[0, 0])
    cd, ck = (int(np.argmax(iou_matrix(oracle.boxes[i][None], cands.boxes)[0] * (cands.labels == oracle.labels[i])))
              for i in (d, k))
    toward = next(cands.boxes[cd] + t * (cands.boxes[ck] - cands.boxes[cd]) for t in np.linspace(0, 1, 100001)
                  if iou_matrix((cands.boxes[cd] + t * (cands.boxes[ck] - cands.boxes[cd]))[None],
                                cands.boxes[ck][None])[0, 0] >= 0.4999)
    numbers["candidates"][0]["boxes"][cd] = toward.tolist()
    run = numbers["runs"][ORT][0]
    lost = int(np.argmax(iou_matrix(oracle.boxes[d][None], np.asarray(run["boxes"]))[0]))
    for key in ("boxes", "scores", "labels"):
        run[key] = [v for i, v in enumerate(run[key]) if i != lost]
    result = judged(numbers)
    assert result.verdict == DISAGREE
    assert any("are not eager fp64's stored detection boxes" in p for p in result.problems)


def test_a_moved_golden_nms_input_box_fails_the_folders_postprocess_check(unsigned_folder, tmp_path):
    """The same in a detector folder: one recorded float64 final-NMS input box of a kept detection moved by 0.5 px,
    rehashed. Before: every integrity check passed (the replay compared scores and labels only) and `verify artifact`
    passed all 18 checks (exit 0); the moved box is what an `NMS` borderline is judged on. Now `postprocess` fails
    (exit 1), and nothing is run."""
    from exporter.manifest import GOLDENS_NAME
    from tests.helpers import checks, invoke, rehash

    with np.load(unsigned_folder / GOLDENS_NAME) as data:
        arrays = {key: data[key] for key in data.files}
    key = "float64.0.candidates"
    found = Detections.of({what: arrays[f"{key}.{what}"] for what in ("boxes", "scores", "labels")})
    nms = float(json.loads((unsigned_folder / "manifest.json").read_text())["postprocess"]["nms_thresh"])
    keep = kept_order(found, nms)
    arrays[f"{key}.boxes"] = arrays[f"{key}.boxes"].copy()
    arrays[f"{key}.boxes"][keep[0], 0] += 0.5
    moved = Detections(arrays[f"{key}.boxes"], found.scores, found.labels)
    assert np.array_equal(kept_order(moved, nms), keep)  # the replay of scores and labels still holds
    (unsigned_folder / GOLDENS_NAME).unlink()
    with open(unsigned_folder / GOLDENS_NAME, "wb") as handle:
        np.savez(handle, **arrays)
    rehash(unsigned_folder, GOLDENS_NAME)
    result = invoke("artifact", unsigned_folder, "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    failed = {c["name"]: c["message"] for c in checks(tmp_path / "a.json") if not c["passed"]}
    assert "a recorded box was moved" in failed["postprocess"]


@pytest.mark.parametrize("order", [(NAME, "resnet18"), ("resnet18", NAME)])
def test_export_refuses_a_second_backbone_instead_of_dropping_one(tmp_path, monkeypatch, order):
    """Before: `verify export -b NAME -b resnet18` exported and judged resnet18 only (exit 0), the detector silently
    dropped; `-b resnet18 -b NAME` exported the detector only. `verify export` takes one model; a second -b should be
    a usage error before any work (exit 2), pointing to `verify matrix -b A -b B`."""
    from typer.testing import CliRunner

    import verify.api
    from exporter.families import detectors
    from verify.cli import app

    monkeypatch.setattr(detectors, "build_detector", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(verify.api, "verify_export", lambda *a, **k: pytest.fail("exported"))
    result = CliRunner().invoke(app, ["export", "-b", order[0], "-b", order[1], "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--backbone/-b was given 2 times" in result.output and "verify matrix -b A -b B" in result.output


def test_the_detector_api_takes_its_folder_as_text(tmp_path):
    """`verify_detector(..., out="folder")`: a path given as text, as every folder API takes it (before:
    AttributeError: 'str' object has no attribute 'mkdir', after the detector was built)."""
    from verify.detect.check import _folder

    with _folder(str(tmp_path / "made")) as folder:
        assert folder == tmp_path / "made" and folder.is_dir()
