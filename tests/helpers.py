"""Helpers shared by several test modules (issue 15): test modules import these from here, never from one another
(tests/test_architecture.py checks it); fixtures stay in tests/conftest.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from typer.testing import CliRunner

from exporter.backbones import build_model
from exporter.export import ExportOptions
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.manifest import MANIFEST_NAME, SIGNATURE_NAME, file_sha256
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.api import RunSettings
from verify.cli import app
from verify.detect.match import DetectionFloor, Detections, Rules
from verify.inputs import make_input
from verify.judge import trust
from verify.judge.compare import Tolerance
from verify.judge.oracle import measure_oracle
from verify.matrix import MatrixRequest

if TYPE_CHECKING:
    import onnx

# The CLI ---------------------------------------------------------------------------------------------------------
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Export folders: edited on a copy whose unchanged files are hard links to a shared export -------------------------
def rewrite(path, data: bytes) -> None:
    """Replace `path` by a new file (never through the hard link to the module's export)."""
    path.unlink()
    path.write_bytes(data)


def edit_manifest(folder, change) -> None:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    change(data)
    rewrite(folder / MANIFEST_NAME, json.dumps(data, indent=2).encode())


def rehash(folder, name: str) -> None:
    """Record `name`'s new sha256 and size in the manifest: the folder is consistent again."""
    def change(data):
        data["files"][name].update(sha256=file_sha256(folder / name), size=(folder / name).stat().st_size)
    edit_manifest(folder, change)


def edit_goldens(folder, change, save=np.savez) -> None:
    """A detector folder's goldens.npz: change(arrays) in place, written back with `save` into a new file (the
    folder's files may be hard links to another) and rehashed: a consistent folder again."""
    from exporter.manifest import GOLDENS_NAME

    with np.load(folder / GOLDENS_NAME) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    (folder / GOLDENS_NAME).unlink()
    with open(folder / GOLDENS_NAME, "wb") as handle:
        save(handle, **arrays)
    rehash(folder, GOLDENS_NAME)


def linked_copy(folder: Path, where: Path) -> Path:
    """A copy of `folder` in `where` whose files are hard links: replace a file to change it (see `rewrite`)."""
    return Path(shutil.copytree(folder, where / folder.name, copy_function=os.link))


def strip_signature(folder: Path) -> Path:
    """`folder`, a signed export, made what its export publishes unsigned: no signature file, none declared."""
    (folder / SIGNATURE_NAME).unlink()
    edit_manifest(folder, lambda data: data.pop("signature"))
    return folder


def checks(report_path) -> list[dict]:
    return json.loads(report_path.read_text())["checks"]


# Signing keys ----------------------------------------------------------------------------------------------------
def make_keys(folder: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / "ci.pem", folder / "ci.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


# Whole detectors -------------------------------------------------------------------------------------------------
NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"
ONE_CHANNEL_ERROR = 1e-3
"""A 0.1 % error in one output channel (row) of a box-head layer."""

CULPRIT_LAYER, CULPRIT_CHANNEL = "layer2.0.conv2", 5
"""The conv and output channel the culprit and layer-verdict tests put an error in (SMALL's ONNX files)."""


def scaled_onnx_channel(path, out, error: float = ONE_CHANNEL_ERROR) -> None:
    """The ONNX file at `path` with CULPRIT_CHANNEL of CULPRIT_LAYER's weight scaled by 1 + `error`, saved to `out`."""
    scaled_onnx_weight(path, out, f"{CULPRIT_LAYER}.weight", CULPRIT_CHANNEL, error)


def scaled_onnx_weight(path, out, name: str, channel: int, error: float, axis: int = 0) -> None:
    """The ONNX file at `path` with `channel` (on `axis`: 1 for a ConvTranspose's output channels) of the initializer
    `name` (or the first whose name ends in it) scaled by 1 + `error`, saved to `out`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = list(model.graph.initializer)
    init = next((i for i in inits if i.name == name), None) or next(i for i in inits if i.name.endswith(name))
    weight = numpy_helper.to_array(init).copy()
    weight[(slice(None),) * axis + (channel,)] *= 1 + error
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(model, str(out))


def edit_onnx_exports(monkeypatch, edit) -> None:
    """An exporter bug stand-in: every ONNX file exported in this process is rewritten by `edit(path)` (the overlap's
    background child is off, so the stand-in runs where the export does)."""
    import exporter.export
    from verify.pipeline.overlap import MODE_ENV

    original = exporter.export.export_model

    def buggy(built, base, example, folder, options, fmt, context=None):
        artifact = original(built, base, example, folder, options, fmt, context)
        if fmt == "onnx":
            edit(artifact.path)
        return artifact

    monkeypatch.setattr(exporter.export, "export_model", buggy)
    monkeypatch.setenv(MODE_ENV, "off")



def one_channel_error(model: onnx.ModelProto) -> None:
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == "roi_heads.box_head.fc7.weight")
    weight = numpy_helper.to_array(init).copy()
    weight[int(np.abs(weight).sum(axis=1).argmax())] *= 1 + ONE_CHANNEL_ERROR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))


# Backbone exports and their trust guards -------------------------------------------------------------------------
TINY = (1, 3, 32, 32)


def assert_all_agree(report):
    failing = [(p.a, p.b, p.worst.name, p.worst.ratio) for p in report.pairs if not p.passed]
    assert report.passed, failing
    assert report.exit_code == 0


def assert_deterministic_and_under_the_bound(backbone: str, norm: str) -> None:
    """`backbone` x `norm` (body view, 32x32) repeats bit for bit, and its float32 floor is a small share of the
    rounding bound (README: the measured shares of all 102 models at 128x128)."""
    import torch

    x = make_input((1, 3, 32, 32), 0)
    built = build_model(ModelSpec(backbone, norm, "body"), load_weights("synthetic", backbone, 0), 0)
    with torch.inference_mode():
        first, second = built.model(torch.from_numpy(x)), built.model(torch.from_numpy(x))
    assert all(torch.equal(first[k], second[k]) for k in first), (backbone, norm)
    artifact = eager_artifact(built, x.shape)
    oracle = measure_oracle(artifact, {artifact.meta.input_name: x}, None)
    k = trust.accumulation_length(built.model, input_shape=x.shape)
    ratios = trust.floor_bound_ratios(oracle.noise, oracle.outputs, k)
    assert ratios and max(ratios.values()) < 1.0, (backbone, norm, ratios)
    assert not trust.floor_problems(oracle.noise, oracle.outputs, k)


# The matrix ------------------------------------------------------------------------------------------------------
MATRIX_SHAPE = (1, 3, 32, 32)
MATRIX_NORMS = ("batch", "frozen")
"""The two-cell matrix `request` builds: resnet18's body in these norms, at this shape."""
FAILING_SHARE = 0.9
"""The disagreeing matrix runs at this share of the passing run's worst ratio: at least that pair fails."""


def request(factor=None):
    settings = RunSettings(shape=MATRIX_SHAPE, tolerance=Tolerance.from_options(factor=factor))
    return MatrixRequest.create(["resnet18"], list(MATRIX_NORMS), ["body"], settings, ExportOptions(
        formats=("torchscript", "onnx"), format_options=(OnnxOptions("torchscript"),)))


DETECTION_RULES = Rules(score_thresh=0.05, nms_thresh=0.5, detections_per_img=50)
"""Post-processing constants for detection tests built by hand (torchvision's defaults, 50 detections an image)."""
DETECTION_FLOOR = DetectionFloor(boxes=1e-4, scores=1e-7, matched=10)


def detection_grid(count: int, seed: int = 0) -> Detections:
    """`count` well separated boxes (no two of a class overlap), scores well above DETECTION_RULES' threshold."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[40.0 * (i % 8), 40.0 * (i // 8), 40.0 * (i % 8) + 30, 40.0 * (i // 8) + 25]
                      for i in range(count)])
    scores = rng.uniform(DETECTION_RULES.score_thresh + 0.05, 0.9, count)
    return Detections(boxes, scores, rng.integers(1, 6, count))


def masked_conv_source(value: str, border: bool = False) -> str:
    """A user model file (`correct` and `shifted` factories): a 3->4 conv whose output holds `value` at a mask, one
    element per channel or (`border`) its whole border, and whose export adds 0.05 everywhere (an export bug: the
    file computes something else). The peak rule's attack (verify/judge/peaks.py PEAK_FACTOR)."""
    mask = ("mask = torch.ones_like(y, dtype=torch.bool)\n        mask[:, :, 1:-1, 1:-1] = False" if border else
            "mask = torch.zeros_like(y, dtype=torch.bool)\n        mask[:, :, 0, 0] = True")
    return f"""
import torch
from torch import nn


class Masked(nn.Module):
    def __init__(self, shift: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting():
            y = y + self.shift
        {mask}
        return y.masked_fill(mask, {value})


def correct():
    return Masked(0.0)


def shifted():
    return Masked(0.05)
"""


BOUND_SHAPE = "1x2x8x8"
"""The floor-bound probes' input: a 2-channel 3x3 conv at 8x8 (tests/test_trust.py, tests/test_hunt12b.py)."""
BOUND_CHANNELS = 2
BOUND_CONV_K = trust.accumulation_length(parameters=[(BOUND_CHANNELS, BOUND_CHANNELS, 3, 3)],
                                        input_shape=(1, BOUND_CHANNELS, 8, 8))
BOUND_OTHER_IN_FLOAT64 = 10.0
"""How far a probe model's float64 is from its float32, in units of its floor bound: refused on its own."""


def traced_file(factory, target: Path, shape: tuple[int, ...] = (1, 3, 32, 32)) -> Path:
    """`factory()` traced by torch.jit.trace on a random input of `shape` (its warnings silenced), saved to `target`."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(factory(), torch.randn(*shape)).save(str(target))
    return target


def refuse_layer(monkeypatch, name: str) -> None:
    """The layer verdict's re-run of layer `name` made to fail as one that cannot take the reference's values
    (verify/explain/rerun.py `rerun`): the file must fail, naming it."""
    import verify.explain.rerun as rerun_module

    real = rerun_module.rerun

    def refused(result, path, layer, *args):
        if path == name:
            result.unrunnable.append(path)
            return None
        return real(result, path, layer, *args)

    monkeypatch.setattr(rerun_module, "rerun", refused)


def load_source(path: Path, name: str):
    """The Python file `path` imported as module `name` (a model file a test wrote)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EAGER_NOISE_MODELS = """
import torch
from torch import nn


class EagerNoise(nn.Module):
    \"\"\"Adds noise seeded by the input's values (the same input twice: the same bits) in the dtypes named,
    only when not exporting.\"\"\"

    def __init__(self, noise: float, dtypes: tuple) -> None:
        super().__init__()
        torch.manual_seed(0)  # every factory the same conv: `verify compare` holds one against another's export
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.noise = noise
        self.dtypes = dtypes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or str(y.dtype) not in self.dtypes:
            return y
        g = torch.Generator().manual_seed(int(abs(x.sum().item()) * 1e6) % (2 ** 31))
        return y + self.noise * y.abs().max() * torch.randn(y.shape, generator=g, dtype=y.dtype)


def make(dtypes=("torch.float32", "torch.float64")):
    return EagerNoise({noise}, dtypes)


def float32_only():
    return make(("torch.float32",))


def float64_only():
    return make(("torch.float64",))


def clean():
    return EagerNoise(0.0, ())


class CastsWhenExported(nn.Module):
    \"\"\"Its export computes in float32 whatever its parameters' dtype: the file cannot run in float64.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float() if torch.compiler.is_exporting() else x)


def casts():
    return CastsWhenExported()


class OffWhenExported(nn.Module):
    \"\"\"An export bug: the file computes the conv 0.1 % off.\"\"\"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 1.001 if torch.compiler.is_exporting() else y


def off():
    return OffWhenExported()


class SoftmaxInFloat32(nn.Module):
    \"\"\"A softmax in float32 on purpose, back in the input's dtype (as mixed-precision code writes it): correct, and
    its .pt2 cannot run in float64 (torch.export bakes the cast).\"\"\"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.softmax(y.float(), 1).to(y.dtype)


def softmax_in_float32():
    return SoftmaxInFloat32()
"""
"""User models whose eager path adds noise seeded by the input, in the dtypes named, when not exporting (guard 3,
verify/judge/file_floor.py: tests/test_file_floor.py and test_hunt13a.py); format with channels= and noise=."""


# A user's model whose output is a Linear's (hunt 16b's head; these weights failed at 6.0x before the fix), shared by
# tests/test_hunt16b.py and tests/test_hunt17a.py ------------------------------------------------------------------
HEAD_MODEL = """
import torch
from torch import nn


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 10)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc(torch.flatten(self.c(self.bn(self.proj(self.act(self.stem(x))))), 1))


def make():
    torch.manual_seed(0)
    return Named()
"""


def trace_context(model: Any, dynamic: bool = True) -> Any:
    """What exporter/formats/torchscript.py `refuse_traced_reads` reads of an export: a user's model (eval mode), its
    32 px example, whether the axes are dynamic (hunts 20b and 21b)."""
    from types import SimpleNamespace

    import torch

    return SimpleNamespace(built=SimpleNamespace(model=model.eval(), spec=SimpleNamespace(registered=False)),
                           example=torch.randn(1, 3, 32, 32), dynamic=dynamic)


def quiet_branch_source(width: str) -> str:
    """A user's model file (`make`) that silences the trace's warnings and returns y where `width` (an expression of
    its input `x`) is at least 16, else -y: a size read the file keeps from its traced example (hunts 20b and 21b)."""
    return f'''
import warnings

import torch
from torch import nn


class QuietBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        warnings.simplefilter("ignore")
        y = self.conv(x)
        return y if {width} >= 16 else -y


def make():
    torch.manual_seed(0)
    return QuietBranch()
'''


def scripted_box_clip(path, bound: float, out, holder: str | None = None):
    """The TorchScript detector file `path` saved as `out` with its box coder's clamp of dw and dh (`bbox_xform_clip`)
    set to `bound`: the coder of its `holder` submodule (Faster R-CNN's `roi_heads`), else its own (RetinaNet,
    SSDlite). A decoding bug that moves only the candidates whose codes the clamp reaches (hunts 21a and 22a)."""
    import warnings

    import torch

    class Clamp(torch.nn.Module):
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def forward(self, bound: float) -> None:
            self.owner.box_coder.bbox_xform_clip = bound

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated: a warning on every load and save
        scripted = torch.jit.load(str(path))
        torch.jit.script(Clamp(getattr(scripted, holder) if holder else scripted))(bound)
        torch.jit.save(scripted, str(out))
    return out


def quiet_branch(condition):
    """A conv whose output is y where `condition(x)` holds, else -y, the trace's warnings silenced: a branch on what
    a model reads of its input, which a trace bakes in (hunts 21b and 22b)."""
    import warnings

    import torch
    from torch import nn

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            warnings.simplefilter("ignore")
            y = self.conv(x)
            return y if condition(x) else -y

    return Branch()


def central_records(raw: bytes) -> tuple[int, list[tuple[str, bytes]]]:
    """A plain zip's central directory (no zip64 record): its offset, and each record as (member name, its bytes), for
    tests that craft archives two zip readers read apart (tests/test_hunt10c.py, tests/test_review24.py)."""
    import struct

    end = raw.rfind(b"PK\x05\x06")
    size, offset = struct.unpack("<II", raw[end + 12:end + 20])
    directory, records, at = raw[offset:offset + size], [], 0
    while at < len(directory):
        lengths = struct.unpack("<HHH", directory[at + 28:at + 34])
        stop = at + 46 + sum(lengths)
        records.append((directory[at + 46:at + 46 + lengths[0]].decode(), directory[at:stop]))
        at = stop
    return offset, records


def onnx_only(folder: Path) -> Path:
    """`folder` (a linked copy of an export) without its TorchScript and .pt2 files, dropped from its manifest too: an
    ONNX-only folder loads nothing that runs code, and its checks are quicker."""
    for name in ("model.pt", "model.pt2"):
        (folder / name).unlink()
        edit_manifest(folder, lambda data, name=name: data["files"].pop(name))
    return folder


# Detector goldens: the smallest complete set of one image, for the goldens checks ----------------------------------
def minimal_goldens(dense: dict[str, tuple[int, ...]], label: int, shape: list[int]) -> dict[str, dict[str, Any]]:
    """The smallest complete goldens of one `shape` image without an RPN: one detection (and NMS input) of `label`,
    and each dense tensor (name -> its shape) of zeros."""
    from verify.detect.goldens import GROUPS, expected_keys

    found: dict[str, dict[str, np.ndarray]] = {group: {} for group in GROUPS}
    found["image"]["0"] = np.zeros(shape, np.float32)
    for group, dtype in (("float32", np.float32), ("float64", np.float64)):
        for key in expected_keys(1, list(dense), False, group):
            leaf = key.rsplit(".", 1)[-1]
            found[group][key] = (np.zeros(dense[key.partition(".dense.")[2]], dtype) if ".dense." in key
                                 else np.array([label]) if leaf == "labels"
                                 else np.array([0.9]) if leaf == "scores" else np.array([[1.0, 1.0, 5.0, 5.0]]))
    return found


def tiny_fcos_detector(size: int):
    """torchvision's FCOS registered as `fcos_tiny` at `size` px (min and max size), no synthetic body: the registry
    entry the new-detector tests add with DETECTORS.adding (a 320 px build costs seconds)."""
    from exporter.families.detectors import TOPK_CANDIDATES, Detector

    return Detector("fcos_tiny", "fcos", None, ("batch", "frozen"),
                    {"min_size": size, "max_size": size, "detections_per_img": 50, "topk_candidates": TOPK_CANDIDATES},
                    builder="fcos_resnet50_fpn")


TINY_DETECTOR = 64
"""The side the tiny R-CNNs of the mask and keypoint tests are registered at: their heads' cost is per detection."""


def tiny_rcnn_options(**heads: Any) -> dict[str, Any]:
    """A torchvision R-CNN builder's options at TINY_DETECTOR px with few proposals and MIN_DETECTIONS detections,
    plus `heads` (e.g. a mask or keypoint RoI pool on 7 x 7 RoIs, `small_roi_pool()`)."""
    from exporter.families.detectors import MIN_DETECTIONS, PROPOSALS

    return {"min_size": TINY_DETECTOR, "max_size": TINY_DETECTOR, "rpn_pre_nms_top_n_test": PROPOSALS,
            "rpn_post_nms_top_n_test": PROPOSALS // 2, "box_detections_per_img": MIN_DETECTIONS, **heads}


def small_roi_pool() -> Any:
    """A per-detection head's RoI pool on 7 x 7 RoIs over the FPN's four levels (torchvision's default is 14 x 14)."""
    from torchvision.ops import MultiScaleRoIAlign

    return MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)


def judged_detector(detector: Any, folder: Path, image: Any) -> Any:
    """A generator for a module fixture: `detector` registered, built, exported (every default format) into `folder`,
    judged on `image` and its folder written; yields (built, images, files, report, folder), then removes `folder`."""
    from exporter.families.detectors import DETECTORS, build_detector
    from verify.detect.export import DEFAULT_FORMATS, export_detector
    from verify.detect.folder import write_detector_folder
    from verify.detect.verdict import judge_detector

    try:
        with DETECTORS.adding(detector.name, detector):
            built = build_detector(detector.name)
            files, refusals = export_detector(built, image, DEFAULT_FORMATS, folder)
            assert not refusals, refusals
            report = judge_detector(built, [image], files)
            assert write_detector_folder(folder, report)
            yield built, [image], files, report, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def forged_detector_merge_fails(shard: Path, forge: Any, named: str, folder: Path) -> None:
    """`shard` (a detector cell's shard report) read, edited by `forge(data)` and merged, in the library and by
    `verify matrix merge`: the merge judges the stored numbers again and must fail the cell (exit 1), with a problem
    containing `named`."""
    import copy

    from verify.matrix import merge_results
    from verify.matrix.detectors import DETECTOR_VIEW
    from verify.matrix.result import DISAGREE, MatrixResult

    data = json.loads(shard.read_text())
    forge(data)
    forged = folder / "forged.json"
    forged.write_text(json.dumps(data))
    merged = merge_results([MatrixResult.from_dict(copy.deepcopy(data))], [forged])
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert (merged.exit_code, cell.verdict) == (1, DISAGREE), cell.problems
    assert any(named in p for p in cell.problems), cell.problems
    result = runner.invoke(app, ["matrix", "merge", str(forged)])
    assert result.exit_code == 1, result.output


def _detector_format(suffix: str) -> str:
    from verify.detect.export import DEFAULT_FORMATS, FILE_NAMES

    return next(fmt for fmt in DEFAULT_FORMATS if FILE_NAMES[fmt].endswith(suffix))


DETECTOR_ONNX, DETECTOR_SCRIPTED = _detector_format(".onnx"), _detector_format(".pt")
"""A whole detector's ONNX and TorchScript formats, taken from its default formats (no format-name literal)."""


def process_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it to reap it (it runs nothing more; Linux's /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def still_running(pids: dict[str, int], within: float) -> set[str]:
    """The names in `pids` whose process still runs after waiting up to `within` seconds for all to be gone."""
    import time

    deadline = time.monotonic() + within
    while not all(process_gone(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {name for name, pid in pids.items() if not process_gone(pid)}


def user_model_cell(folder: Path, source: str, factory: str, shape: tuple[int, ...]) -> tuple[Any, list, list]:
    """A user model as `verify export --model FILE:factory --shape ...` (seed 0) builds it from `source` written in
    `folder`: its eager artifact, the command's seeded inputs and their float32 runs."""
    from exporter.formats.eager import eager_artifact
    from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec
    from verify.inputs import seeded_inputs
    from verify.runtimes import default_runtime, make_runtime

    path = folder / f"{factory}.py"
    path.write_text(source)
    eager = eager_artifact(UserModelSpec.parse(f"{path}:{factory}").build(0, shape, FACTORY_WEIGHTS), shape)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(shape, 0)]
    loaded = make_runtime(default_runtime(eager.format)).load(eager)
    return eager, feeds, [loaded.run(feed) for feed in feeds]


def varied_norm(norm: Any) -> Any:
    """`norm` (a BatchNorm) with running statistics and an affine part drawn away from their defaults, in place, from
    torch's global RNG: a folded norm that changes nothing would hide what folding it does."""
    import torch

    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    return norm


def judged_with_onnx_channel_off(built: Any, images: Any, report: Any, name: str, channel: int, folder: Path) -> Any:
    """A detector's ONNX file (`report.files`, DETECTOR_ONNX) with `channel` of initializer `name` scaled by
    ONE_CHANNEL_ERROR, written into `folder` and judged alone against `report`'s own eager and oracle references on
    `images`: the DetectorReport of that one file."""
    from verify.detect.export import FILE_NAMES
    from verify.detect.report import DetectorReport, Judging
    from verify.detect.verdict import EAGER, ORACLE, judge_runs
    from verify.judge.compare import AUTO_FACTOR, Tolerance

    seeded = folder / FILE_NAMES[DETECTOR_ONNX]
    scaled_onnx_weight(report.files[DETECTOR_ONNX], seeded, name, channel, ONE_CHANNEL_ERROR)
    judged = DetectorReport(built.name, built.norm, built.weights, report.shape, (DETECTOR_ONNX,), AUTO_FACTOR,
                            images=report.images)
    judge_runs(judged, Judging.of(built), images, report.references[EAGER], report.references[ORACLE],
               {DETECTOR_ONNX: seeded}, Tolerance())
    return judged


# ONNX files that round their outputs below float32 (hunt 36, onnx 64) ---------------------------------------------
def tiny_make():
    """tests/data/tiny.py's `make`, loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_data_tiny", Path(__file__).parent / "data" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make


def rounding_onnx(src: Path, dst: Path, error: float, bits: int) -> Path:
    """`src` (the tiny model's ONNX file) with output channel 5 of its 32-channel conv scaled by 1 + `error` and its
    output rounded to 24 - `bits` mantissa bits by three ops (Veltkamp's split: t = x * (2^bits + 1); t - (t - x))."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if error:
        init = next(i for i in graph.initializer if numpy_helper.to_array(i).ndim == 4
                    and numpy_helper.to_array(i).shape[0] == 32)
        weight = numpy_helper.to_array(init).copy()
        weight[5] *= 1 + error
        init.CopyFrom(numpy_helper.from_array(weight, init.name))
    if bits:
        graph.initializer.append(numpy_helper.from_array(np.array(2.0 ** bits + 1, np.float32), "split"))
        name = graph.output[0].name
        producer = next(n for n in graph.node if name in n.output)
        producer.output[list(producer.output).index(name)] = "exact"
        graph.node.extend([helper.make_node("Mul", ["exact", "split"], ["scaled"]),
                           helper.make_node("Sub", ["scaled", "exact"], ["excess"]),
                           helper.make_node("Sub", ["scaled", "excess"], [name])])
    onnx.save(model, str(dst))
    return dst
