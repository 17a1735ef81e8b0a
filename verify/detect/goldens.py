"""A detector folder's `goldens.npz`: the images and the eager float32 and float64 runs (each image's detections,
dense pre-NMS tensors, RPN proposals, and in float64 the inputs of the final and the RPN NMS) as flat arrays,
and back into the runs verify/detect/check.py judges against. Read with exporter.manifest.read_goldens (never
unpickled); every key, dtype and shape is checked against the manifest before a run is rebuilt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError
from exporter.manifest import GOLDENS_NAME
from verify.detect.check import Run, concat_dense
from verify.detect.match import Detections

if TYPE_CHECKING:
    import numpy as np
    import torch

GROUPS = ("image", "float32", "float64")
"""`image.<i>`, then `float32.<i>.<what>` (eager) and `float64.<i>.<what>` (the oracle)."""
DETECTION_KEYS = ("boxes", "scores", "labels")
DENSE, PROPOSALS_KEY = "dense", "proposals"
CANDIDATES = ("candidates", "rpn_candidates")
"""float64 only: the recorded inputs of the final batched NMS, and of the RPN's (Faster R-CNN)."""


def golden_arrays(images: list[np.ndarray], eager: Run, oracle: Run) -> dict[str, np.ndarray]:
    """Every array of the goldens, by npz key."""
    arrays = {f"image.{i}": image for i, image in enumerate(images)}
    for group, run in (("float32", eager), ("float64", oracle)):
        arrays.update({f"{group}.{key}": value for key, value in _run_arrays(run).items()})
    return arrays


def _run_arrays(run: Run) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for i, found in enumerate(run.detections):
        arrays.update(_detection_arrays(f"{i}", found))
        for name, value in (run.per_image[i] if run.per_image else {}).items():
            arrays[f"{i}.{DENSE}.{name}"] = value
        if run.proposals:
            arrays[f"{i}.{PROPOSALS_KEY}"] = run.proposals[i]
        for kind in CANDIDATES:
            found_kind = getattr(run, kind)
            if found_kind:
                arrays.update(_detection_arrays(f"{i}.{kind}", found_kind[i]))
    return arrays


def _detection_arrays(prefix: str, found: Detections) -> dict[str, np.ndarray]:
    return {f"{prefix}.{key}": getattr(found, key) for key in DETECTION_KEYS}


def expected_keys(images: int, dense: list[str], proposals: bool, group: str) -> set[str]:
    """The keys of one group of a complete goldens file."""
    keys = set()
    for i in range(images):
        keys |= {f"{i}.{key}" for key in DETECTION_KEYS} | {f"{i}.{DENSE}.{name}" for name in dense}
        keys |= {f"{i}.{PROPOSALS_KEY}"} if proposals else set()
        if group == "float64":
            kinds = CANDIDATES if proposals else CANDIDATES[:1]
            keys |= {f"{i}.{kind}.{key}" for kind in kinds for key in DETECTION_KEYS}
    return keys


def check_goldens(goldens: dict[str, dict[str, np.ndarray]], shapes: list[list[int]], dense: list[str],
                  proposals: bool) -> str:
    """Exactly the arrays a complete export writes: the images of the recorded shapes in float32, each group's
    keys, dtypes (dense tensors in their group's precision) and shapes, all finite; else an ArtifactError."""
    import numpy as np

    wanted = {str(i) for i in range(len(shapes))}
    if set(goldens["image"]) != wanted:
        raise ArtifactError(f"{GOLDENS_NAME} holds images {sorted(goldens['image'])}, the manifest {sorted(wanted)}")
    for i, shape in enumerate(shapes):
        image = goldens["image"][str(i)]
        if image.dtype != np.float32 or list(image.shape) != list(shape):
            raise ArtifactError(f"{GOLDENS_NAME}: image.{i} is {image.dtype} {list(image.shape)}, the manifest "
                                f"records float32 {list(shape)}")
    for group, dtype in (("float32", np.float32), ("float64", np.float64)):
        keys = expected_keys(len(shapes), dense, proposals, group)
        found = set(goldens[group])
        if found != keys:
            odd = sorted(found - keys)
            what = f"holds {group}.{odd[0]}, which" if odd else f"lacks {group}.{sorted(keys - found)[0]}, which"
            raise ArtifactError(f"{GOLDENS_NAME} {what} the manifest's images and dense tensors "
                                f"{'do not account for' if odd else 'need'}")
        for key, array in goldens[group].items():
            _check_array(f"{group}.{key}", array, dtype)
    for kind, arrays in goldens.items():
        for key, array in arrays.items():
            bad = int((~np.isfinite(array)).sum()) if array.dtype.kind == "f" else 0
            if bad:
                raise ArtifactError(f"{GOLDENS_NAME}: {kind}.{key} holds {bad} NaN/Inf; goldens must be finite")
    return (f"{len(shapes)} image(s) {', '.join('x'.join(map(str, s)) for s in shapes)}, {len(dense)} dense tensors "
            "per image, detections in float32 and float64, all finite")


def _check_array(key: str, array: np.ndarray, dense_dtype: Any) -> None:
    import numpy as np

    leaf = key.rsplit(".", 1)[-1]
    if f".{DENSE}." in key:
        dtype, ndim = dense_dtype, None
    elif leaf == "labels":
        dtype, ndim = np.int64, 1
    else:
        dtype, ndim = np.float64, (1 if leaf == "scores" else 2)
    if array.dtype != dtype or (ndim is not None and array.ndim != ndim) or array.ndim == 0 \
            or (ndim == 2 and array.shape[1] != 4):
        raise ArtifactError(f"{GOLDENS_NAME}: {key} is {array.dtype} {list(array.shape)}; expected "
                            f"{np.dtype(dtype)}{' boxes (N x 4)' if ndim == 2 else ''}")


def golden_images(goldens: dict[str, dict[str, np.ndarray]]) -> list[torch.Tensor]:
    import torch

    return [torch.from_numpy(goldens["image"][str(i)].copy()) for i in range(len(goldens["image"]))]


def golden_run(arrays: dict[str, np.ndarray], images: list[torch.Tensor]) -> Run:
    """One group (float32 or float64) of checked goldens as the Run the export judged against."""
    count = len(images)
    run = Run([Detections.of({k: arrays[f"{i}.{k}"] for k in DETECTION_KEYS}) for i in range(count)])
    run.per_image = [{key.removeprefix(f"{i}.{DENSE}."): value for key, value in arrays.items()
                      if key.startswith(f"{i}.{DENSE}.")} for i in range(count)]
    run.dense = concat_dense(run.per_image, images) if any(run.per_image) else {}
    if f"0.{PROPOSALS_KEY}" in arrays:
        run.proposals = [arrays[f"{i}.{PROPOSALS_KEY}"] for i in range(count)]
    for kind in CANDIDATES:
        if f"0.{kind}.boxes" in arrays:
            setattr(run, kind, [Detections.of({k: arrays[f"{i}.{kind}.{k}"] for k in DETECTION_KEYS})
                                for i in range(count)])
    return run
