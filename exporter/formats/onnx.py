"""ONNX through either of torch's exporters, checked with onnx.checker; the opset and exporter
recorded are read back from the file, never assumed. Loading runs no code (a protobuf graph)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from exporter.artifacts import META_KEY, Artifact, ArtifactMeta
from exporter.errors import ArtifactError, ExportError, UsageError
from exporter.formats import ExportContext, Format
from exporter.formats.program import DYNAMIC_AXES, accepted_ranges
from exporter.plugin_options import PluginOptions, option

OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}
"""Opsets each exporter really produces (torch 2.11..2.14): dynamo writes 18 whatever it is
asked below that, so asking outside these ranges is refused before any work."""
OPSET_MIN = 7
"""The oldest opset torch's exporters have ever emitted; the exporter-specific floor is checked by validate()."""


OPSET_EVERY_ONNX_KNOWS = 22
"""The newest opset of onnx 1.17, the oldest onnx pyproject.toml admits: an opset up to it needs no look at the
installed onnx (whose import, 0.6 s, would otherwise sit before the model build on every export)."""


def installed_max_opset() -> int:
    """The newest opset the installed onnx package knows (an export asking more cannot be checked)."""
    try:
        import onnx.defs
    except ImportError:  # the export itself will say onnx is missing
        return 10**6
    return int(onnx.defs.onnx_opset_version())


def _beyond_installed_onnx(opset: int) -> str | None:
    """Why `opset` is outside OPSET_MIN and the installed onnx's newest, or None; onnx is imported only to word a
    refusal or for an opset past OPSET_EVERY_ONNX_KNOWS."""
    if OPSET_MIN <= opset <= OPSET_EVERY_ONNX_KNOWS:
        return None
    newest = installed_max_opset()
    if opset < OPSET_MIN:
        return f"must be between {OPSET_MIN} and {newest}, got {opset}"
    if opset <= newest:
        return None
    return f"must be between {OPSET_MIN} and {newest}, got {opset} (the installed onnx knows opsets up to {newest})"


@dataclass(frozen=True)
class OnnxOptions(PluginOptions):
    exporter: str = option("dynamo", flag="--onnx-exporter", choices=tuple(OPSETS),
                           help="dynamo, or torchscript (torch's legacy exporter)")
    opset: int = option(18, flag="--opset", low=OPSET_MIN, check=_beyond_installed_onnx,
                        help=f"ONNX opset (>= {OPSET_MIN})")

    def validate(self) -> None:
        low, high = OPSETS[self.exporter]
        if not isinstance(self.opset, int) or not low <= self.opset <= high:
            raise UsageError(f"The {self.exporter} ONNX exporter writes opsets {low}..{high}, not {self.opset}; "
                             f"choose one in that range" + (" or --onnx-exporter torchscript for older ones"
                                                           if self.exporter == "dynamo" and self.opset < low else ""))


@functools.lru_cache(maxsize=2)
def _read_graph(path: str, stamp: tuple[int, ...]) -> Any:
    import onnx

    return onnx.load(path, load_external_data=False)


def read_graph(path: Path) -> Any:
    """The file's ModelProto without external data, read once while the file stays as it is (an artifact
    check reads opset, metadata and external-data locations; each read of a ResNet costs 0.15 s). Callers
    must not modify it."""
    info = os.stat(path)
    return _read_graph(str(Path(path).resolve()), (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))


