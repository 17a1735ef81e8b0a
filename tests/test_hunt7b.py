"""Hunt 7b: `verify artifact` / `preflight` goldens, `verify matrix merge` reports and outputs, CI shard variables.

Each test failed before its fix: a backbone folder's goldens.npz expanded a compressed member before any key
was checked (a 1.1 MB file held 1 GiB; peak RSS 1.68 GB for one `verify artifact`, 0.73 GB now); a merged report
whose cell `notes`, `seconds`, floors or input were of another type crashed a renderer ("unexpected TypeError",
after the JSON already said passed); one failing rendering left the others written; `merge --json F --markdown F`
wrote both into F; `$CI_NODE_INDEX=²` was a ValueError; a non-ASCII `hmac` crashed the merge; a report that is a
FIFO hung the merge and /dev/zero filled memory; a link at the fixed temporary name redirected a report;
`verify cache clear --cache-dir D` removed D/v1 whatever it held; a floor written as null crashed the HTML page;
a merge wrote over a report it merged; a deflated TorchScript/.pt2 member expanded unchecked; a 1 GiB model.sig was
read whole; shard 1/10**13 allocated 10**13 loads; shards given other `--input` files under one path merged; a
manifest object of 200,000 keys took 508 s to read."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from exporter.errors import ArtifactError, UsageError
from exporter.export import ExportOptions
from exporter.formats.onnx import OnnxOptions
from exporter.manifest import GOLDENS_NAME, read_goldens
from tests.helpers import invoke, make_keys
from verify.api import RunSettings
from verify.matrix import REPORT_KEY_ENV, SHARD_ENV, MatrixRequest, load_result, run_matrix
from verify.matrix.shards import parse_shard, resolve_shard
from verify.render import write_outputs

OUTPUTS = ("--json", "--junit", "--markdown", "--html")
ALARM_S = 10
"""A test that would block on a FIFO fails after this many seconds instead of hanging the suite."""
ARRAYS = {"input.x": np.ones((1, 3, 4, 4), np.float32), "float32.y": np.ones((1, 2), np.float32),
          "float64.y": np.ones((1, 2), np.float64)}


class Blocked(Exception):
    """Not an OSError: the code under test must not take it for a read error."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (*SHARD_ENV, REPORT_KEY_ENV):
        monkeypatch.delenv(name, raising=False)


# goldens.npz: stored members only, each once ----------------------------------------------------------------------
def _stored_twice(path, arrays):
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in [*arrays.items(), next(iter(arrays.items()))]:
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", buffer.getvalue())


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's warning as the duplicate is written
@pytest.mark.parametrize("save, named", [(np.savez_compressed, "is compressed"), (_stored_twice, "more than once")])
def test_a_backbone_goldens_member_compressed_or_twice_is_refused_before_numpy_reads_it(tmp_path, monkeypatch, save,
                                                                                         named):
    """The reader every backbone check uses (verify/folder/validate.py) refuses the archive from its directory
    alone: numpy never opens a member, so a compressed one cannot expand first."""
    path = tmp_path / GOLDENS_NAME
    save(path, **ARRAYS) if save is np.savez_compressed else save(path, ARRAYS)

    def never(*args, **kwargs):
        raise AssertionError("numpy read the archive")

    monkeypatch.setattr(np, "load", never)
    with pytest.raises(ArtifactError, match=named):
        read_goldens(path)


def test_goldens_as_the_export_writes_them_still_read(tmp_path):
    path = tmp_path / GOLDENS_NAME
    np.savez(path, **ARRAYS)
    goldens = read_goldens(path)
    np.testing.assert_array_equal(goldens["float32"]["y"], ARRAYS["float32.y"])


