"""Defects found by attacking `verify reduce`, user models and their worker as users and attackers would: each test
fails without its fix."""

import os
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.user_model import UserModelSpec
from verify.cli.app import app
from verify.explain.equivalence import NotJudged, explain
from verify.explain.reduce import DATA_SUFFIX, FLOOR_KEY, INPUT_KEY, REFERENCE_KEY, check_piece, write_piece
from verify.judge.compare import AUTO_FACTOR
from verify.pipeline.isolation import run_isolated
from verify.settings import RunSettings

runner = CliRunner()
CHANNELS = 2
PIECE_SHAPE = (1, CHANNELS, 4, 4)
FLOOR_SHARE = 1e-3
"""The stored floor, as a share of float32's epsilon times max|reference|: far below the rounding bound."""


def conv_weight() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((CHANNELS, CHANNELS, 3, 3)).astype(np.float32)


def conv_piece(output: str = "y") -> onnx.ModelProto:
    """A one-Conv graph, as `verify reduce` writes a layer alone."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], [output], pads=[1, 1, 1, 1])], "piece",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, PIECE_SHAPE)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, PIECE_SHAPE)],
        [numpy_helper.from_array(conv_weight(), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def piece_arrays(model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal(PIECE_SHAPE).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"x": x})[0].astype(np.float64)
    floor = np.full(CHANNELS, FLOOR_SHARE * np.finfo(np.float32).eps * np.abs(reference).max())
    return {"x": x}, reference, floor


@pytest.fixture
def piece(tmp_path):
    model = conv_piece()
    feeds, reference, floor = piece_arrays(model)
    return write_piece(tmp_path / "piece", model, feeds, reference, floor, AUTO_FACTOR)


def test_a_written_piece_is_judged_on_its_own_data(piece):
    result = check_piece(piece)
    assert not result.reproduces and result.ratio <= AUTO_FACTOR and result.exit_code == 0


def _stored(piece) -> dict[str, np.ndarray]:
    with np.load(piece.with_suffix(DATA_SUFFIX)) as stored:
        return {key: stored[key] for key in stored.files}


def _renamed_input(arrays):
    arrays[INPUT_KEY + "bogus"] = arrays.pop(INPUT_KEY + "x")


def _float64_input(arrays):
    arrays[INPUT_KEY + "x"] = arrays[INPUT_KEY + "x"].astype(np.float64)


def _nan_input(arrays):
    arrays[INPUT_KEY + "x"] = np.full_like(arrays[INPUT_KEY + "x"], np.nan)


def _smaller_input(arrays):
    arrays[INPUT_KEY + "x"] = arrays[INPUT_KEY + "x"][..., :2, :2].copy()


def _cropped_reference(arrays):
    arrays[REFERENCE_KEY] = arrays[REFERENCE_KEY][..., :2, :2].copy()


def _scalar_reference(arrays):
    arrays[REFERENCE_KEY] = np.float64(arrays[REFERENCE_KEY].max())


def _floor_per_wrong_channels(arrays):
    arrays[FLOOR_KEY] = np.concatenate([arrays[FLOOR_KEY], arrays[FLOOR_KEY]])


EDITS = [_renamed_input, _float64_input, _nan_input, _smaller_input, _cropped_reference, _scalar_reference,
         _floor_per_wrong_channels]


@pytest.mark.parametrize("edit", EDITS, ids=[edit.__name__.strip("_") for edit in EDITS])
def test_a_piece_data_file_that_does_not_fit_the_piece_is_refused_in_one_line(piece, edit):
    """Each was an 'unexpected ValueError/InvalidArgument' (please report it), or a verdict: a scalar reference
    broadcast into 'reproduces' (exit 1), a NaN input 'reproduced' at inf x, a floor per too many channels was
    judged on its largest value (exit 0)."""
    arrays = _stored(piece)
    edit(arrays)
    np.savez(piece.with_suffix(DATA_SUFFIX), **arrays)
    with pytest.raises(UsageError, match="verify reduce") as refused:
        check_piece(piece)
    assert "\n" not in str(refused.value)


def test_a_truncated_piece_is_refused_in_one_line_by_the_cli(piece):
    """It was 'unexpected DecodeError ... please report it'."""
    piece.write_bytes(piece.read_bytes()[: len(piece.read_bytes()) // 2])
    result = runner.invoke(app, ["reduce", "--check", str(piece)])
    assert result.exit_code == 2, result.output
    assert "unexpected" not in result.output and "verify reduce" in result.output


def test_a_link_planted_in_the_output_folder_is_replaced_not_written_through(tmp_path):
    """`onnx.save`/`np.savez` followed a piece.onnx link out of --out and overwrote its target."""
    victim, folder = tmp_path / "victim.txt", tmp_path / "out"
    victim.write_text("not yours")
    folder.mkdir()
    for name in ("piece.onnx", "piece" + DATA_SUFFIX):
        (folder / name).symlink_to(victim)
    model = conv_piece()
    path = write_piece(folder, model, *piece_arrays(model), AUTO_FACTOR)
    assert victim.read_text() == "not yours"
    assert not path.is_symlink() and not path.with_suffix(DATA_SUFFIX).is_symlink()
    assert not check_piece(path).reproduces
    assert sorted(p.name for p in folder.iterdir()) == ["piece.npz", "piece.onnx"]  # no temporary file left


EMPTY_FACTORY = """
import torch
from torch import nn


