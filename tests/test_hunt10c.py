"""Hunt 10c: files that execute code, and the cache. Each test fails without its fix.

The .pt2 tests craft archives from one tiny program that torch.export.save wrote (a dynamic batch, so its graph
holds symbolic sizes that torch.export.load parses with sympy.sympify, an eval). Each crafted archive hides a
payload expression that writes a sentinel file, in a place Python's zipfile (which the scan reads with) does not
look but torch's own zip reader (miniz, which torch.export.load reads with) does."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from exporter.errors import ArtifactError, UsageError
from tests.helpers import central_records
from verify.cli import app
from verify.judge.trust import accumulation_length

runner = CliRunner()
PROGRAM = "models/model.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A torch.export.save archive of a conv with a dynamic batch: its sizes are sympy expressions."""
    path = tmp_path_factory.mktemp("hunt10c") / "tiny.pt2"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def entries(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info.filename)) for info in archive.infolist()]


def root_of(path: Path) -> str:
    return entries(path)[0][0].split("/", 1)[0]


def payload_program(saved: Path, sentinel: Path) -> bytes:
    """The saved program with its first symbolic size replaced by Python that writes `sentinel`."""
    from exporter.formats.pt2 import _find

    program = json.loads(dict(entries(saved))[f"{root_of(saved)}/{PROGRAM}"])
    _find(program, "expr_str")[0]["expr_str"] = f"__import__('pathlib').Path('{sentinel}').write_text('ran') and s0"
    return json.dumps(program).encode()


def write_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: the point of one test
        for name, data in members:
            archive.writestr(name, data)
    return path


def torch_reads(path: Path, name: str) -> bytes:
    return torch._C.PyTorchFileReader(str(path)).get_record(name)


def refused_and_never_ran(path: Path, sentinel: Path, match: str, scan_refuses: bool = True) -> None:
    """The scan (the folder's integrity check) refuses the archive, and every load refuses it."""
    from exporter.formats.pt2 import load_program, scan_archive

    if scan_refuses:
        with pytest.raises(ArtifactError, match=match):
            scan_archive(path)
    with pytest.raises(ArtifactError, match=match):
        load_program(path)
    assert not sentinel.exists(), "the payload ran"


def test_a_saved_program_still_passes_and_loads(saved):
    from exporter.formats.pt2 import load_program, scan_archive

    assert "nothing pickled" in scan_archive(saved)
    assert load_program(saved)(torch.randn(3, 3, 8, 8)).shape == (3, 4, 8, 8)


def test_a_second_program_not_named_json_is_scanned_too(saved, tmp_path):
    """Before: the scan checked `models/*.json` only, while torch.export.load loads every entry under `models/`
    as a program (its name sliced as if it ended in `.json`): `models/evil.txt` holding a payload expression
    passed the scan ("1 program(s) ... nothing pickled") and its payload ran inside load_program."""
    sentinel = tmp_path / "ran"
    root = root_of(saved)
    members = entries(saved)
    extra = [(name.replace("/model_", "/evi_").replace("/model.pt", "/evi.pt"), data) for name, data in members
             if name.endswith(("_config.json", "sample_inputs/model.pt"))]  # torch reads these for program "evi"
    path = write_zip(tmp_path / "extra.pt2",
                     [*members, (f"{root}/models/evil.txt", payload_program(saved, sentinel)), *extra])
    refused_and_never_ran(path, sentinel, "models/evil.txt.*loads everything under models/")


@pytest.mark.parametrize("hidden", ["models/model.json", "Models/model.json"])
def test_names_torch_may_confuse_are_refused(saved, tmp_path, hidden):
    """Before: an archive with the payload program under `models/model.json` twice (or as `Models/model.json`)
    and the saved program last under its own name passed the scan, which reads the last entry of that exact
    name; torch's zip reader looks names up ignoring case and, among equal names, finds one by a binary search,
    so for some layouts it returned the payload program (measured: the payload ran in load_program)."""
    sentinel = tmp_path / "ran"
    root = root_of(saved)
    members = [(n, d) for n, d in entries(saved) if n != f"{root}/{PROGRAM}"]
    bad, good = payload_program(saved, sentinel), dict(entries(saved))[f"{root}/{PROGRAM}"]
    path = None
    for at in range(len(members) + 1):  # a layout where torch reads the payload program (precondition)
        candidate = write_zip(tmp_path / f"at{at}.pt2", [*members[:at], (f"{root}/{hidden}", bad), *members[at:],
                                                         (f"{root}/{PROGRAM}", good)])
        if torch_reads(candidate, PROGRAM) == bad:
            path = candidate
            break
    assert path is not None, "no layout makes torch read the hidden program: the attack is gone upstream"
    with zipfile.ZipFile(path) as archive:
        assert archive.read(f"{root}/{PROGRAM}") == good  # what the scan reads
    refused_and_never_ran(path, sentinel, "torch's archive reader would pick either")


