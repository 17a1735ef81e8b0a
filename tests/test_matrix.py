"""`verify matrix`: cells, parallel workers, the cache, shards and merge, and the renderings."""

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import invoke
from verify.cache import ENV_DIR, ENV_OFF, Cache
from verify.matrix import (
    AGREE,
    DISAGREE,
    RERUN,
    SHARD_ENV,
    MatrixRequest,
    load_result,
    merge_results,
)
from verify.matrix.request import cell_id
from verify.matrix.shards import assign_shards
from verify.matrix.workers import worker_threads

TINY = "1x3x32x32"
# ONNX through torch's legacy exporter and TorchScript: the cheapest formats that still give three
# runtimes (the dynamo exporter is exercised by verify export's own tests)
CELL_ARGS = ["-b", "resnet18", "--view", "body", "--shape", TINY, "--format", "onnx", "--format", "torchscript",
             "--onnx-exporter", "torchscript"]
NORMS = ["-n", "batch", "-n", "frozen"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Nothing here may write to the user's real cache folder."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "default-cache"))
    monkeypatch.delenv(ENV_OFF, raising=False)
    for name in SHARD_ENV:  # a CI job running the suite must not shard it
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def whole(module_tmp):
    """The cold run with two workers, every output written; then the same command again (warm)."""
    out = module_tmp("matrix")
    cache = out / "cache"
    files = {kind: out / f"whole.{kind}" for kind in ("json", "junit", "markdown", "html")}
    args = ["matrix", *CELL_ARGS, *NORMS, "--jobs", "2", "--cache-dir", cache]
    cold = invoke(*args, *(x for kind, path in files.items() for x in (f"--{kind}", path)))
    assert cold.exit_code == 0, cold.output
    warm = invoke(*args, "--json", out / "warm.json")
    assert warm.exit_code == 0, warm.output
    return {"out": out, "cache": cache, "files": files, "cold": cold, "report": load_result(files["json"]),
            "warm": load_result(out / "warm.json")}


def numbers(result):
    """Every figure that a verdict rests on, by cell and pair."""
    return {(cell.spec, p["a"], p["b"], o["name"]): (o["max_abs"], o["floor"], o["passed"])
            for cell in result.cells for p in cell.pairs for o in p["outputs"]}


def test_two_cells_agree_in_parallel_and_the_table_shows_them(whole):
    report, cold = whole["report"], whole["cold"]
    assert [c.spec for c in report.cells] == ["resnet18:batch:body", "resnet18:frozen:body"]
    assert all(c.verdict == AGREE for c in report.cells) and report.exit_code == 0
    assert report.jobs == 2 and all(c.worker["pid"] != os.getpid() for c in report.cells)  # in workers
    assert all(c.worker["threads"] == worker_threads(2) for c in report.cells)  # cores divided, not shared
    assert "2 of 2 cells agree" in cold.stdout and "resnet18" in cold.stdout
    data = json.loads(whole["files"]["json"].read_text())
    for cell in data["cells"]:
        assert {"backbone", "norm", "view", "id", "pairs", "verdict"} <= set(cell)
        assert cell["id"].startswith(f"resnet18-{cell['norm']}-body-")
        assert {pair["kind"] for pair in cell["pairs"]} == {"runtime", "oracle"}


def test_warm_rerun_finds_every_cell_and_runs_the_passing_ones_again(whole):
    """A stored pass is never served (its numbers may have been edited): it runs again, from cached files."""
    cold, warm = whole["report"], whole["warm"]
    assert cold.cache["misses"].get("result") == 2 and cold.cache["stores"].get("result") == 2
    assert warm.cache["hits"].get("result") == 2 and not warm.cache["misses"].get("result")
    assert all(c.cache["result"] == RERUN for c in warm.cells)
    assert numbers(warm) == numbers(cold)
    assert [c.id for c in warm.cells] == [c.id for c in cold.cells]


def test_cells_share_onnx_exports_through_the_cache(whole):
    """Only data is cached (README, the cache's threat model): weights are computed in every cell, and of the
    two formats only ONNX is stored (TorchScript runs code when loaded), one per cell."""
    cells = whole["report"].cells
    assert [c.cache["weights"] for c in cells] == ["off", "off"]
    info = Cache(whole["cache"]).info()
    assert info["entries"] == {"export": 2, "result": 2}


def shard_reports(whole) -> list:
    """The whole run's two shards, each run once per module (their cells come from the whole run's cache)."""
    import torch

    from verify.pipeline.overlap import MODE_ENV

    out = whole["out"]
    # run in this process on the threads a worker of the whole run had (float32 rounds by thread count), without a
    # background export (mode auto follows the machine's load): the numbers are then comparable outside xdist too
    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(MODE_ENV, "off")
            torch.set_num_threads(worker_threads(2))
            for index in (1, 2):
                if not (out / f"shard{index}.json").is_file():
                    result = invoke("matrix", *CELL_ARGS, *NORMS, "--shard", f"{index}/2", "--cache-dir",
                                    whole["cache"], "--json", out / f"shard{index}.json")
                    assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(threads)
    return [out / f"shard{index}.json" for index in (1, 2)]


def test_shards_merge_into_exactly_the_whole_run(whole):
    out = whole["out"]
    shards = [load_result(path) for path in shard_reports(whole)]
    assert sorted(len(s.cells) for s in shards) == [1, 1]  # two resnet18 cells of equal cost: one each
    merged = invoke("matrix", "merge", out / "shard2.json", out / "shard1.json", "--json", out / "merged.json",
                    "--junit", out / "merged.xml")
    assert merged.exit_code == 0, merged.output
    joined = load_result(out / "merged.json")
    whole_report = whole["report"]
    assert [(c.id, c.verdict) for c in joined.cells] == [(c.id, c.verdict) for c in whole_report.cells]
    assert numbers(joined) == numbers(whole_report)
    assert joined.fingerprint == whole_report.fingerprint and joined.shard is None
    assert [m["index"] for m in joined.merged] == [1, 2]


def test_merge_refuses_other_matrices_overlaps_and_gaps(whole, tmp_path):
    out = whole["out"]
    shard_reports(whole)
    other = invoke("matrix", *CELL_ARGS, "-n", "batch", "--shard", "2/2", "--cache-dir", whole["cache"],
                   "--json", tmp_path / "other.json")
    assert other.exit_code == 1, other.output  # an empty shard of a one-cell matrix: nothing judged, no pass
    refused = invoke("matrix", "merge", out / "shard1.json", tmp_path / "other.json")
    assert refused.exit_code == 1 and "different matrix or settings" in refused.stderr
    shard1 = load_result(out / "shard1.json")
    with pytest.raises(Exception, match="both shard 1/2"):
        merge_results([shard1, shard1])
    with pytest.raises(Exception, match="cells missing: .*rerun shard 2/2"):
        merge_results([shard1])
    whole_report = load_result(whole["files"]["json"])
    with pytest.raises(Exception, match="Only shard reports"):
        merge_results([whole_report, shard1])
    not_a_report = tmp_path / "x.json"
    not_a_report.write_text('{"command": "export"}')
    result = invoke("matrix", "merge", not_a_report)
    assert result.exit_code == 2 and "not a `verify matrix --json` report" in result.stderr


def test_every_rendering_is_written_and_parses(whole):
    report, files = whole["report"], whole["files"]
    root = ET.parse(files["junit"]).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == sum(len(c.pairs) for c in report.cells) and not root.findall(".//failure")
    assert {s.get("name") for s in root.findall("testsuite")} == {c.spec for c in report.cells}
    text = files["markdown"].read_text()
    assert text.startswith("## ✅ verify matrix") and "`resnet18:frozen:body`" in text
    assert text.count("| `resnet18") == 2
    page = files["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "https://" not in page
    assert "<script" not in page and "src=" not in page  # nothing to fetch, nothing to run
    for cell in report.cells:
        assert f'id="{cell.id}"' in page
    from html.parser import HTMLParser

    HTMLParser().feed(page)


def test_a_disagreement_exits_1_and_is_reported_per_pair(whole, tmp_path):
    """decimal=7 asks for 1.5e-7 absolute, which float32 cannot give here: correct runs fail, as in README."""
    result = invoke("matrix", *CELL_ARGS, "-n", "batch", "--decimal", "7", "--cache-dir", whole["cache"],
                    "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml", "--markdown", tmp_path / "r.md")
    assert result.exit_code == 1, result.output
    report = load_result(tmp_path / "r.json")
    assert report.cells[0].verdict == DISAGREE and report.cells[0].cache["weights"] == "off"
    failures = ET.parse(tmp_path / "r.xml").getroot().findall(".//failure")
    assert len(failures) == sum(not p["passed"] for p in report.cells[0].pairs) > 0
    assert "❌" in (tmp_path / "r.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["-b", "vgg16"], "Unknown backbone 'vgg16'"),
    (["-n", "layernorm"], "Unknown norm 'layernorm'"),
    (["--shard", "3/2"], "Bad --shard"),
    (["--shard", "half"], "Bad --shard"),
    (["--runtime", "onnxruntime", "--format", "torchscript"], "Runtime onnxruntime runs onnx"),
    (["--decimal", "5", "--atol", "1e-3"], "either --decimal or --rtol/--atol"),
])
def test_usage_errors_exit_2_before_any_work(args, message):
    result = invoke("matrix", "-b", "resnet18", "-n", "batch", "--shape", TINY, "--no-cache", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_cache_info_and_clear(tmp_path):
    cache = Cache(tmp_path / "c")
    cache.store("result", cache.key("result", {}), data={"x": 1})
    info = invoke("cache", "info", "--cache-dir", tmp_path / "c")
    assert info.exit_code == 0 and "result 1" in info.stdout
    cleared = invoke("cache", "clear", "--cache-dir", tmp_path / "c")
    assert cleared.exit_code == 0 and "cleared" in cleared.stdout
    assert Cache(tmp_path / "c").info()["entries"] == {}


def small_request(norm="batch", **overrides):
    from exporter.export import ExportOptions
    from exporter.formats.onnx import OnnxOptions
    from verify.api import RunSettings

    settings = RunSettings(shape=(1, 3, 32, 32), **overrides)
    return MatrixRequest.create(["resnet18"], [norm], ["body"], settings, ExportOptions(
        formats=("torchscript", "onnx"), format_options=(OnnxOptions("torchscript"),)))


def test_cell_ids_are_stable_and_follow_the_content():
    first, again = small_request().cells()[0], small_request().cells()[0]
    assert cell_id(first) == cell_id(again)
    assert cell_id(small_request(seed=1).cells()[0]) != cell_id(first)


def test_shards_are_balanced_by_cost_deterministic_and_cover_every_cell():
    ids = [f"cell{i:02d}" for i in range(10)]
    costs = [60.0, 45.0, 25.0, 25.0, 22.0, 12.0, 12.0, 12.0, 12.0, 69.0]
    for count in (1, 2, 3, 4):
        owner = assign_shards(ids, costs, count)
        assert sorted(set(owner)) == list(range(1, min(count, len(ids)) + 1))
        loads = [sum(c for c, o in zip(costs, owner) if o == s) for s in range(1, count + 1)]
        assert max(loads) - min(loads) <= max(costs)  # what greedy longest-first guarantees
        shuffled = list(zip(ids, costs))[::-1]
        again = assign_shards([i for i, _ in shuffled], [c for _, c in shuffled], count)
        assert dict(zip([i for i, _ in shuffled], again)) == dict(zip(ids, owner))  # order-free
    by_index = [(i % 2) + 1 for i in range(len(ids))]
    assert assign_shards(ids, costs, 2) != by_index  # not a round-robin over the list


def test_two_configurations_in_either_order_give_identical_numbers(tmp_path, monkeypatch):
    """No leaked global state: torch's RNG, threads and flags are restored after every cell, so a
    cell's numbers do not depend on what ran before it in the same process."""
    import torch

    from verify.pipeline.overlap import MODE_ENV

    monkeypatch.setenv(MODE_ENV, "off")  # a background export's fewer threads round otherwise (mode auto: the load)

    from verify.pipeline.stages import run_cell
    from verify.runtimes import RuntimeOptions, runtime_class

    first = small_request().cells()[0]
    # another seed (reseeds torch while building weights), TF32 asked for (sets torch's global flags)
    basic = RuntimeOptions(tf32=True).replacing(runtime_class("onnxruntime"), opt_level="basic")
    second = small_request("frozen", seed=3, runtime=basic).cells()[0]
    before = (torch.get_rng_state(), torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32)
    cache = Cache(tmp_path / "c")  # weights and exports come from the cache; runs and oracle are computed

    def figures(request):
        report = run_cell(request, tmp_path / "out", cache).report
        return {(p.a, p.b, o.name): (o.max_abs, o.floor) for p in report.pairs for o in p.outputs}

    (tmp_path / "out").mkdir()
    a_then_b = [figures(first), figures(second)]
    b_then_a = [figures(second), figures(first)]
    assert a_then_b[0] == b_then_a[1] and a_then_b[1] == b_then_a[0]
    assert a_then_b[0] != a_then_b[1]  # the two configurations do differ
    after = (torch.get_rng_state(), torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]


def test_a_cell_that_fails_after_its_verdict_is_an_error_never_a_pass(tmp_path, monkeypatch):
    """A failure once the verdict is reached (here: storing the result) still makes the cell an error."""
    from verify.matrix import ERROR
    from verify.matrix.cell import CellJob, execute_cell

    store = Cache.store

    def broken_store(self, kind, *args, **kwargs):
        if kind == "result":  # weights and exports store fine: the cell reaches its verdict first
            raise OSError("disk full")
        return store(self, kind, *args, **kwargs)

    monkeypatch.setattr(Cache, "store", broken_store)
    request = small_request().cells()[0]
    result = execute_cell(CellJob(request, cell_id(request), str(tmp_path / "cache")))
    assert result.verdict == ERROR and not result.passed and "disk full" in result.error


def test_verify_export_is_the_one_cell_case_of_the_matrix(tmp_path):
    """`verify export` and a matrix cell are one composition of the pipeline's stages: the same request gives
    the same runs, pairs and numbers, and the export's folder holds what the cell exported."""
    from verify.api import verify_export
    from verify.pipeline.stages import run_cell

    cell = small_request().cells()[0]
    (tmp_path / "cell").mkdir()
    by_cell = run_cell(cell, tmp_path / "cell").report
    by_export = verify_export(cell.spec, cell.settings, out=tmp_path / "export", export=cell.export,
                              runtimes=cell.runtimes)

    def figures(report):
        return {(p.a, p.b, o.name): (o.max_abs, o.floor, o.channel, o.ratio, o.passed)
                for p in report.pairs for o in p.outputs}

    assert [r.label for r in by_export.runs] == [r.label for r in by_cell.runs]
    assert figures(by_export) == figures(by_cell) and by_export.passed == by_cell.passed
    exported = {p.name for p in (tmp_path / "cell").iterdir()}
    assert exported and exported <= {p.name for p in Path(by_export.artifacts["folder"]).iterdir()}


def test_an_interrupt_inside_a_cell_stops_the_matrix_not_only_the_cell(monkeypatch):
    """A Ctrl-C landing inside torch comes back wrapped (pybind11's SystemError, then an ExportError): a cell
    that caught it as its own failure would let the matrix run on; it is raised again instead."""
    import verify.pipeline.stages
    from exporter.errors import ExportError
    from verify.matrix.cell import CellJob, execute_cell

    def interrupted(*args, **kwargs):
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as inner:
                raise SystemError("<built-in method> returned a result with an exception set") from inner
        except SystemError:
            raise ExportError("torch.jit.script failed; pass --trace") from None

    monkeypatch.setattr(verify.pipeline.stages, "run_cell", interrupted)
    cell = small_request().cells()[0]
    with pytest.raises(KeyboardInterrupt):
        execute_cell(CellJob(cell, cell_id(cell), None))
