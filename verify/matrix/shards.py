"""The cost model and the shards: balanced, deterministic splits of the cells for CI jobs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.errors import UsageError
from verify.matrix.detectors import DETECTOR_VIEW, detector_params
from verify.pipeline.stages import CellRequest

SHARD_ENV = ("CI_NODE_INDEX", "CI_NODE_TOTAL", "JOB_COMPLETION_INDEX")
"""The CI variables `--shard` falls back on: GitLab's parallel jobs (1-based index and total) and Kubernetes
indexed jobs (0-based index; the total from --shard-count)."""
WHOLE_NUMBER = re.compile(r"[0-9]+")
"""ASCII digits only: str.isdigit() also takes `²`, which int() then refuses."""
SHARD_TEXT = re.compile(r"([0-9]+)/([0-9]+)")
USER_MODEL_PARAMS_M = 25.0
"""A user model's size in the cost model: unknown without running the user's code, counted as a resnet50."""
PARAMS_M = {"resnet18": 11.7, "resnet34": 21.8, "resnet50": 25.6, "resnet101": 44.5, "resnet152": 60.2,
            "resnext50_32x4d": 25.0, "wide_resnet50_2": 68.9}
"""Parameters (millions) of torchvision's builders, the size in the cost model; a backbone registered
later is counted on the meta device (no memory, no weights)."""


def backbone_params(name: str) -> float:
    if name in PARAMS_M:
        return PARAMS_M[name]
    import torch
    from torch import nn

    from exporter.backbones import get_backbone_builder

    with torch.device("meta"):
        model = get_backbone_builder(name)(norm_layer=nn.BatchNorm2d)
    return sum(p.numel() for p in model.parameters()) / 1e6


def cell_cost(request: CellRequest) -> float:
    """Expected relative cost: building, exporting (each format) and running all grow with the
    backbone's size. Only the ordering matters (shards, ETA), not the unit."""
    return spec_cost(request.spec, len(request.export.formats))


def spec_cost(spec: Any, formats: int) -> float:
    """A cell's cost from its spec and the matrix's number of formats (a run and a merge compute the same)."""
    if not spec.registered:
        size = USER_MODEL_PARAMS_M
    elif spec.row[2] == DETECTOR_VIEW:
        size = detector_params(spec.backbone)
    else:
        size = backbone_params(spec.backbone)
    return size * (2 + formats)


def assign_shards(ids: Sequence[str], costs: Sequence[float], count: int) -> list[int]:
    """Greedy longest-processing-time: the costliest cell first, each to the least-loaded shard; ties
    broken by cell id and shard number, so every shard job computes the same split. 1-based."""
    # past one shard per cell the rest stay empty: the split is the same, and a count of 10**13 allocates nothing
    loads = [0.0] * min(count, len(ids))
    shard = [0] * len(ids)
    for index in sorted(range(len(ids)), key=lambda i: (-costs[i], ids[i])):
        target = min(range(len(loads)), key=lambda s: (loads[s], s))
        loads[target] += costs[index]
        shard[index] = target + 1
    return shard


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 1 <= I <= N, in ASCII digits (int() would also take `1_0`, `+1` or other scripts' digits)."""
    found = SHARD_TEXT.fullmatch(text.strip())
    if found is None:
        raise UsageError(f"Bad --shard {text!r}; expected I/N, e.g. 1/4")
    index, count = int(found[1]), int(found[2])
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"Bad --shard {text!r}; I must be between 1 and N, e.g. 1/4")
    return index, count


def _env_int(environ: Mapping[str, str], name: str, low: int) -> int:
    text = environ[name].strip()
    if not WHOLE_NUMBER.fullmatch(text) or int(text) < low:
        raise UsageError(f"Bad ${name} {environ[name]!r}; expected a whole number >= {low} (set by the CI, "
                         "or unset it and pass --shard I/N)")
    return int(text)


def resolve_shard(text: str | None, count: int | None, environ: Mapping[str, str]) -> tuple[int, int] | None:
    """The shard to run: --shard I/N, else GitLab's CI_NODE_INDEX/CI_NODE_TOTAL (1-based), else a Kubernetes
    indexed job's JOB_COMPLETION_INDEX (0-based) of --shard-count; None: the whole matrix."""
    if count is not None and count < 1:
        raise UsageError(f"Bad --shard-count {count}; expected a number of shards >= 1")
    if text:
        shard = parse_shard(text)
        if count is not None and count != shard[1]:
            raise UsageError(f"--shard {text} and --shard-count {count} disagree; give one of them")
        return shard
    if environ.get("CI_NODE_INDEX", "").strip():
        if not environ.get("CI_NODE_TOTAL", "").strip():
            raise UsageError("$CI_NODE_INDEX is set without $CI_NODE_TOTAL; pass --shard I/N")
        index, total = _env_int(environ, "CI_NODE_INDEX", 1), _env_int(environ, "CI_NODE_TOTAL", 1)
        if index > total or (count is not None and count != total):
            raise UsageError(f"$CI_NODE_INDEX {index} of $CI_NODE_TOTAL {total} is not a shard"
                             + (f" of --shard-count {count}" if count is not None else "") + "; pass --shard I/N")
        return index, total
    if environ.get("JOB_COMPLETION_INDEX", "").strip():
        if count is None:
            raise UsageError("$JOB_COMPLETION_INDEX is set (a Kubernetes indexed job): pass --shard-count with "
                             "the job's completions, or --shard I/N")
        index = _env_int(environ, "JOB_COMPLETION_INDEX", 0) + 1
        if index > count:
            raise UsageError(f"$JOB_COMPLETION_INDEX {index - 1} is past --shard-count {count} (indices run from "
                             f"0 to {count - 1}); set --shard-count to the job's completions")
        return index, count
    if count is not None and count > 1:
        raise UsageError(f"--shard-count {count} without a shard index: pass --shard I/{count}, or run it as a "
                         "GitLab parallel job or a Kubernetes indexed job")
    return None