def two_directories(path: Path, members: list[tuple[str, bytes]], target: str, hidden: bytes,
                    compress: int = zipfile.ZIP_STORED) -> Path:
    """`members` as one zip with two central directories: Python's zipfile takes the zip64 record just before the
    locator (`members` as they are), torch's reader the one the locator points to, where `target` is `hidden`."""
    stand_in = target[:-1] + ("X" if target[-1] != "X" else "Y")  # the same length: the directory is patched
    base = path.with_suffix(".base.zip")
    with zipfile.ZipFile(base, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
        archive.writestr(zipfile.ZipInfo(stand_in), hidden, compress_type=compress)
    raw = base.read_bytes()
    offset, records = central_records(raw)
    python_view = b"".join(r for name, r in records if name != stand_in)
    torch_view = b"".join(r.replace(stand_in.encode(), target.encode()) if name == stand_in else r
                          for name, r in records if name != target)
    count = len(records) - 1

    def record64(length: int, start: int) -> bytes:
        return struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, length, start)

    torch_at, python_at = offset, offset + len(torch_view) + 56
    locator = struct.pack("<IIQI", 0x07064B50, 0, torch_at + len(torch_view), 1)
    end_record = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(raw[:offset] + torch_view + record64(len(torch_view), torch_at) + python_view
                     + record64(len(python_view), python_at) + locator + end_record)
    return path


def zip64_split(saved: Path, sentinel: Path, path: Path) -> Path:
    """The saved archive as Python's zipfile reads it; to torch's reader, its program is the payload program."""
    return two_directories(path, entries(saved), f"{root_of(saved)}/{PROGRAM}", payload_program(saved, sentinel))


def test_an_archive_two_zip_readers_read_apart_is_refused(saved, tmp_path):
    """Before: an archive with two central directories (Python's zipfile reads the zip64 record just before the
    locator, torch's reader the one the locator points to) passed the scan, which saw the saved program, and
    torch.export.load parsed the payload program under the same name: the payload ran in load_program. Now every
    load first asks torch's own reader for the entries and the bytes Python's reader sees (only before a load: an
    untrusted folder's integrity check does not hand the file to torch's native parser)."""
    sentinel = tmp_path / "ran"
    path = zip64_split(saved, sentinel, tmp_path / "split.pt2")
    root = root_of(saved)
    with zipfile.ZipFile(path) as archive:
        assert archive.read(f"{root}/{PROGRAM}") == dict(entries(saved))[f"{root}/{PROGRAM}"]
    assert b"write_text" in torch_reads(path, PROGRAM)  # precondition: torch reads the payload
    refused_and_never_ran(path, sentinel, "torch's archive reader sees other entries or other bytes", False)


def test_verify_compare_of_a_split_archive_is_one_line(saved, tmp_path):
    """Before: `verify compare split.pt2 tiny.pt2` ran the payload (the sentinel was written), then failed to load
    the file ("We ran into an error when deserializing the saved file"). Now: exit 2, one line naming the crafted
    zip, and the payload never ran."""
    sentinel = tmp_path / "ran"
    path = zip64_split(saved, sentinel, tmp_path / "split.pt2")
    result = runner.invoke(app, ["compare", str(path), str(saved), "--shape", "1x3x8x8", "--samples", "1"])
    assert result.exit_code == 2, result.output
    assert "crafted zip" in result.output and "Traceback" not in result.output
    assert not sentinel.exists()


# The cache ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def filled(tmp_path):
    """A cache holding one entry with one file."""
    from verify.cache import Cache

    cache = Cache(tmp_path / "cache")
    source = tmp_path / "model.onnx"
    source.write_bytes(b"graph" * 1000)
    cache.store("export", "a" * 64, data={"format": "onnx"}, files={"model.onnx": source})
    assert cache.load("export", "a" * 64) is not None
    return cache


