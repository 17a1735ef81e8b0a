"""What the torch-based runtimes share: device checks, precision scoped to each run, running, dict outputs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from exporter.errors import ArtifactError, SetupError, UsageError
from verify.runtimes import Runtime, RuntimeOptions

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import torch

    from exporter.artifacts import Artifact, ArtifactMeta


TORCH_LOGGER = "torch"
"""The logger every torch module logs under (torch._inductor.package...): quietened while a file loads."""


GUARD_HINT = ("; the exported program's dynamic axes do not take this shape (torch.export traces a batch of one as "
              "two, and a model may then only take batches its reshapes divide): export with --static, or run it at "
              "the sizes it was exported for")
"""Added to a run's failure when an ExportedProgram's shape guard refused the input (a TransformerEncoder exported
with dynamic axes refused its own 1x3x96x96 example: hunt 13a) and the file records no bounds nor a static shape."""


FIXED_FLOAT32_HINT = ("; this file fixes float32 inside (a tensor its trace made from x.dtype, x.new_tensor(...) "
                      "among them, is a float32 constant): no float64 run, so no floor; export it with "
                      "torch.jit.script (--format torchscript without --trace)")
"""Added to a float64 run's dtype mismatch (`expected m1 and m2 to have the same dtype, but got: double != float`): a
saved program keeps a constant its trace made from x.dtype in float32 (hunt 26b). Creations (`torch.arange(n,
dtype=x.dtype)`) run in float64 on their float32 values, in a .pt2 (`created_in_float64`) and, since sweep 28d, in a
traced TorchScript file (verify/runtimes/torchscript.py created_in_float64_script); `y @ x.new_tensor(matrix)` traced
still fails in both."""


def guard_hint(meta: ArtifactMeta | None, shape: tuple[int, ...] | None = None) -> str:
    """What to do when a file's shape guard refused an input, from what the file records: its one shape (a static
    export: pass inputs of it), an input `shape` inside every range it records (a guard torch derived while tracing:
    run it at the traced shape, or export again), its bounded dynamic axes (a dynamic export traced at 32 px takes
    at most 32 px: pass inputs inside them or export at the largest size you deploy), else GUARD_HINT. Before, every
    case was told to "export with --static", also a run that had (hunt 19c); and an input inside the bounds named
    was told to "pass inputs inside those bounds" (hunt 26a: a ViT traced at a batch of two, run at one)."""
    if meta is None or not meta.input_shape:
        return GUARD_HINT
    traced = "x".join(map(str, meta.input_shape))
    if not meta.dynamic_axes:
        return (f"; this file was exported with static axes at {traced} and takes only that shape: pass inputs of "
                f"that shape (--shape {traced}), or export again at the shape you run")
    bounded = meta.bounded_axes()
    if shape is not None and inside_ranges(meta, shape):
        small = [f"{meta.dynamic_axes[str(axis)]} {size} where it traced {meta.input_shape[axis]}"
                 for axis, size in enumerate(shape)
                 if str(axis) in meta.dynamic_axes and size < 2 and meta.input_shape[axis] > 1]  # traced at 1: no claim
        return (f"; this shape is inside the axes' recorded ranges ({bounded or 'unbounded'}), but the file keeps a "
                f"guard torch.export derived tracing at {traced}, which refuses it"
                + (f" ({', '.join(small)}: the trace assumed sizes above 1)" if small else "")
                + f": run it at {traced}'s sizes (--shape {traced}), or export again traced at the shape you run, "
                "or with --static")
    if bounded:
        return (f"; this file was traced at {traced}, and its dynamic axes take {bounded}: pass inputs inside those "
                "bounds, or export it traced at the largest size you deploy")
    return GUARD_HINT + f" (traced at {traced})"


def inside_ranges(meta: ArtifactMeta, shape: tuple[int, ...]) -> bool:
    """Whether `shape` is one the file's record says it takes: its traced size on each static axis, and on each
    dynamic axis inside its recorded range, torch.export's own least (2) read as none (a batch of one is run)."""
    from exporter.artifacts import LEAST_DYNAMIC_SIZE

    if len(shape) != len(meta.input_shape):
        return False
    for axis, (size, traced) in enumerate(zip(shape, meta.input_shape)):
        if str(axis) not in meta.dynamic_axes:
            if size != traced:
                return False
            continue
        least, greatest = (meta.dynamic_ranges.get(str(axis)) or [None, None])
        if (least is not None and least > LEAST_DYNAMIC_SIZE and size < least) or \
                (greatest is not None and size > greatest):
            return False
    return True


def torch_device(device: str) -> torch.device:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("CUDA is not available to torch here (torch.cuda.is_available() is False); run on a "
                         "machine with a CUDA GPU and a CUDA build of torch, or run on cpu")
    return torch.device(device)