def file_opset(path: Path) -> int | None:
    """The default-domain opset the file really declares."""
    model = read_graph(path)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class OnnxFormat(Format):
    name: ClassVar[str] = "onnx"
    default_runtime: ClassVar[str] = "onnxruntime"
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    filename: ClassVar[str] = "model.onnx"
    Options: ClassVar[type[PluginOptions]] = OnnxOptions
    default: ClassVar[bool] = True
    executes: ClassVar[str] = "nothing: a protobuf graph of standard operators, read by onnx and ONNX Runtime"
    executes_code_on_load: ClassVar[bool] = False  # data: a file from the cache or an unsigned folder is re-judged
    overlaps: ClassVar[bool] = True  # the dynamo translation: ~70 % of a cold export, single-threaded Python
    manifest_field_types: ClassVar[dict[str, type]] = {"exporter": str, "opset": int}

    def export(self, ctx: ExportContext, options: OnnxOptions, path: Path) -> Artifact:
        import torch

        options.validate()
        dynamo = options.exporter == "dynamo"
        meta = ctx.new_meta()
        meta.exporter = f"torch.onnx.export(dynamo={dynamo}, opset={options.opset})"
        meta.dynamic_axes = dict(DYNAMIC_AXES) if ctx.dynamic else {}
        kwargs: dict = {}
        model = ctx.built.model
        if dynamo and ctx.dynamic:
            model = ctx.exported_program()  # the same trace as the .pt2 file: one trace, not two
            # and the same bounds: torch.export decided each axis's range tracing the example (review 17: without
            # them the file was judged at a second shape outside its range, and a correct mobilenet_v3_small at 32 px
            # failed as if a size were traced into it)
            meta.dynamic_ranges = accepted_ranges(model)
        elif ctx.dynamic:
            kwargs["dynamic_axes"] = {meta.input_name: {int(a): n for a, n in DYNAMIC_AXES.items()}}
        # dynamo's program is finished in memory (axes named, metadata set, one save): reading back and rewriting
        # the file it had saved cost 0.55 s of the background export's critical path for a ResNet-50; the legacy
        # exporter only writes files, so its output still goes through the file
        if dynamo:
            from exporter.formats.onnx_tables import keep_torchlib_table

            keep_torchlib_table()
        chatter = io.StringIO()
        try:
            with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(chatter), \
                    contextlib.redirect_stderr(chatter):
                warnings.simplefilter("ignore" if dynamo else "always")  # the legacy exporter's: recorded, not shown
                # a user's model's ONNX file and guard 3's witness are one trace (review 34: a model counting its
                # traces made the file clean and the witness noisy): the static dynamo file is exported from a
                # torch.export trace the witness reuses; the legacy exporter's own trace graph is kept as it traces
                # (floor 35: exported from a torch.jit.trace module, its nodes lost the module names)
                user = not getattr(ctx.built.spec, "registered", True)
                traced = traced_once(ctx, model) if dynamo and not ctx.dynamic and user else None
                with legacy_trace_kept(ctx, not dynamo and user):
                    program = torch.onnx.export(
                        model if traced is None else traced, (ctx.example,), None if dynamo else str(path),
                        dynamo=dynamo, external_data=False, input_names=[meta.input_name],
                        output_names=list(meta.output_names), opset_version=options.opset, **kwargs,
                    )
        except Exception as exc:
            raise ExportError(
                f"ONNX export ({options.exporter}) failed for {ctx.built.spec}: "
                f"{export_failure_reason(exc, options.exporter, self.name)}"
            ) from exc
        if not dynamo:  # the legacy exporter traces: a value it read is the example's for every input
            from exporter.formats.torchscript import refuse_traced_reads

            refuse_traced_reads(caught, ctx, "the legacy ONNX exporter (a trace)", "pass --onnx-exporter dynamo")
        if dynamo:
            opsets = program.model.opset_imports
            _require_opset(options, opsets.get("", opsets.get("ai.onnx")))
            if ctx.dynamic:
                _name_program_axes(program.model, meta.input_name)
            program.model.metadata_props.clear()
            program.model.metadata_props[META_KEY] = meta.to_json()
            program.save(str(path), external_data=False)
        else:
            import onnx

            model_proto = onnx.load(str(path))
            _require_opset(options, next((o.version for o in model_proto.opset_import
                                          if o.domain in ("", "ai.onnx")), None))
            del model_proto.metadata_props[:]
            model_proto.metadata_props.add(key=META_KEY, value=meta.to_json())
            onnx.save(model_proto, str(path))
        check_onnx(path)
        # read back here, where onnx is imported already: a background export's receiver then never imports it
        return Artifact(self.name, meta, path=path,
                        facts={"opset": file_opset(path), "companions": external_data_locations(path)})

    def weight_shapes(self, path: Path) -> list[tuple[int, ...]] | None:
        """The shapes of the initializers a node reads (in the graph or a subgraph): an initializer no node reads
        holds no terms of any accumulation, and counted it would lift the floor bound (hunt 8b)."""
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        read = names_read(graph)
        return [tuple(t.dims) for t in graph.initializer if t.name in read]

    def read_meta(self, path: Path) -> ArtifactMeta:
        return read_onnx_meta(path)

    def manifest_fields(self, artifact: Artifact) -> dict:
        assert artifact.path is not None
        opset = artifact.facts["opset"] if "opset" in artifact.facts else file_opset(artifact.path)
        return {"exporter": artifact.meta.exporter, "opset": opset}

    def companion_files(self, path: Path) -> list[Path]:
        return [path.parent / location for location in external_data_locations(path)]

    def check_integrity(self, path: Path, folder: Path) -> None:
        from exporter.fsio import require_inside

        for location in external_data_locations(path):
            require_inside(folder, location, f"{path.name}: external data")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SUMMARY = re.compile(r"^<class '(?:[\w.]+\.)?(\w+)'>: (.+)$", re.MULTILINE)