# verify matrix merge: a report is data of any type --------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(module_tmp):
    """A one-cell matrix (resnet18, ONNX under ONNX Runtime, 32x32, one sample) that agrees, as --json writes it."""
    request = MatrixRequest.create(["resnet18"], ["frozen"], ["body"], RunSettings(shape=(1, 3, 32, 32), samples=1),
                                   ExportOptions(formats=("onnx",), format_options=(OnnxOptions("torchscript"),)),
                                   ["onnxruntime"])
    result = run_matrix(request)
    assert result.exit_code == 0, result.summary()
    path = module_tmp("hunt7b-report") / "report.json"
    write_outputs(result, json_path=path)
    return path


def _outputs(folder):
    return [folder / name for name in ("r.json", "r.xml", "r.md", "r.html")]


def _merge(source, folder):
    return invoke("matrix", "merge", source, *[x for pair in zip(OUTPUTS, _outputs(folder)) for x in pair])


def test_the_untouched_report_merges_and_every_output_is_written(report, tmp_path):
    result = _merge(report, tmp_path)
    assert result.exit_code == 0, result.output
    assert all(path.is_file() for path in _outputs(tmp_path))


@pytest.mark.parametrize("field, value", [
    ("notes", 5), ("notes", [{"a": 1}]), ("seconds", "fast"), ("computed_seconds", None),
    ("noise_floor", "x"), ("noise_floor", {"per_output": {"layer1": "tiny"}}), ("input", [1, 2]),
    ("cache", [1]), ("cache", {"result": 1}), ("error", {"a": 1}), ("detector", "x"),
])
def test_a_cell_field_of_another_type_is_a_one_line_usage_error_and_nothing_is_written(report, tmp_path, field,
                                                                                       value):
    data = json.loads(report.read_text())
    data["cells"][0][field] = value
    source = tmp_path / "edited.json"
    source.write_text(json.dumps(data))
    result = _merge(source, tmp_path)
    assert result.exit_code == 2, result.output
    assert "malformed matrix report" in result.output and repr(field) in result.output, result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    assert not any(path.exists() for path in _outputs(tmp_path))


@pytest.mark.parametrize("key, text", [("jobs", "1e999"), ("seconds", "9" * 400), ("seconds", '"inf"')])
def test_a_report_number_past_a_float_is_a_usage_error(report, tmp_path, key, text):
    data = json.loads(report.read_text())
    data[key] = "PLACEHOLDER"
    source = tmp_path / "edited.json"
    source.write_text(json.dumps(data).replace('"PLACEHOLDER"', text))
    with pytest.raises(UsageError, match="malformed matrix report"):
        load_result(source)


def test_a_merge_writing_two_outputs_into_one_file_is_refused(report, tmp_path):
    both = tmp_path / "both.out"
    result = invoke("matrix", "merge", report, "--json", both, "--markdown", both)
    assert result.exit_code == 2, result.output
    assert "both write" in result.output and not both.exists()


def test_an_output_that_fails_to_render_leaves_none_of_the_others_written(report, tmp_path, monkeypatch):
    import verify.render.html_page

    def broken(result):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(verify.render.html_page, "html_page", broken)
    paths = _outputs(tmp_path)
    with pytest.raises(RuntimeError):
        write_outputs(load_result(report), *paths)
    assert not any(path.exists() for path in paths)


# CI shard variables and --shard: ASCII digits only ----------------------------------------------------------------
@pytest.mark.parametrize("environ", [{"CI_NODE_INDEX": "²", "CI_NODE_TOTAL": "2"},
                                     {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "٢"}])
def test_a_ci_shard_variable_in_other_digits_is_a_usage_error(environ):
    with pytest.raises(UsageError, match="expected a whole number"):
        resolve_shard(None, None, environ)


@pytest.mark.parametrize("text", ["1_0/20", "+1/2", "١/٢"])
def test_a_shard_is_written_in_ascii_digits(text):
    with pytest.raises(UsageError, match="Bad --shard"):
        parse_shard(text)
    assert parse_shard("1/2") == (1, 2)