def deny(monkeypatch, functions: tuple[str, ...], where: Path) -> None:
    """Each os.<function> on a path under `where`, or relative to an open folder, fails as it does for a user
    without the permission (the suite may run as root, whom file modes do not stop)."""
    for function in functions:
        real = getattr(os, function)

        def denied(path, *args, _real=real, **kwargs):
            if kwargs.get("dir_fd") is not None or str(path).startswith(str(where)):
                raise PermissionError(13, "Permission denied", str(path))
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, function, denied)


@pytest.mark.parametrize("command", [["info"], ["prune", "--max-size", "0"], ["clear"]])
def test_a_cache_this_user_cannot_read_is_one_line(filled, monkeypatch, command):
    """Before: `verify cache info|prune|clear` on a cache folder the user may not enter (measured with a mode-000
    folder under an unprivileged user) ended in 'unexpected PermissionError: [Errno 13] ...' (exit 2, a bug
    report asked for). Now: one line naming the folder and what to do."""
    monkeypatch.setenv("BACKBONE_VERIFY_CACHE_DIR", str(filled.root))
    deny(monkeypatch, ("open", "stat", "lstat", "listdir"), filled.root)
    result = runner.invoke(app, ["cache", *command])
    assert result.exit_code == 2, result.output
    assert f"Cannot read the cache {filled.root}: Permission denied" in result.output
    assert "unexpected" not in result.output


def test_prune_of_a_read_only_cache_does_not_report_removals(filled, monkeypatch):
    """Before: `verify cache prune --max-size 0` of a read-only cache printed '1 entries removed, 0.0 MiB freed,
    42.7 MiB kept' and exited 0 while the entry stayed (measured with resnet18's cached ONNX file under an
    unprivileged user): the failed removal was counted. Now it says it cannot prune the cache (exit 2), and the
    entry is still there to be used."""
    monkeypatch.setenv("BACKBONE_VERIFY_CACHE_DIR", str(filled.root))
    deny(monkeypatch, ("unlink",), filled.base)
    with pytest.raises(UsageError, match="cannot be removed .Permission denied. after 0 were"):
        filled.prune(0)
    result = runner.invoke(app, ["cache", "prune", "--max-size", "0"])
    assert result.exit_code == 2 and "entries removed" not in result.output, result.output
    monkeypatch.undo()
    assert filled.load("export", "a" * 64) is not None
    assert filled.prune(0)[0] == 1  # writable again: removed and counted


# The weights digest ------------------------------------------------------------------------------------------------
def test_a_conjugate_or_negative_view_has_the_digest_of_its_values():
    """Before: state_dict_sha256 viewed each tensor's raw bytes, which torch refuses for a conjugate or negative
    view: RuntimeError 'torch.Tensor.view is not supported for conjugate view tensors when converting to a
    different dtype'. Now the view is resolved first: the digest is that of the values."""
    from exporter.weights import state_dict_sha256

    complex_ = torch.randn(5, dtype=torch.complex64)
    real = torch.randn(5)
    assert state_dict_sha256({"k": complex_.conj()}) == state_dict_sha256({"k": complex_.conj().resolve_conj()})
    assert state_dict_sha256({"k": complex_.conj()}) != state_dict_sha256({"k": complex_})
    assert state_dict_sha256({"k": real._neg_view()}) == state_dict_sha256({"k": -real})


@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_a_tensor_without_plain_data_is_named_in_one_line(kind):
    """Before: NotImplementedError 'Cannot copy out of meta tensor; no data!' (meta) and RuntimeError 'unsupported
    memory format option Contiguous' (sparse), which `verify export --model` blamed on 'your model's code'."""
    from exporter.weights import state_dict_sha256

    tensor = torch.empty(3, device="meta") if kind == "meta" else torch.eye(3).to_sparse()
    with pytest.raises(UsageError, match=f"The weights hold layer.extra, a {kind}.*no values to take a digest of"):
        state_dict_sha256({"layer.weight": torch.ones(2), "layer.extra": tensor})