_OPERATOR = re.compile(r"op='([\w.]+)'")
EXPORT_REASON = 240
"""Characters of torch's own reason kept in the one-line message (the way out follows it)."""


def export_failure_reason(exc: BaseException, exporter: str, format_name: str) -> str:
    """torch's reason an ONNX export failed, in one line with what to do (hunt 28: the dynamo exporter's first line
    is a colour-coded banner, "Failed to convert ... \\x1b[96mThis is step 3/3\\x1b[0m ... Next steps:", which named
    neither the operator it could not translate nor a way out; its "Exception summary" names both)."""
    from exporter.formats import default_formats
    from exporter.messages import library_reason, one_line

    text = _ANSI.sub("", str(exc)).strip()
    summary = _SUMMARY.search(text.partition("## Exception summary")[2])
    if summary:
        operator = _OPERATOR.search(summary[2])
        found = operator and "No ONNX function" in summary[2]
        reason = (f"no ONNX translation of {operator[1]} ({summary[1]})" if found
                  else f"{summary[1]}: {summary[2]}")
        reason = one_line(reason, EXPORT_REASON)
    else:
        reason = library_reason(Exception(text), EXPORT_REASON)
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    rest = " ".join(f"--format {name}" for name in default_formats() if name != format_name)
    return f"{reason}; try --onnx-exporter {other}, or export the other formats alone ({rest})"


def traced_once(ctx: ExportContext, model: Any) -> Any:
    """A user's model traced once as torch.onnx.export's static dynamo export traces it (torch.export, its exporting
    flag raised), exported from that trace and kept for guard 3's witness (exporter/formats/program.py ONNX_TRACES);
    None where the trace fails: torch.onnx.export then traces the model itself."""
    from exporter.formats.program import export_program, onnx_trace_once

    return onnx_trace_once(ctx, "dynamo", lambda: export_program(model, ctx.example, False, str(ctx.built.spec)))


LEGACY_TRACE_HOOK = "_trace_and_get_graph_from_model"
"""The function of torch's legacy ONNX exporter that traces the model (torch.jit._get_trace_graph) and hands its graph
on to become ONNX, looked up in `_create_jit_graph`'s module (torch 2.14: torch/onnx/_internal/torchscript_exporter/
utils.py); a torch without it keeps no trace, and the witness traces the model again (`legacy_trace_kept`)."""
_KEEPING: contextvars.ContextVar[list | None] = contextvars.ContextVar("legacy_trace_keeping", default=None)


@contextlib.contextmanager
def legacy_trace_kept(ctx: ExportContext, keep: bool) -> Iterator[None]:
    """Inside (`keep`), the graph torch's legacy ONNX exporter traces is copied as it is made (`KeptTrace`: before any
    pass turns it into ONNX, its parameters' values as traced) and kept in `ctx.shared[ONNX_TRACES]["legacy"]` for
    guard 3's witness: the file's own trace, never a second one that a model counting its traces makes otherwise
    (floor 35). Kept only where the exporter traced exactly once with the model's one input; else (a torch without
    the hook, a quantized model it exports as a ScriptModule) nothing is kept and the witness traces again."""
    if not keep or not _install_legacy_hook():
        yield
        return
    from exporter.formats.program import ONNX_TRACES

    kept: list = []
    token = _KEEPING.set(kept)
    try:
        yield
    finally:
        _KEEPING.reset(token)
    if len(kept) == 1 and kept[0] is not None:
        ctx.shared.setdefault(ONNX_TRACES, {})["legacy"] = kept[0]