# Atomic writes: the temporary file is new ---------------------------------------------------------------------------
def test_a_link_planted_at_the_temporary_name_does_not_redirect_a_report(tmp_path, monkeypatch):
    """The temporary file used to be `.<name>.<pid>.tmp`, opened following links: a link planted there (a shared
    folder, a pid guessed) made the report overwrite the file it named. Now it is a new file or nothing."""
    import os
    import uuid

    import exporter.fsio

    victim, out = tmp_path / "victim.txt", tmp_path / "report.json"
    victim.write_text("keep")
    fixed = uuid.UUID(int=0)
    for planted in (f".{out.name}.{os.getpid()}.tmp", f".{out.name}.{os.getpid()}.{fixed.hex[:8]}.tmp"):
        (tmp_path / planted).symlink_to(victim)
    with monkeypatch.context() as patch:
        patch.setattr(exporter.fsio.uuid, "uuid4", lambda: fixed)
        with pytest.raises(UsageError, match="Cannot write"):
            exporter.fsio.write_text_atomic(out, "report")
    assert victim.read_text() == "keep" and not out.exists()
    exporter.fsio.write_text_atomic(out, "report")
    assert out.read_text() == "report" and victim.read_text() == "keep"


# Files that are not regular files are never read -------------------------------------------------------------------
@pytest.fixture
def alarm():
    """Fails the test after ALARM_S instead of letting a blocking open hang the suite."""
    import signal

    def stop(signum, frame):
        raise Blocked(f"blocked for {ALARM_S} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(ALARM_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind, named", [("fifo", "FIFO"), ("device", "character device")])
def test_a_report_that_is_a_fifo_or_a_device_is_refused_unread(tmp_path, alarm, kind, named):
    """A FIFO blocked the merge forever; /dev/zero was read until the machine ran out of memory."""
    import os

    path = tmp_path / "report.json"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to(os.devnull)
    result = invoke("matrix", "merge", path)
    assert result.exit_code == 2, result.output
    assert named in result.output and "verify matrix --json" in result.output, result.output


def test_an_export_folder_whose_manifest_is_a_fifo_is_refused_unread(tmp_path, alarm):
    """`verify export` reads the manifest of the folder it would replace: a FIFO there blocked it forever."""
    import os

    from exporter.manifest import MANIFEST_NAME
    from verify.folder.identity import refuse_other_export

    os.mkfifo(tmp_path / MANIFEST_NAME)
    with pytest.raises(UsageError, match="no readable"):
        refuse_other_export(tmp_path, {"spec": "resnet18:frozen:body"})


def test_an_hmac_in_other_letters_is_an_invalid_hmac_not_a_crash(report, tmp_path, monkeypatch):
    """hmac.compare_digest refuses text that is not ASCII: the comparison raised TypeError ("unexpected")."""
    monkeypatch.setenv(REPORT_KEY_ENV, "the shard jobs' secret")
    data = json.loads(report.read_text())
    data["hmac"] = "é" * 64
    source = tmp_path / "edited.json"
    source.write_text(json.dumps(data))
    result = invoke("matrix", "merge", source)
    assert result.exit_code == 1, result.output
    assert "no valid HMAC" in result.output and "unexpected" not in result.output


# verify cache clear: only a folder this cache made ------------------------------------------------------------------
@pytest.mark.parametrize("command", ["clear", "prune"])
def test_a_layout_folder_holding_someone_elses_files_is_not_removed(tmp_path, command):
    """`verify cache clear --cache-dir ~/project` removed ~/project/v1 whatever it held (a project's own `v1`
    source folder, with $BACKBONE_VERIFY_CACHE_DIR or --cache-dir pointed one level too high)."""
    from verify.cache import LAYOUT

    source = tmp_path / LAYOUT / "src" / "main.py"
    source.parent.mkdir(parents=True)
    source.write_text("print('mine')")
    result = invoke("cache", command, "--cache-dir", tmp_path, *(["--max-size", "0"] if command == "prune" else []))
    assert result.exit_code == 2, result.output
    assert "not a cache folder made by this tool" in result.output and "'src'" in result.output
    assert source.read_text() == "print('mine')"