class Empty(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {"kept": self.conv(x), "none": self.conv(x)[:, :0]}


def make():
    return Empty()
"""


def test_a_user_model_with_an_empty_output_is_refused_when_built(tmp_path):
    """It built, exported and ran, then 'auto tolerance needs a measured noise floor; pass --decimal', and with
    --decimal 'the manifest to write: verdicts are not every pair ...': exit 2 either way, neither saying why."""
    source = tmp_path / "empty_model.py"
    source.write_text(EMPTY_FACTORY)
    with pytest.raises(UsageError, match="'none' has no values") as refused:
        UserModelSpec.parse(f"{source}:make").build(0, (1, 3, 8, 8), "synthetic")
    assert "\n" not in str(refused.value)


CHILD_SLEEP_S = 60
"""Longer than the test: a child still alive after the call is one the worker's end did not stop."""
GONE_WITHIN_S = 10.0


def _fork_a_sleeper(progress):
    """User code that forks a child that outlives the call (it holds the tool's stdout, so `verify ... | tee`
    waited for it); returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        time.sleep(CHILD_SLEEP_S)
        os._exit(0)
    return pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_what_the_users_code_forks_is_stopped_with_its_worker():
    """Measured: `verify export --model` of a forward that forks a 30 s sleeper took 38 s through a pipe, 8 s alone."""
    pid = run_isolated(_fork_a_sleeper, what="test")
    deadline = time.monotonic() + GONE_WITHIN_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, 9)


NOISE = 1e-3
"""The random model's noise: far above float32 rounding, within the auto factor of its own (noisy) floor."""
RANDOM_CONV = f"""
import numpy as np
import torch
from torch import nn


class NoisyConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) + {NOISE} * torch.randn_like(x)


def make():
    conv = NoisyConv({CHANNELS}, {CHANNELS}, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.random.default_rng(0).standard_normal(({CHANNELS}, {CHANNELS}, 3, 3))))
    return conv
"""


def test_a_random_model_is_not_judged_equivalent_to_an_onnx_file_on_its_own_noise(tmp_path):
    """explain judges an ONNX side on the float32 floor, and a random torch side's floor (its float32 run against
    its float64 one) is its noise: `verify explain random.py:make model.onnx` said 'equivalent within float32
    rounding: 0.8x the noise floor', exit 0."""
    source, graph = tmp_path / "random_conv.py", tmp_path / "conv.onnx"
    source.write_text(RANDOM_CONV)
    onnx.save(conv_piece("output0"), str(graph))
    assert np.allclose(conv_weight(), np.random.default_rng(0).standard_normal((CHANNELS, CHANNELS, 3, 3)))
    settings = RunSettings(shape=PIECE_SHAPE)
    assert explain(str(graph), str(graph), settings, isolate=False).equivalent  # the file alone is judged
    with pytest.raises(NotJudged, match="not deterministic") as refused:
        explain(f"{source}:make", str(graph), settings, isolate=False)
    assert refused.value.exit_code == 1 and "\n" not in str(refused.value)


BAD_OPTIONS = {
    "tolerance_a_number": {"tolerance": 1e-3},
    "unknown_format": {"formats": ["bogus"]},
    "formats_a_string": {"formats": "onnx"},
    "opset_unknown": {"opset": 99},
    "unknown_device": {"device": "tpu"},
    "out_a_file": {"out": "a-file"},
}


@pytest.mark.parametrize("options", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_the_plugin_fails_a_bad_option_in_one_line_not_a_traceback(tmp_path, options):
    """Each escaped as AttributeError / UsageError / FileExistsError with a traceback into this package (the
    plugin promises one line saying what to do); formats="onnx" was read letter by letter ("Unknown format 'o'")."""
    import torch

    from verify.pytest_plugin import assert_exports_agree

    (tmp_path / "a-file").write_text("not a folder")
    options = {**options, "out": tmp_path / options.get("out", "exports")}
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), **options)
    assert "\n" not in str(failed.value) and "Conv2d" in str(failed.value)
    assert "Unknown format 'o'" not in str(failed.value)
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").iterdir())


