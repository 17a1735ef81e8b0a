"""TorchScript: the saved file, loaded back with torch.jit.load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError
from exporter.formats.torchscript import refuse_training_file
from exporter.messages import one_line
from verify.runtimes.torch_common import CREATION_OPS, TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


SCRIPTED_RAISE_HINT = ("; a scripted file takes the model's torch.jit.is_scripting() branches (torch's "
                       "parametrizations, weight_norm among them, raise there): export with --trace")
"""Added when a scripted file raises while it runs (sweep 27b: a weight_norm model scripted without an error, and its
file's first run raised torch.jit.Error, which the worker reported as "raised by your model's code")."""
REASON_LIMIT = 120
"""Characters of the program's own error kept: the hint must fit the one-line message (exporter/messages.py)."""


class TorchScriptRuntime(TorchRuntime):
    name = "torchscript"
    formats = ("torchscript",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, dtype = self._target()
        module = load_file(lambda path: torch.jit.load(path, map_location=device), artifact, "torch.jit.load")
        refuse_training_file(module, artifact.path)  # .eval() below must not change what the file computes as loaded
        self.module = module.to(dtype=dtype).eval()
        if dtype == torch.float64:
            created_in_float64_script(self.module)

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from verify.judge.trust import owned

        try:
            return owned(super()._run(array))  # a module may return a buffer that its next call overwrites
        except torch.jit.Error as exc:  # the interpreter's own error, no RuntimeError: call_module lets it through
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = one_line(lines[-1].removeprefix("builtins."), REASON_LIMIT) if lines else type(exc).__name__
            scripted = (self.artifact.meta.exporter if self.artifact is not None else None) == "torch.jit.script"
            raise ArtifactError(f"{self.label} failed on an input of shape {tuple(array.shape)}: the TorchScript "
                                f"program raised {reason}" + (SCRIPTED_RAISE_HINT if scripted else "")) from None


FLOAT32, FLOAT64 = 6, 7
"""torch's ScalarType numbers, as a TorchScript graph holds a dtype argument."""


def created_in_float64_script(module: Any) -> int:
    """Each tensor that a TorchScript file's graphs create in float32 (CREATION_OPS with the dtype argument the
    constant float32: torch.jit.trace bakes `torch.arange(n, dtype=x.dtype)`, `torch.full(..., dtype=x.dtype)` so)
    cast to float64 where it is created, as verify/runtimes/torch_common.py `created_in_float64` does in a .pt2's FX
    graph (review 23): the file's float64 run computes on the float32 run's values. The number of ops changed.

    Sweep 28d: such a traced file had no float64 run where its creation met a float64 tensor in an op that takes one
    dtype (`y @ torch.eye(n, dtype=x.dtype)`: "expected m1 and m2 to have the same dtype"), so no floor and exit 2. A
    float32-only term made there (`torch.full(..., 1e-42, dtype=x.dtype) * 1e21 * 1e21`: 1.0005, not 1.0) stays in
    both runs, never in the file's own floor: `verify compare file.pt correct.onnx` fails it."""
    changed = 0
    for sub in module.modules():  # submodules of one type share their methods: a creation already cast is skipped
        for name in _method_names(sub):
            graph = sub._c._get_method(name).graph
            changed += sum(_cast_after(graph, node) for node in list(graph.nodes()) if _created_float32(node))
    return changed


def _method_names(module: Any) -> list[str]:
    try:
        return list(module._c._method_names())
    except Exception:  # noqa: BLE001 - not a scripted module (a plain nn.Module inside): nothing to rewrite
        return []


def _created_float32(node: Any) -> bool:
    """A creation op whose dtype argument is the constant float32, not yet cast by `_cast_after` (the same op as a
    .pt2's: a trace's float32 copy of a constant tensor, `x.new_tensor(...)`, is a cast, left as it is)."""
    if not node.kind().startswith("aten::") or node.kind().removeprefix("aten::") not in CREATION_OPS:
        return False
    return _dtype(node) == FLOAT32 and not any(_dtype(use.user) == FLOAT64 for use in node.output().uses()
                                               if use.user.kind() == "aten::to")


def _dtype(node: Any) -> Any:
    """A node's dtype argument where it is a constant, else None (none, or one computed at run time)."""
    try:
        return node.namedInput("dtype").toIValue()
    except Exception:  # noqa: BLE001 - no dtype argument, or one that follows the input at run time
        return None


def _cast_after(graph: Any, node: Any) -> int:
    """Insert `aten::to(out, float64)` right after `node` and let every later use of its output read the cast."""
    out, last, args = node.output(), node, []
    for value in (FLOAT64, False, False, None):  # aten::to(self, dtype, non_blocking, copy, memory_format)
        constant = graph.insertConstant(value)
        constant.node().moveAfter(last)
        last = constant.node()
        args.append(constant)
    cast = graph.create("aten::to", [out, *args])
    cast.output().setType(out.type())
    cast.insertAfter(last)
    out.replaceAllUsesAfterNodeWith(cast, cast.output())
    return 1


def takes_no_input(module: Any) -> bool:
    """Whether a TorchScript module's forward takes no input and returns nothing: its schema names `self` alone and
    returns None, as torch.jit.trace keeps a module whose output is its input (an nn.Identity, a folded norm's place).
    It computes nothing from the input and gives nothing back: the layer verdict has nothing of it to re-run (sweep
    28d: `verify export --trace --norm fused --layers` failed its honest file, 20 of resnet18's layers 'could not
    run'). False for anything else, an eager module among them."""
    try:
        schema = module.forward.schema
    except Exception:  # noqa: BLE001 - no scripted forward (an eager module, a ModuleList): not excused
        return False
    return len(schema.arguments) == 1 and len(schema.returns) == 1 and schema.returns[0].type.kind() == "NoneType"