def test_a_floor_written_as_null_merges_and_renders(report, tmp_path):
    """A floor that was not finite is written as null with its `null_reason` (verify/report.py json_safe); the
    HTML page formatted it as a number and crashed."""
    data = json.loads(report.read_text())
    floors = data["cells"][0]["noise_floor"]["per_output"]
    name = next(iter(floors))
    floors.update({name: None, "null_reason": f"not finite: {name}: NaN"})
    source = tmp_path / "nan-floor.json"
    source.write_text(json.dumps(data))
    html = tmp_path / "r.html"
    result = invoke("matrix", "merge", source, "--html", html)
    assert "unexpected" not in result.output and result.exit_code in (0, 1), result.output
    assert f"{name} -" in html.read_text()


def test_a_report_with_a_key_twice_is_refused_though_its_hmac_holds(report, tmp_path, monkeypatch):
    """The HMAC covers the copy Python keeps (the last); a reader keeping the first would see `passed: false`
    in an authentic report. A key twice in one object is refused, as the manifest reader refuses it."""
    from verify.matrix.result import report_mac

    monkeypatch.setenv(REPORT_KEY_ENV, "the shard jobs' secret")
    data = json.loads(report.read_text())
    data["hmac"] = report_mac({k: v for k, v in data.items() if k != "hmac"}, "the shard jobs' secret")
    text = json.dumps(data).replace('"passed": true', '"passed": false, "passed": true', 1)
    source = tmp_path / "twice.json"
    source.write_text(text)
    with pytest.raises(UsageError, match="'passed' appears twice"):
        load_result(source)
    source.write_text(json.dumps(data))
    assert load_result(source).authentic is True


def test_a_shard_count_past_the_cells_splits_as_one_shard_per_cell():
    """The split kept a load per shard: a report claiming shard 1/10**13 made the merge allocate them (a
    MemoryError, "unexpected"); 3*10**7 took 11 s. Shards past one per cell are empty, so the split is the same."""
    from verify.matrix.shards import assign_shards

    ids, costs = ["a", "b", "c"], [3.0, 1.0, 2.0]
    assert assign_shards(ids, costs, 10 ** 13) == assign_shards(ids, costs, len(ids)) == [1, 3, 2]


# TorchScript and .pt2 archives: read as data, never expanded past their own size ----------------------------------
EXPANDS_TO = 1 << 20
"""The deflated member's content: a MiB of JSON whitespace, a few hundred bytes compressed."""


def _archive_with_a_deflated_member(path, deflated: str, stored: tuple[str, ...] = ()):
    with zipfile.ZipFile(path, "w") as archive:
        for name in stored:
            archive.writestr(name, "{}")
        archive.writestr(deflated, "{}" + " " * EXPANDS_TO, compress_type=zipfile.ZIP_DEFLATED)
    return path


def test_a_torchscript_files_metadata_that_expands_past_the_file_is_refused_unread(tmp_path):
    """An unsigned folder's model.pt with 1 GiB of whitespace deflated into its metadata (1 MB more file) took
    `verify artifact` from 0.96 GB to 2.14 GB of peak RSS, and passed that check: its metadata still matched."""
    from exporter.artifacts import TORCHSCRIPT_META_FILE
    from exporter.formats.torchscript import read_zip_meta

    path = _archive_with_a_deflated_member(tmp_path / "model.pt", f"model/extra/{TORCHSCRIPT_META_FILE}")
    assert path.stat().st_size < EXPANDS_TO
    with pytest.raises(ArtifactError, match="refused unread"):
        read_zip_meta(path, "TorchScript")


def test_a_pt2_program_that_expands_past_the_file_is_refused_unread(tmp_path):
    from exporter.formats.pt2 import scan_archive

    weights, constants = (f"m/data/{kind}/model_{kind}_config.json" for kind in ("weights", "constants"))
    path = _archive_with_a_deflated_member(tmp_path / "model.pt2", weights, ("m/models/model.json", constants))
    with pytest.raises(ArtifactError, match="refused unread"):
        scan_archive(path)