DEFAULT_DTYPE_FACTORY = """
import torch
from torch import nn


def make():
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    return nn.Conv2d(3, 4, 3).float()
"""


def test_a_factory_that_changes_torchs_defaults_does_not_change_the_tools_own_tensors(tmp_path):
    """The factory's float64 default made the tool's own seeded input float64: 'failed on an input of shape ...:
    Input type (double) and bias type (float) should be the same; pass the input shape it takes with --shape'."""
    import torch

    source = tmp_path / "defaults_model.py"
    source.write_text(DEFAULT_DTYPE_FACTORY)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    try:
        built = UserModelSpec.parse(f"{source}:make").build(0, (1, 3, 8, 8), "synthetic")
        assert (torch.get_default_dtype(), torch.get_num_threads()) == (dtype, threads)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    assert built.view.outputs == ("output0",) and built.float64_note is None


def test_reduce_refuses_to_write_into_an_export_folder_before_any_work(tmp_path):
    """`verify reduce MODEL artifacts/x/model.onnx --out artifacts/x` added piece.onnx and piece.npz to the export
    folder, and `verify artifact` then failed it: '2 unlisted in the manifest' (exit 1)."""
    import json

    from exporter.manifest import MANIFEST_NAME
    from verify.explain.reduce import reduce_pair

    export = tmp_path / "export"
    export.mkdir()
    (export / MANIFEST_NAME).write_text(json.dumps({"files": {}}))
    for out in (export, export / "pieces"):
        with pytest.raises(UsageError, match="inside the export folder"):
            reduce_pair("never-loaded.onnx", "never-loaded.pt", out)
        assert sorted(p.name for p in export.iterdir()) == [MANIFEST_NAME]


@pytest.mark.parametrize("command", [["compare", "--json"], ["compare", "--junit"], ["compare", "--markdown"],
                                     ["explain", "--json"]], ids=" ".join)
def test_a_report_written_into_an_export_folder_is_refused_before_any_work(tmp_path, command):
    """`verify compare x/model.onnx ... --json x/report.json` wrote into the export folder it read: `verify artifact x`
    then failed the folder (an unlisted file), exit 1."""
    import json

    from exporter.manifest import MANIFEST_NAME

    export = tmp_path / "export"
    export.mkdir()
    (export / MANIFEST_NAME).write_text(json.dumps({"files": {}}))
    graph = tmp_path / "conv.onnx"
    onnx.save(conv_piece(), str(graph))
    name, flag = command
    result = runner.invoke(app, [name, str(graph), str(graph), flag, str(export / "report")])
    assert result.exit_code == 2 and "inside the export folder" in result.output, result.output
    assert sorted(p.name for p in export.iterdir()) == [MANIFEST_NAME]


CONV_FACTORY = """
from torch import nn


def make():
    return nn.Conv2d(3, 4, 3)
"""


def test_an_export_never_replaces_the_folder_holding_the_models_own_file(tmp_path):
    """`verify export --model out/m-make/m.py:make --out out --overwrite` exported into out/m-make and, replacing that
    folder, deleted m.py (exit 0)."""
    source = tmp_path / "m-make" / "m.py"
    source.parent.mkdir()
    source.write_text(CONV_FACTORY)
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--out", str(tmp_path), "--overwrite",
                                 "--shape", "1x3x8x8"])
    assert result.exit_code == 2 and "your model's own file" in result.output, result.output
    assert source.read_text() == CONV_FACTORY
    from verify.api import verify_export  # the library refuses it too, not only the CLI

    with pytest.raises(UsageError, match="your model's own file"):
        verify_export(UserModelSpec.parse(f"{source}:make"), out=tmp_path, overwrite=True, cache=None)
    assert source.read_text() == CONV_FACTORY