CONJUGATE_BUFFER = """
import torch
from torch import nn


class Filtered(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("spectrum", torch.fft.fft(torch.randn(8)).conj())  # a conjugate view, as fft code has

    def forward(self, x):
        return self.conv(x)


def make():
    torch.manual_seed(0)
    return Filtered()
"""


def test_a_model_holding_a_conjugate_view_is_verified(tmp_path):
    """Before: `verify export --model file.py:make` of a model with a buffer `torch.fft.fft(w).conj()` ended in
    'error: RuntimeError (torch.Tensor.view is not supported for conjugate view tensors ...) raised by your model's
    code before any verdict' (exit 2): the tool's own digest failed, not the model. Now it is verified."""
    source = tmp_path / "filtered.py"
    source.write_text(CONJUGATE_BUFFER)
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--shape", "1x3x16x16", "--format", "onnx",
                                 "--onnx-exporter", "torchscript", "--no-cache", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "pairs agree" in result.output


# The floor bound of a .pt2: K from the weights torch builds ------------------------------------------------------
CHANNELS = 2
SHAPE = f"1x{CHANNELS}x8x8"
CONV_K = accumulation_length(parameters=[(CHANNELS, CHANNELS, 3, 3)], input_shape=(1, CHANNELS, 8, 8))
SHIFT = 100.0 * CONV_K
"""As hunt 9b: float32's spacing at the shift is 50x the floor bound of an output of unit scale."""
DECLARED_FAN_IN = 100 * CONV_K
"""The input channels the edited graph declares for its conv weight (hunt 9b's SPARE_FAN_IN)."""


