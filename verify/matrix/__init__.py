"""`verify matrix`: backbone x norm x view cells from the registries (and the user's own models, `--model`), each a
pipeline cell (verify/pipeline/stages.py), run in worker processes, cached, split into balanced shards for CI and
merged back. Results are data (`MatrixResult`, `CellResult`); verify/render draws them as a table, JSON, JUnit,
Markdown and HTML.

request.py (what to run, cell ids) -> shards.py (cost model, splits) -> cell.py (one cell: cache, pipeline, store)
-> workers.py (worker processes) -> run.py (run_matrix); result.py (the result models), judging.py (stored numbers
judged again), merge.py (shard reports joined). Whole detectors (-b <detector>): detectors.py (their cells and
options), detector_cell.py (run through `verify export -b`'s path, never cached), detector_judging.py (judged again
from their stored detections), detector_rows.py (their rows), mask_numbers.py (a Mask R-CNN cell's
mask logits and runtime masks, stored exactly). Here: the names the CLI, the renderers and users
import."""

from verify.matrix.cell import RERUN
from verify.matrix.judging import JUDGED
from verify.matrix.merge import merge_results
from verify.matrix.request import MatrixRequest
from verify.matrix.result import (
    AGREE,
    DISAGREE,
    ERROR,
    REPORT_KEY_ENV,
    CellResult,
    MatrixResult,
    load_result,
    pair_name,
)
from verify.matrix.run import run_matrix
from verify.matrix.shards import SHARD_ENV, backbone_params, resolve_shard

__all__ = ["AGREE", "DISAGREE", "ERROR", "JUDGED", "REPORT_KEY_ENV", "RERUN", "SHARD_ENV", "CellResult",
           "MatrixRequest", "MatrixResult", "backbone_params", "load_result", "merge_results",
           "pair_name", "resolve_shard", "run_matrix"]
