"""Guard 3's witness (verify/judge/file_floor.py) where no exported file runs in float64 (ONNX, AOTInductor).

An export made only of ONNX files or AOTInductor packages had no file whose own floor could be measured (ONNX Runtime
has no float64 convolution; a package is compiled for float32), so a user's model whose eager path adds noise its
export leaves out (an `is_exporting()` branch, noise keyed on the inference mode) exited 0 on that noise as its floor
(review 33: a floor of 1.27e-4 passed an export error of 1e-4 at 2.4x). The witness is the model exported once more
as the files were traced, into a private temporary folder, never published and never a format of the report: the
`.pt2` of the trace the files were made from (torch.export's, shared by AOTInductor and the dynamic dynamo ONNX
export), or one traced as torch.onnx.export traces, its exporting flag raised: torch.export for the static dynamo
export, torch.jit.trace for the legacy exporter (a trace leaves out what `torch.jit.is_tracing()` branches off, as
that file does); each falls back to the other where it cannot trace the model. Where a user's model's ONNX file was
exported from a trace kept for it (exporter/formats/program.py ONNX_TRACES: the static dynamo export's torch.export
trace, or the legacy exporter's own trace graph, copied as torch.onnx.export traced it: floor 35), the witness is that
very trace, never a second one (review 34: a model counting its traces made the file's clean and the witness's noisy);
where none was kept (a torch without the legacy exporter's hook), it traces the model again. Its floor, run in
float32 and float64 by its runtime on every input, is held to the model's as a `.pt2`'s is (`measure_file_floors`,
`vouched_floors`). Where no witness runs in float64, the report keeps the note that the floor was not checked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from exporter.formats.program import onnx_exporting

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact, ArtifactMeta
    from exporter.formats import ExportContext
    from verify.judge.file_floor import FileFloors

SHARED_TRACE = "exported_program"
"""The ExportContext.shared key of the one torch.export trace the .pt2, AOTInductor and dynamo ONNX exports share."""
ONNX_EXPORT = "torch.onnx.export("
"""How a file traced by torch.onnx.export records its exporter (exporter/formats/onnx.py: `torch.onnx.export(dynamo=
True, opset=18)`); with dynamo and dynamic axes it exports the shared trace, else it traced inside torch.onnx.export."""
TRACE_FLAG = "--trace"
"""A format's own option that exports by tracing (TorchScript's): that witness is traced, as the legacy ONNX exporter
traces, never scripted (a script decides `torch.compiler.is_exporting()` when it runs, as eager does)."""
SHARED, DYNAMO, LEGACY = "shared", "dynamo", "legacy"
"""The traces a witness is made as: the shared torch.export trace (AOTInductor, dynamic dynamo ONNX), torch.export
under torch.onnx's exporting flag (static dynamo ONNX), torch.jit.trace under that flag (the legacy ONNX exporter)."""
PRIVATE_TMP = "BACKBONE_VERIFY_WORKER_TMP"
"""Where a worker process makes the witness's private folder: one its parent made and removes when the worker ends,
however it ends (verify/pipeline/isolation.py run_isolated); unset, the system's temporary folder."""
EVERY_TRACE = (SHARED, DYNAMO, LEGACY)
"""`verify compare`'s: how the file it is given was exported is not known."""


def onnx_trace(meta: ArtifactMeta) -> str | None:
    """How a file traced inside torch.onnx.export (its exporting flag raised) was traced, DYNAMO (static axes) or
    LEGACY, from its recorded exporter; None for a file exported from the shared torch.export trace or not by
    torch.onnx.export."""
    exporter = meta.exporter or ""
    if not exporter.startswith(ONNX_EXPORT):
        return None
    if "dynamo=True" not in exporter:
        return LEGACY
    return None if meta.dynamic_axes else DYNAMO


def witness_candidates(jit_first: bool = False) -> list[tuple[str, Any]]:
    """The witness's formats and options in the order tried: the file formats a runtime runs in float64, the one
    exported from torch.export's program first (the .pt2, which rides along with the shared trace), then the others,
    traced where they can be (a TorchScript trace); the trace first where `jit_first` (the legacy exporter's way).
    Each after the first is tried only where the ones before it could not trace the model."""
    from exporter.formats import FORMATS, get_format
    from exporter.plugin_options import option_fields
    from verify.runtimes import runtime_class

    found = []
    for name in FORMATS:
        entry = get_format(name)
        if entry.is_file and runtime_class(entry.default_runtime).supports_float64:
            traced = {item.name: spec.flag_value for item, spec in option_fields(entry.Options)
                      if spec.flag == TRACE_FLAG}
            found.append((name, entry.Options(**traced)))
    return sorted(found, key=lambda candidate: get_format(candidate[0]).rides_along == jit_first)