class Cancelling(nn.Module):
    """Hunt 9b's graph: a conv shifted by a large constant and back, a float32 floor no rounding explains."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) + SHIFT) - SHIFT


def test_a_pt2_graph_that_lies_about_its_weight_shapes_does_not_lift_the_floor_bound(tmp_path):
    """Before: K of a .pt2 came from the graph's own `tensor_values` sizes of each parameter, which torch never
    checks against the weights it loads: hunt 9b's graph, refused as 'not a noise floor' (exit 1), with one number
    edited (its conv weight's 2 input channels declared as 14,600), loaded and ran as before and exited 0, 'all 3
    pairs agree'. Now K comes from the weights config, the sizes torch gives the loaded tensors."""
    from exporter.formats.pt2 import program_weight_shapes

    torch.manual_seed(0)
    honest, lying = tmp_path / "honest.pt2", tmp_path / "lying.pt2"
    torch.export.save(torch.export.export(Cancelling().eval(), (torch.randn(1, CHANNELS, 8, 8),)), str(honest))
    members = []
    for name, data in entries(honest):
        if name.endswith(PROGRAM):
            program = json.loads(data)
            graph_module = program["graph_module"]
            for spec in graph_module["signature"]["input_specs"]:
                if "parameter" in spec and spec["parameter"]["parameter_name"].endswith("weight"):
                    sizes = graph_module["graph"]["tensor_values"][spec["parameter"]["arg"]["name"]]["sizes"]
                    sizes[1] = {"as_int": DECLARED_FAN_IN}
            data = json.dumps(program).encode()
        members.append((name, data))
    write_zip(lying, members)
    assert program_weight_shapes(lying) == program_weight_shapes(honest) == [(CHANNELS, CHANNELS, 3, 3), (CHANNELS,)]
    result = runner.invoke(app, ["compare", str(lying), str(lying), "--shape", SHAPE, "--samples", "1"])
    assert result.exit_code == 1, result.output
    assert "not a noise floor" in result.output


def split_checkpoint(path: Path, expands_to: int) -> Path:
    """A torch.save checkpoint whose `data.pkl`, as torch's reader sees it, is a deflated member of `expands_to`
    bytes; Python's listing shows the honest members."""
    honest = path.with_suffix(".honest.pt")
    torch.save({"w": torch.zeros(10)}, honest)
    target = f"{root_of(honest)}/data.pkl"
    return two_directories(path, entries(honest), target, b"\0" * expands_to, zipfile.ZIP_DEFLATED)


def test_a_checkpoint_deflated_where_only_torch_looks_is_refused_unread(tmp_path):
    """Before: the hunt-7d guard summed the member sizes Python's zipfile lists, and torch.load read a second
    central directory (a zip64 record): a 0.97 MB checkpoint passed the guard and torch inflated a 1 GB data.pkl
    (peak RSS +0.96 GB) before refusing it as 'Python objects beyond tensors'. Now the sizes torch's reader sees
    count too, and the file is refused unread."""
    from exporter.weights import load_weights_file

    expands_to = 50 << 20
    path = split_checkpoint(tmp_path / "weights.pt", expands_to)
    assert path.stat().st_size < expands_to // 100
    reader = torch._C.PyTorchFileReader(str(path))
    sizes = hasattr(reader, "get_record_size")  # torch 2.11's reader cannot tell: the directories check refuses it
    if sizes:
        assert reader.get_record_size("data.pkl") == expands_to  # what torch would read
    refusal = "would expand to .* more than the whole" if sizes else "two zip central directories"
    with pytest.raises(UsageError, match=f"{refusal}.*refused unread"):
        load_weights_file(path)


def test_a_checkpoint_with_two_zip_directories_is_refused_where_torch_cannot_size_its_members(tmp_path, monkeypatch):
    """torch 2.11 (the GPU machine's) has no `get_record_size`: the size check above crashed there with an
    AttributeError for every `.pt` weights file. Without it, the split archive is refused by its two directories."""
    import exporter.weights as weights

    class NoSizes:  # torch 2.11's reader: records, no sizes
        def __init__(self, path: str) -> None:
            self.reader = real(path)

        def get_all_records(self) -> list[str]:
            return self.reader.get_all_records()

    real = torch._C.PyTorchFileReader
    honest = tmp_path / "honest.pt"
    torch.save({"w": torch.ones(3)}, honest)
    path = split_checkpoint(tmp_path / "weights.pt", 50 << 20)
    monkeypatch.setattr(torch._C, "PyTorchFileReader", NoSizes)  # the guard's reader only: torch.load is not run
    weights.require_unexpanded_archive(honest)
    assert not weights.two_zip_directories(honest)
    assert weights.two_zip_directories(path)
    with pytest.raises(UsageError, match="two zip central directories.*refused unread"):
        weights.require_unexpanded_archive(path)


def test_verify_artifact_of_a_trusted_folder_with_a_split_pt2_does_not_pass(tmp_path):
    """Before: an exported folder whose model.pt2 was replaced by its zip64 split (the manifest's sha256 and size
    rewritten, as whoever can write the folder can) passed `verify artifact --trust-unsigned-code`: 'all 22 checks
    passed', exit 0 (resnet18; here the tiny test model), and the payload ran. Now its load check fails (exit 1)."""
    from exporter.manifest import MANIFEST_NAME, file_sha256

    tiny = Path(__file__).parent / "data" / "tiny.py"
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "--model", f"{tiny}:make", "--shape", "1x3x16x16", "--format", "pt2",
                                 "--samples", "1", "--no-cache", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    sentinel, saved = tmp_path / "ran", tmp_path / "saved.pt2"
    os.replace(folder / "model.pt2", saved)
    zip64_split(saved, sentinel, tmp_path / "model.pt2")
    os.replace(tmp_path / "model.pt2", folder / "model.pt2")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["model.pt2"].update(sha256=file_sha256(folder / "model.pt2"),
                                          size=(folder / "model.pt2").stat().st_size)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    result = runner.invoke(app, ["artifact", str(folder), "--trust-unsigned-code"])
    assert result.exit_code == 1, result.output
    assert "crafted zip" in result.output
    assert not sentinel.exists()


# Runtimes ----------------------------------------------------------------------------------------------------------
def test_a_pt2_run_outside_its_shapes_is_one_line(saved):
    """Before: `verify compare` of a .pt2 at a shape its guards refuse ended in 'unexpected AssertionError: Guard
    failed: x.size()[2] <= 32 (rerun with VERIFY_DEBUG=1 ..., and please report it)' (resnet18 exported at 32x32,
    run at 64x64): the file's own refusal reported as a bug of this tool. Now it is the run's one-line failure."""
    result = runner.invoke(app, ["compare", str(saved), str(saved), "--shape", "16x3x8x8", "--samples", "1"])
    assert result.exit_code == 2, result.output
    assert "failed on an input of shape (16, 3, 8, 8): Guard failed" in result.output
    assert "unexpected" not in result.output
    assert "export with --static" in " ".join(result.output.split())  # what to do, on the same line
