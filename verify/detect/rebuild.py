"""`verify artifact --rebuild` on a whole detector's folder: the detector rebuilt from its manifest (registry
name, norm, weights checked by sha256), its post-processing constants the manifest's, and run in float32 and
float64 on the golden images. The recorded float64 goldens must be its own (verify/folder/rebuild.py
same_reference); the folder's files are then run on those images and on as many seeded ones this run draws, of
the same sizes, and judged against the rebuilt detector's runs on them, not the recorded ones. The rebuilt detector
is kept (`art.rebuilt`): the layer verdict's float64 reference (hunt 24b)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import ArtifactError
from verify.detect.eager_runs import folded_samples, reversed_samples, run_eager
from verify.detect.goldens import golden_arrays
from verify.detect.report import Judging
from verify.detect.verdict import EAGER, ORACLE
from verify.folder.rebuild import check_weights, recorded_seed, same_reference, weights_source

if TYPE_CHECKING:
    from verify.detect.folder import DetectorFolder

FLOAT64 = "float64."


def rebuild_detector(art: DetectorFolder, weights_file: Path | None) -> str:
    from exporter.families.detectors import build_detector, calibration_image
    from exporter.weights import state_dict_sha256

    info = art.manifest.detector
    source, seed = weights_source(info.weights, weights_file, recorded_seed(art.manifest.identity))
    if source == "imagenet":
        raise ArtifactError("not rebuilt: a detector's weights are synthetic or a COCO checkpoint, not "
                            f"{info.weights!r}")
    built = build_detector(info.name, info.norm, source, seed)
    check_weights(state_dict_sha256(built.model.state_dict()), info.weights_sha256)
    if info.classes is not None and built.classes != info.classes:  # every golden label is below the manifest's
        raise ArtifactError(f"the manifest records {info.classes} classes, the rebuilt {info.name} has "
                            f"{built.classes}: the folder's class count was edited; export it again")
    if Judging.of(built) != art.judging:
        raise ArtifactError(f"the manifest's post-processing ({art.judging}) is not the rebuilt {info.name}'s "
                            f"({Judging.of(built)}): the folder's thresholds were edited")
    oracle = run_eager(built, art.images, float64=True)
    images = [image.numpy() for image in art.images]
    recorded = golden_arrays(images, art.references[EAGER], art.references[ORACLE])
    rebuilt = golden_arrays(images, run_eager(built, art.images, float64=False), oracle)
    same_reference({k: v for k, v in recorded.items() if k.startswith(FLOAT64)},
                   {k: v for k, v in rebuilt.items() if k.startswith(FLOAT64)}, "float64")
    # the files are also judged on images this run draws, of the golden sizes: the folder's are theirs to choose
    # (kept too: real images may be the only ones a checkpoint detects anything on)
    art.images = [*art.images, *[calibration_image(seed + len(art.images) + i, tuple(image.shape))
                                    for i, image in enumerate(art.images)]]
    art.references = {EAGER: run_eager(built, art.images, float64=False),
                      ORACLE: run_eager(built, art.images, float64=True)}
    art.references[EAGER].samples = folded_samples(built, art.images)  # its floors measured as an export's are
    art.references[EAGER].reversed_sums = reversed_samples(built, art.images)
    art.rebuilt = built  # the layer verdict's float64 reference (verify/detect/folder.py detector_folder_layers)
    return (f"{info.name}:{info.norm} with {info.weights} weights (sha256 as recorded), {built.classes} classes and "
            f"its post-processing the manifest's: the float64 goldens of {len(images)} image(s) are its own; each file "
            f"judged against its float32 and float64 runs on them and on as many seeded images this run draws (seed "
            f"{seed})")
