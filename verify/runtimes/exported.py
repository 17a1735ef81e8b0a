"""torch.export: the saved ExportedProgram, loaded back with `torch.export.load(...).module()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class ExportedProgramRuntime(TorchRuntime):
    name = "exported"
    formats = ("pt2",)
    loads_in_background = False
    """Loaded in the caller when its turn comes. A thread beside the oracle paid while the load took 2.8 s of sympy
    and dataclass decoding; since each shape expression is parsed once (1.1 s), the GIL handoffs it costs the oracle's
    operators outweigh it: a cold ResNet-50 `verify export` measured 17.1 s against 17.4 s with the thread (five
    alternated pairs; warm, two pairs, a wash). verify/pipeline/preload.py keeps the thread for a runtime whose
    load is long and pure Python."""

    def _load(self, artifact: Artifact) -> None:
        from pathlib import Path

        from exporter.formats.pt2 import load_program
        from exporter.serde_speed import remember_sym_exprs, remember_type_hints

        device, dtype = self._target()
        remember_type_hints()  # the deserializer's type hints looked up once per class: 1.8 s -> 1.2 s for ResNet-50
        remember_sym_exprs()  # each shape expression parsed once per load: 2.8 s -> 1.1 s for a dynamic ResNet-50
        # scanned as data first, every torch.load inside forced to weights_only (exporter/formats/pt2.py)
        module = load_file(lambda path: load_program(Path(path)), artifact, "torch.export.load")
        self.module = module.to(device=device, dtype=dtype)  # exported modules have no train/eval switch

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        from verify.judge.trust import owned

        return owned(super()._run(array))  # a module may return a buffer that its next call overwrites


def dynamic_input_axes(module: object) -> list[int]:
    """The axes of a loaded ExportedProgram's input whose size is symbolic (its program takes other sizes there): []
    for a static program, or anything without an FX graph."""
    import torch

    graph = getattr(module, "graph", None)  # a TorchScript module's `graph` is another kind: none of its sizes known
    nodes = graph.nodes if isinstance(graph, torch.fx.Graph) else []
    placeholders = [node for node in nodes if node.op == "placeholder" and "val" in node.meta]
    shape = getattr(placeholders[0].meta["val"], "shape", ()) if placeholders else ()
    return [axis for axis, size in enumerate(shape) if not isinstance(size, int)]
