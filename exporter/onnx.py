"""ONNX export through either of torch's exporters, checked with onnx.checker."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.artifacts import META_KEY, Artifact, ArtifactMeta
from exporter.errors import ArtifactError, ExportError, UsageError

if TYPE_CHECKING:
    import torch

    from exporter.backbones import BuiltModel
    from exporter.export import ExportOptions

ONNX_EXPORTERS = ("dynamo", "torchscript")
DYNAMIC_AXES = {"0": "batch", "2": "height", "3": "width"}


def export_onnx(built: BuiltModel, example: torch.Tensor, meta: ArtifactMeta,
                options: ExportOptions, path: Path) -> Artifact:
    import torch

    if options.onnx_exporter not in ONNX_EXPORTERS:
        raise UsageError(f"Unknown ONNX exporter {options.onnx_exporter!r}; "
                         f"use one of {', '.join(ONNX_EXPORTERS)}")
    dynamo = options.onnx_exporter == "dynamo"
    meta.exporter = f"torch.onnx.export(dynamo={dynamo}, opset={options.opset})"
    meta.dynamic_axes = dict(DYNAMIC_AXES) if options.dynamic else {}
    kwargs: dict = {}
    if options.dynamic and dynamo:
        dim = torch.export.Dim
        kwargs["dynamic_shapes"] = ({int(axis): dim(name) for axis, name in DYNAMIC_AXES.items()},)
    elif options.dynamic:
        kwargs["dynamic_axes"] = {meta.input_name: {int(a): n for a, n in DYNAMIC_AXES.items()}}
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                built.model, (example,), str(path), dynamo=dynamo, external_data=False,
                input_names=[meta.input_name], output_names=list(meta.output_names),
                opset_version=options.opset, **kwargs,
            )
    except Exception as exc:
        raise ExportError(
            f"ONNX export ({options.onnx_exporter}) failed for {built.spec}: {str(exc).splitlines()[0]}"
        ) from exc
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=META_KEY, value=meta.to_json())
    onnx.save(model, str(path))
    check_onnx(path)
    return Artifact("onnx", meta, path=path)


def check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # protobuf parse errors surface under several types
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None


def read_onnx_meta(path: Path) -> ArtifactMeta:
    """Metadata recorded at export, else what the graph itself says (input name and shape)."""
    import onnx

    check_onnx(path)
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY in props:
        return ArtifactMeta.from_json(props[META_KEY], path)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
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