@functools.cache
def _install_legacy_hook() -> bool:
    """Wrap LEGACY_TRACE_HOOK where `_create_jit_graph` calls it (once a process; a pass-through wherever no
    `legacy_trace_kept` is open, in any thread); False where this torch has neither."""
    import importlib

    for name in ("torch.onnx._internal.torchscript_exporter.utils", "torch.onnx.utils"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        caller = getattr(module, "_create_jit_graph", None)
        scope = getattr(caller, "__globals__", None)
        traced = scope.get(LEGACY_TRACE_HOOK) if scope is not None else None
        if not callable(traced):
            continue
        if not getattr(traced, "keeps_trace", False):
            scope[LEGACY_TRACE_HOOK] = _keeping(traced)
        return True
    return False


def _keeping(trace: Any) -> Any:
    @functools.wraps(trace)
    def keeping(model: Any, args: Any) -> Any:
        graph, out = trace(model, args)
        sink = _KEEPING.get()
        if sink is not None:
            sink.append(_kept(graph, model))
        return graph, out

    keeping.keeps_trace = True  # type: ignore[attr-defined]
    return keeping


def _kept(graph: Any, model: Any) -> Any:
    """The trace's copy (`KeptTrace`), or None where it is not the model's one input then its state."""
    import torch

    from exporter.formats.torchscript import KeptTrace

    try:
        state = tuple(t.detach().clone() for t in torch.jit._unique_state_dict(model).values())
        if len(list(graph.inputs())) != len(state) + 1:
            return None
        return KeptTrace(graph.copy(), state)
    except Exception:  # noqa: BLE001 - a torch whose trace this cannot copy: the witness traces again
        return None


def names_read(graph) -> set[str]:
    """Every value name a node of `graph` or of its subgraphs (If, Loop, Scan bodies) takes as an input."""
    import onnx

    read: set[str] = set()
    for node in graph.node:
        read.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                read |= names_read(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    read |= names_read(sub)
    return read


def _require_opset(options: OnnxOptions, written: int | None) -> None:
    if written != options.opset:
        raise ExportError(f"The {options.exporter} ONNX exporter was asked for opset {options.opset} but wrote "
                          f"opset {written}; choose an opset it supports ({OPSETS[options.exporter][0]}.."
                          f"{OPSETS[options.exporter][1]})")


def _name_program_axes(model, input_name: str) -> None:
    """torch.export names dynamic dims s0, s53...: the input's batch/height/width get DYNAMIC_AXES' names wherever a
    shape of dynamo's in-memory model (onnx_ir) holds them (the legacy exporter names them from `dynamic_axes`)."""
    import onnx_ir as ir

    value = next((v for v in model.graph.inputs if v.name == input_name), None)
    if value is None or value.shape is None:
        return
    renames = {}
    for axis, name in DYNAMIC_AXES.items():
        dim = value.shape[int(axis)]
        if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
            renames[dim.value] = name
    values = [*model.graph.inputs, *model.graph.outputs, *(out for node in model.graph for out in node.outputs)]
    for other in values:
        shape = other.shape
        if shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value in renames for d in shape):
            continue
        other.shape = ir.Shape([ir.SymbolicDim(renames[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in renames
                                else d for d in shape],
                               denotations=[shape.get_denotation(i) for i in range(shape.rank())])


def external_data_locations(path: Path) -> list[str]:
    """Every external-data file the graph references, as written in the file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = read_graph(path)
    locations = []
    for tensor in _get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            if location not in locations:
                locations.append(location)
    return locations


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # protobuf parse errors surface under several types
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    opset, newest = file_opset(path), installed_max_opset()
    if opset is not None and opset > newest:  # onnx.checker lets it through; ONNX Runtime fails it in a C++ banner
        raise ArtifactError(f"{path} declares opset {opset}, newer than the installed onnx knows ({newest}); export "
                            f"it again at --opset {newest} or lower, or install an onnx and onnxruntime that know it")


def read_onnx_meta(path: Path) -> ArtifactMeta:
    """Metadata recorded at export, else what the graph itself says (input name and shape)."""

    check_onnx(path)
    model = read_graph(path)
    props = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if META_KEY in props:
        meta = ArtifactMeta.from_json(props[META_KEY], path)
        # a runtime feeds and reads the graph itself, a consumer by position: the record must be the graph's (hunt 37:
        # a file with two outputs listed in the other order passed every check, each output compared by name)
        graph = ([i.name for i in inputs], [o.name for o in model.graph.output])
        if graph != ([meta.input_name], list(meta.output_names)):
            raise ArtifactError(f"{path}: its graph takes {graph[0]} and gives {graph[1]} in that order, but records "
                                f"input {meta.input_name!r} and outputs {list(meta.output_names)}; the file was "
                                "edited after export: export it again")
        return meta
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs; only single-image backbones are supported")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    dynamic = {str(i): (d.dim_param or f"dim{i}") for i, d in enumerate(dims) if not d.HasField("dim_value")}
    return ArtifactMeta(
        input_name=inputs[0].name,
        input_shape=shape,
        output_names=[o.name for o in model.graph.output],
        dynamic_axes=dynamic,
    )