def to_numpy_outputs(result: Any, names: list[str]) -> dict[str, np.ndarray]:
    """A dict of tensors as is; a tensor or tuple mapped onto the recorded output names."""
    import torch

    def array(t: torch.Tensor) -> np.ndarray:
        t = t.detach().cpu()
        # numpy has no bfloat16, and reduced-precision outputs are compared in float32 anyway
        # a copy: a model may return a tensor it keeps and overwrites on its next call (hunt 8b)
        return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy().copy()

    return {k: array(t) for k, t in output_tensors(result, names)}


def output_tensors(result: Any, names: list[str]) -> list[tuple[str, Any]]:
    """(name, tensor) of a model's result as `to_numpy_outputs` names them: a dict's keys; a tensor or a tuple's by
    the recorded output names where they fit, else output0, output1, ..."""
    if isinstance(result, dict):
        return _tensors(result.values(), list(result))
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    _tensors(tensors, [f"output{i}" for i in range(len(tensors))], names)
    keys = names if len(names) == len(tensors) else [f"output{i}" for i in range(len(tensors))]
    return list(zip(keys, tensors))


def _tensors(values: Any, names: list[str], recorded: list[str] | None = None) -> list[tuple[str, Any]]:
    """(name, value) pairs, each value a tensor; anything else (a nested tuple, a number, None) is refused in one
    line: outputs are compared tensor by tensor. Where the model's own run recorded another count of outputs
    (`recorded`), the line says so: the run computes another function than the model (a scripted branch)."""
    import torch

    pairs = list(zip(names, values))
    for name, value in pairs:
        if not isinstance(value, torch.Tensor):
            if recorded and len(recorded) != len(pairs):
                raise ArtifactError(
                    f"Output {name!r} is a {type(value).__name__}, not a tensor: this run returns {len(pairs)} values "
                    f"where the model returned {len(recorded)} ({', '.join(recorded)}); a scripted model takes its "
                    "`torch.jit.is_scripting()` branches (torchvision's GoogLeNet returns a tuple with None there): "
                    "export with --trace, or return the same tensors on both paths")
            raise ArtifactError(f"Output {name!r} is a {type(value).__name__}, not a tensor; the model must return a "
                                "tensor, a tuple or list of tensors, or a dict of them")
    return pairs