def witness_traces(context: ExportContext, files: Iterable[Artifact]) -> list[str]:
    """The traces the exported `files` were made from: SHARED where a format exported the shared torch.export trace
    (AOTInductor, dynamic dynamo ONNX), DYNAMO or LEGACY for a file traced inside torch.onnx.export; at least one."""
    traces = [SHARED] if SHARED_TRACE in context.shared else []
    traces += sorted({onnx_trace(file.meta) for file in files} - {None})
    return traces or [SHARED]


def witness_floors(context: ExportContext, traces: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]],
                   model_float64: Sequence[Mapping[str, np.ndarray]] | None = None,
                   summed: Sequence[Mapping[str, float]] = ()) -> tuple[list[FileFloors], list[str]]:
    """The witnesses' own floors on every feed (`measure_file_floors`, vouched by `model_float64`, lifted to
    `summed`), one per trace in `traces` (`witness_traces`, EVERY_TRACE); and why each trace that has none has none."""
    files, failures = [], []
    for trace in traces:
        found, why = one_witness(context, trace, feeds, model_float64, summed)
        files += [found] if found is not None else []
        failures += [why] if found is None else []
    return files, failures


def one_witness(context: ExportContext, trace: str, feeds: Sequence[Mapping[str, np.ndarray]],
                model_float64: Sequence[Mapping[str, np.ndarray]] | None, summed: Sequence[Mapping[str, float]]
                ) -> tuple[FileFloors | None, str]:
    """One trace's witness (`witness_candidates`): a `.pt2` (the shared trace itself for SHARED) or, for LEGACY first,
    a traced TorchScript file, under torch.onnx's exporting flag but for SHARED; the other only where the first could
    not trace the model; each exported into a private folder removed after its floors are measured. (None, why) where
    neither could trace the model, or where the witness cannot run in float64 (a graph that casts to float32: the
    other would not be the files' trace)."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from exporter.errors import ArtifactError, ExportError
    from exporter.formats import get_format
    from exporter.formats.program import ONNX_TRACES
    from exporter.formats.torchscript import WITNESS_TRACE
    from verify.judge.file_floor import measure_file_floors

    flagged = trace != SHARED
    flag = " under torch.onnx's exporting flag" if flagged else ""
    reasons = []
    made = context.shared.get(ONNX_TRACES, {}).get(trace) if flagged else None  # the file's own trace (review 34)
    for fmt, options in witness_candidates(jit_first=trace == LEGACY):
        entry = get_format(fmt)
        shared = context.shared if not flagged else {} if made is None else \
            {WITNESS_TRACE if trace == LEGACY else SHARED_TRACE: made}
        if made is not None and (trace == LEGACY) == entry.rides_along:
            continue  # the file's own trace is of the other kind: a second trace of this kind would witness another
        ctx = dataclasses.replace(context, shared=shared)
        how = ("torch.export" if entry.rides_along else "a trace") + flag + ("; the file's own" if made is not None
                                                                              else "")
        label = f"a private {entry.suffixes[0]} witness of the model ({how}; not published) in {entry.default_runtime}"
        with tempfile.TemporaryDirectory(prefix="verify-witness-", dir=private_tmp()) as folder:
            try:
                with onnx_exporting(flagged):
                    artifact = entry.export(ctx, options, Path(folder) / str(entry.filename))
            except ExportError as exc:
                reasons.append(f"the {entry.suffixes[0]} witness ({how}): "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
                continue
            try:
                return measure_file_floors(entry.default_runtime, artifact, feeds, None, label, model_float64,
                                           summed), ""
            except ArtifactError as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return None, f"the {entry.suffixes[0]} witness ({how}) cannot run in float64 ({why})"
    return None, "; ".join(reasons)


def private_tmp() -> str | None:
    """The folder PRIVATE_TMP names, where it is one (a worker's); else None (the system's temporary folder)."""
    import os

    folder = os.environ.get(PRIVATE_TMP)
    return folder if folder and os.path.isdir(folder) else None


def witness_note(failures: Sequence[str]) -> str:
    """Why a witness measured no floor (`one_witness`'s reasons), a note beside the one saying the floor was not
    checked."""
    return f"A private witness of the model measured no floor of its own: {'; '.join(failures)[:400]}"