INPUT_KEY_FACTORY = """
from torch import nn


class Named(nn.Conv2d):
    def forward(self, x):
        return {"input": super().forward(x)}


def make():
    return Named(3, 4, 3)
"""


def test_an_output_named_like_the_input_is_refused_when_built(tmp_path):
    """A dict key 'input' (the name every export gives the input) exported TorchScript and pt2, then ended in
    'model.onnx fails onnx.checker: Graph must be in single static assignment (SSA) form', naming a staging file."""
    from exporter.artifacts import ArtifactMeta

    source = tmp_path / "named_model.py"
    source.write_text(INPUT_KEY_FACTORY)
    with pytest.raises(UsageError, match=f"the key '{ArtifactMeta.input_name}'.*rename that output"):
        UserModelSpec.parse(f"{source}:make").build(0, (1, 3, 8, 8), "synthetic")


def test_a_report_is_never_written_over_a_file_the_command_reads(tmp_path):
    """`verify compare m.onnx ref.onnx --json m.onnx` replaced the model it had judged with the report (exit 0), and
    `verify explain m.onnx my_models.py:make --json my_models.py` the user's source."""
    graph, source = tmp_path / "conv.onnx", tmp_path / "conv_model.py"
    onnx.save(conv_piece(), str(graph))
    source.write_text(CONV_FACTORY)
    before = graph.read_bytes()
    for args in (["compare", str(graph), str(graph), "--json", str(graph)],
                 ["explain", str(graph), f"{source}:make", "--json", str(source)],
                 ["export", "--model", f"{source}:make", "--out", str(tmp_path / "out"), "--markdown", str(source)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "a file this command reads" in result.output, result.output
    assert graph.read_bytes() == before and source.read_text() == CONV_FACTORY
    assert not (tmp_path / "out").exists()


HALF_FACTORY = """
from torch import nn


def make():
    return nn.Conv2d(3, 4, 3).half()
"""


def test_a_model_in_half_precision_is_told_to_return_float32_not_another_shape(tmp_path):
    """It failed with 'Input type (float) and bias type (c10::Half) should be the same; pass the input shape it
    takes with --shape': advice about the shape, which was never the problem."""
    source = tmp_path / "half_model.py"
    source.write_text(HALF_FACTORY)
    with pytest.raises(UsageError, match=r"float16 \(weight.*model\.float\(\)") as refused:
        UserModelSpec.parse(f"{source}:make").build(0, (1, 3, 8, 8), "synthetic")
    assert "--shape" not in str(refused.value)


PIECE_MODEL = f"""
from torch import nn


def make():
    return nn.Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1, bias=False)
"""


def test_reduce_with_no_layer_to_re_run_is_no_verdict_not_nothing_to_reduce(tmp_path):
    """An ONNX file whose nodes name no module (another exporter's, or hand-made) maps no layer back: reduce printed
    'nothing to reduce: no layer differs on its own' and exited 0, having checked nothing."""
    from verify.explain.reduce import reduce_pair

    source, graph = tmp_path / "piece_model.py", tmp_path / "conv.onnx"
    source.write_text(PIECE_MODEL)
    onnx.save(conv_piece("output0"), str(graph))
    with pytest.raises(UsageError, match="nothing was checked"):
        reduce_pair(f"{source}:make", str(graph), tmp_path / "pieces", RunSettings(shape=PIECE_SHAPE), isolate=False)
    assert not (tmp_path / "pieces").exists()


FIXED_BATCH_FACTORY = """
from torch import nn


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).view(1, -1)


def make():
    return Flat()
"""


def test_a_model_whose_outputs_do_not_follow_the_batch_is_not_exported_with_a_dynamic_batch(tmp_path):
    """`.view(1, -1)` exported with the default dynamic axes passed `verify export` (exit 0), and its folder then
    failed `verify artifact` at a second batch. Refused before any file is written; `--static` exports it."""
    source = tmp_path / "flat.py"
    source.write_text(FIXED_BATCH_FACTORY)
    out = tmp_path / "out"
    args = ["export", "--model", f"{source}:make", "--shape", "1x3x8x8", "--out", str(out), "--format", "onnx"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    flat = 2 * 4 * 6 * 6  # batch 2 of 4 channels of 6x6, in one row
    assert f"do not follow its input's batch (at batch 2: output0 (1, {flat}))" in result.output
    assert "--static" in result.output and not out.exists()
    result = runner.invoke(app, [*args, "--static"])
    assert result.exit_code == 0, result.output