# Shards given other files under the same names are other matrices --------------------------------------------------
def test_shards_run_on_other_input_files_under_one_name_have_other_fingerprints(tmp_path):
    """A report recorded `--input x.npy` by its path alone: two shard jobs whose x.npy differed (generated per
    job, another checkout) merged as one matrix, each half judged on another input."""
    from verify.matrix.request import fingerprint

    given = tmp_path / "x.npy"

    def settings_for(seed: int) -> dict:
        np.save(given, np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32))
        request = MatrixRequest.create(["resnet18"], ["frozen"], ["body"], RunSettings(input_file=given),
                                       ExportOptions(formats=("onnx",)), ["onnxruntime"])
        return request.settings_dict()

    first, again, other = settings_for(0), settings_for(0), settings_for(1)
    assert fingerprint(first, ["a"]) == fingerprint(again, ["a"]) != fingerprint(other, ["a"])
    assert first["content_sha256"]["input"] != other["content_sha256"]["input"]


def test_a_signature_file_larger_than_any_bundle_is_not_read(tmp_path):
    """model-signing reads the whole bundle: a sparse 1 GiB model.sig took `verify artifact --verify-key` to a
    2.17 GB peak RSS (0.75 GB now) before failing to parse it."""
    from exporter.manifest import SIGNATURE_NAME
    from exporter.signing import MAX_SIGNATURE_BYTES, verify_folder

    _, public = make_keys(tmp_path)
    folder = tmp_path / "signed"
    folder.mkdir()
    with open(folder / SIGNATURE_NAME, "wb") as handle:
        handle.truncate(MAX_SIGNATURE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(ArtifactError, match="far more than a signature"):
        verify_folder(folder, public)


def test_a_merge_never_writes_over_a_report_it_merges(report, tmp_path):
    """`merge s1.json s2.json --json s1.json` replaced shard 1's own report with the merged one."""
    before = report.read_bytes()
    result = invoke("matrix", "merge", report, "--markdown", report)
    assert result.exit_code == 2, result.output
    assert "one of the reports being merged" in result.output and report.read_bytes() == before


# Strict JSON in linear time ------------------------------------------------------------------------------------------
KEYS = 50_000
"""Keys in one object of a manifest (1/3 of its size cap): counting each key's copies took ~30 s here."""
PARSE_BUDGET_S = 5.0
"""A hundred times what a linear duplicate check takes on KEYS keys on a loaded 2-core machine."""


def test_a_manifest_object_with_many_keys_is_read_in_linear_time():
    """The duplicate-key check counted every key's copies (quadratic): a 2.3 MB manifest.json whose one object held
    200,000 keys took `verify artifact` 508 s of CPU before any check; now 0.12 s."""
    import time

    from exporter.manifest import loads_strict

    text = "{" + ",".join(f'"k{i}": 1' for i in range(KEYS)) + "}"
    start = time.perf_counter()
    assert len(loads_strict(text)) == KEYS
    assert time.perf_counter() - start < PARSE_BUDGET_S
    with pytest.raises(ValueError, match="'k0' appears twice"):
        loads_strict(text[:-1] + ', "k0": 2}')


def test_an_artifact_report_that_fails_to_render_leaves_none_of_the_others_written(tmp_path, monkeypatch):
    """`verify artifact`/`preflight` outputs (verify/folder/checks.py) too: every text is rendered before any is
    written, so a renderer's failure leaves no JSON beside a missing Markdown."""
    import verify.folder.checks as checks

    def broken(report):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(checks, "markdown", broken)
    report = checks.CheckReport("artifact", [checks.Check("folder", "integrity", "manifest.json", True, "ok")])
    paths = [tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "r.md"]
    with pytest.raises(RuntimeError):
        checks.write_outputs(report, *paths)
    assert not any(path.exists() for path in paths)
    monkeypatch.undo()
    assert checks.write_outputs(report, *paths) == paths and all(path.is_file() for path in paths)