def call_module(module: Any, x: torch.Tensor, label: str, meta: ArtifactMeta | None = None) -> Any:
    """Run a torch module without autograd; its failures (wrong channels, too small an input,
    out of memory) become one-line ArtifactErrors. A module that changes torch's float32 precision settings while
    it runs (`torch.set_float32_matmul_precision("medium")` in its forward) is refused, the settings put back: its
    float32 runs, and the floor measured from them, would round at TF32 or BF16 (found by hunt 8b). An exported
    program's guard that refuses the input's shape raises AssertionError ('Guard failed: x.size()[2] <= 32'): the
    file's failure too, not an "unexpected" one to report (hunt 10c), with what the file's `meta` says it takes."""
    import torch

    from exporter.torch_state import precision_kept

    try:
        with precision_kept(label, ArtifactError), torch.inference_mode():
            return module(x)
    except (RuntimeError, AssertionError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        hint = guard_hint(meta, tuple(x.shape)) if reason.startswith("Guard failed") else ""
        if x.dtype == torch.float64 and "dtype" in reason.lower() and ("double" in reason.lower()):
            hint = FIXED_FLOAT32_HINT
        raise ArtifactError(f"{label} failed on an input of shape {tuple(x.shape)}: {reason}{hint}") from None


CREATION_OPS = ("arange", "full", "zeros", "ones", "empty", "scalar_tensor", "eye", "linspace", "new_zeros",
                "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like", "empty_like")
"""Graph ops that create a tensor of the dtype in their keyword: torch.export records `torch.arange(n, dtype=x.dtype)`
or `x.new_zeros(...)` with the trace's float32 fixed there, and the file's float64 run failed (`expected m1 and m2 to
have the same dtype`, hunt 26b). A cast (`_to_copy`, `.float()`) is left alone: it is the model's own rounding."""


def created_in_float64(module: Any) -> int:
    """Each float32 tensor `module`'s graphs create (CREATION_OPS) cast to float64 as it is created: the float64 run
    then computes on it as the model's own float64 run does on what it creates from x.dtype, and its values are the
    float32 run's, exactly (an integer arange, zeros, ones: the model's own float64 values, bit for bit). The number of
    ops changed. A module without an FX graph (TorchScript) as is.

    Review 23: the creation itself was made in float64, so its values could differ from the float32 run's: a `.pt2`
    whose `torch.full(..., 1e-42, dtype=torch.float32) * 1e21 * 1e21` is 1.0005 in float32 (a subnormal rounded) and
    1.0 in float64 scaled one channel by 1.0005 in its float32 run only; its own floor took that in, and `verify
    compare file.pt2 correct.onnx` said "all 2 pairs agree ... 1.0x the float32 floor", exit 0."""
    import torch

    changed = 0
    for sub in module.modules() if isinstance(module, torch.nn.Module) else []:
        if not isinstance(sub, torch.fx.GraphModule):
            continue
        created = [node for node in sub.graph.nodes if node.op == "call_function" and node.kwargs.get("dtype") ==
                   torch.float32 and getattr(getattr(node.target, "_overloadpacket", node.target), "__name__", "")
                   in CREATION_OPS]
        for node in created:
            with sub.graph.inserting_after(node):
                cast = sub.graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": torch.float64})
            node.replace_all_uses_with(cast, delete_user_cb=lambda user, cast=cast: user is not cast)
        if created:
            sub.recompile()
            changed += len(created)
    return changed


def load_file(load: Callable[[str], Any], artifact: Artifact, how: str) -> Any:
    """Load a saved torch program with `load(path)`, its deprecation chatter silenced and any failure one
    ArtifactError line naming the file and `how` it was loaded."""
    import logging
    import warnings

    logger = logging.getLogger(TORCH_LOGGER)
    level = logger.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logger.setLevel(logging.ERROR)  # torch logs its loaders' warnings too (an AOTI package "outdated")
            return load(str(artifact.path))
    except Exception as exc:
        raise ArtifactError(f"{artifact.path} cannot be loaded by {how}: "
                            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from None
    finally:
        logger.setLevel(level)


class TorchRuntime(Runtime):
    """Base of the runtimes that hold a torch module: subclasses set `self.module` in `_load`.

    Each run sets its precision (TF32 flags, autocast) and restores every global torch setting after
    it (`verify.judge.precision.precision_scope`); at bf16/fp16 it also confirms, op by op, that the
    convolutions and matmuls really ran in that dtype, and fails if not."""

    supports_float64 = True
    precision_observable: ClassVar[bool] = True
    """Ops run through the torch dispatcher, where `PrecisionProbe` sees them. A runtime of compiled
    kernels (AOTInductor) sets False and must confirm its precision itself."""

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        from verify.judge.precision import check_precision

        super().__init__(options)
        check_precision(self.options.precision, self.options.device, self.options.tf32)
        if self.options.dtype != "float32" and self.options.precision != "fp32":
            raise UsageError(f"--precision {self.options.precision} applies to float32 runs, "
                             f"not to a {self.options.dtype} one")

    def _label_details(self) -> list[str]:
        details = super()._label_details()
        if self.options.precision != "fp32":
            details.append(self.options.precision)
        return details

    def running_on(self) -> str:
        return f"torch {self.options.device}"

    def load(self, artifact: Artifact) -> Runtime:
        super().load(artifact)
        if self.options.dtype == "float64" and artifact.built is None:  # a saved program: in float64 where it can
            created_in_float64(self.module)
        return self

    def _target(self) -> tuple[torch.device, torch.dtype]:
        import torch

        self.device = torch_device(self.options.device)
        self.dtype = getattr(torch, self.options.dtype)
        return self.device, self.dtype

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from verify.judge.precision import AUTOCAST_DTYPES, PrecisionProbe, precision_scope

        precision = self.options.precision
        x = torch.from_numpy(array).to(device=self.device, dtype=self.dtype)
        probe = PrecisionProbe()
        watch = probe.watch() if precision in AUTOCAST_DTYPES and self.precision_observable \
            else contextlib.nullcontext()
        with precision_scope(precision, self.options.device, self.options.tf32), watch:
            result = call_module(self.module, x, self.label, self.artifact.meta)
        if precision in AUTOCAST_DTYPES and self.precision_observable:
            probe.check(precision, self.label)
        return to_numpy_outputs(result, self.artifact.meta.output_names)


def unjudged_methods(module: Any) -> list[str]:
    """A TorchScript module's own methods that its forward neither is nor calls (`@torch.jit.export def infer`, a
    `deploy()` that changes what forward reads): a consumer may call them, and only forward is run and judged (hunt
    40). Torch's own names (`__setstate__`, run by torch.jit.load) are left out; [] for anything not scripted."""
    try:
        names = list(module._c._method_names())
    except Exception:  # noqa: BLE001 - not a scripted module (an eager model, an exported program): forward alone
        return []
    called, todo = {"forward"}, ["forward"]
    while todo:  # the methods forward reaches on the module itself, through any branch
        graph = module._c._get_method(todo.pop()).graph
        own = next(iter(graph.inputs()))
        for node in graph.findAllNodes("prim::CallMethod", True):
            name = node.s("name")
            if next(iter(node.inputs())) is own and name not in called and name in names:
                called.add(name)
                todo.append(name)
    return sorted(name for name in names if name not in called and not name.startswith("__"))


def unjudged_methods_note(file: str, module: Any) -> list[str]:
    """The report's one note naming `unjudged_methods` of the file `file` ([] where it has none)."""
    others = unjudged_methods(module)
    if not others:
        return []
    return [f"{file} also has method{'s' * (len(others) > 1)} {', '.join(others)} (not run: only forward is judged)"]
