"""ONNX Runtime, CPU or CUDA execution provider, with a chosen graph optimisation level."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.errors import ArtifactError, SetupError, UsageError
from exporter.messages import one_line
from exporter.plugin_options import PluginOptions, option
from verify.runtimes import Runtime, RuntimeOptions

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
DEFAULT_OPT_LEVEL = "all"
FATAL_ONLY = 4
"""ONNX Runtime's log severity FATAL: at ERROR (3) a failed load also prints a coloured log line of its own."""
ORT_PREFIX = r"^.*\[ONNXRuntimeError\] : \d+ : \w+ : |^Load model from .*? failed:\s*"
"""What precedes ONNX Runtime's reason: its error code, and on a load the path (the tool's line names it already)."""
CPP_PLACE = re.compile(r"(?:(?<=\s)|(?<=:)|^)\S*\.(?:cc|cpp|cxx|h|hpp):\d+\s+")
"""A C++ source file and line ONNX Runtime puts before a reason, at its start or after "failed:" / "Message:"."""
CPP_SIGNATURE = re.compile(r"(?:[\w:<>*&,~]+ )*?~?[\w<>]+(?:::~?[\w<>]+)+\(")
"""The C++ function (with its return type and namespaces) that follows the file and line, up to its opening
parenthesis: the arguments, parentheses nested, are skipped by counting (`_without_cpp_places`)."""
ORT_BOILERPLATE = re.compile(r"only \*guarantees\* support|may change before next ONNX release")
"""Sentences of ONNX Runtime's that disclaim rather than say what it refused: dropped, so the line keeps its reason."""
REASON_LIMIT = 200
"""Characters of ONNX Runtime's reason in a load failure's line, so that what to do still fits on it."""
LOAD_ADVICE = ("export the model again in this environment (verify export), or run the file with the onnxruntime "
               "it was made for")
"""What to do about a file ONNX Runtime refuses: the reason says what it refused."""
SPREAD_LEVELS = ("disable", "basic")
"""The other levels whose spread estimates the float32 floor of an ONNX file alone."""


def torch_threads() -> int | None:
    """Torch's thread count where this process has imported torch, else None (ONNX Runtime's default). ONNX Runtime
    follows it so that this process's runs share one budget: while the background export's child holds a core
    (verify/pipeline/overlap.py) torch runs on one thread fewer, and two spinning ORT threads beside the child
    stalled each other as torch's did."""
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _without_cpp_places(line: str) -> str:
    """`line` with each C++ source place ONNX Runtime nests in it (`/onnxruntime_src/...h:46 void ns::f(...) `) cut."""
    out, at = [], 0
    for place in CPP_PLACE.finditer(line):
        if place.start() < at:
            continue
        out.append(line[at:place.start()])
        at = place.end()
        signature = CPP_SIGNATURE.match(line, at)
        if signature:
            depth, end = 1, signature.end()
            while end < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            if not depth:
                at = end + (len(" const") if line.startswith(" const", end) else 0)
                at += len(line[at:]) - len(line[at:].lstrip())
    return "".join(out) + line[at:]


def ort_reason(exc: Exception) -> str:
    """ONNX Runtime's reason for a failure in one line, without the error codes, the path and the C++ source places
    (file, line and function signature) it nests in front of it."""
    line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    previous = None
    while previous != line:
        previous, line = line, re.sub(ORT_PREFIX, "", line, count=1)
    line = _without_cpp_places(line).strip() or previous
    return " ".join(s for s in re.split(r"(?<=\.)\s+", line) if not ORT_BOILERPLATE.search(s)) or line


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    formats = ("onnx",)
    precisions = ("fp32", "tf32")  # the exported float32 graph as it is; use_tf32 on CUDA
    runs_natively = True
    float64_reference = ("verify.runtimes.onnx_reference", "OnnxReference")  # no float64 Conv in its CPU provider

    @dataclass(frozen=True)
    class Options(PluginOptions):
        opt_level: str = option(DEFAULT_OPT_LEVEL, flag="--ort-opt-level", choices=tuple(OPT_LEVELS),
                                help="ONNX Runtime graph optimisation level")

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        from verify.judge.precision import check_precision

        super().__init__(options)
        check_precision(self.options.precision, self.options.device, self.options.tf32)
        if self.options.precision in ("bf16", "fp16"):
            # ORT runs each node in its graph's dtypes: a float32 graph stays float32, and a run at a
            # precision other than the one asked must never count as a pass
            raise UsageError(f"ONNX Runtime runs the exported float32 graph as it is; it cannot run it at "
                             f"{self.options.precision}. Verify ONNX Runtime at fp32 (or tf32 on CUDA), "
                             f"and the torch runtimes at {self.options.precision}")

    def _label_details(self) -> list[str]:
        details = super()._label_details()
        if self.options.precision != "fp32":
            details.append(self.options.precision)
        level = self.options.of(OnnxRuntime).opt_level
        if level != DEFAULT_OPT_LEVEL:
            details.append(f"opt={level}")
        return details

    def running_on(self) -> str:
        return self.session.get_providers()[0]

    def alternatives(self) -> list[RuntimeOptions]:
        level = self.options.of(OnnxRuntime).opt_level
        return [self.options.replacing(OnnxRuntime, opt_level=other) for other in SPREAD_LEVELS if other != level]

    def _load(self, artifact: Artifact) -> None:
        import onnxruntime as ort

        if self.options.dtype != "float32":
            raise UsageError("ONNX Runtime runs the exported float32 graph only")
        wanted = PROVIDERS[self.options.device]
        if wanted not in ort.get_available_providers():
            what = "CUDA is not available to" if self.options.device == "cuda" else f"{wanted} is missing from"
            raise SetupError(f"{what} ONNX Runtime here (providers: {', '.join(ort.get_available_providers())});"
                             " install onnxruntime-gpu on a machine with CUDA, or run on cpu")
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                           OPT_LEVELS[self.options.of(OnnxRuntime).opt_level])
        session_options.log_severity_level = FATAL_ONLY  # a failure is the exception's one line, never a log too
        threads = torch_threads()
        if threads and self.options.device == "cpu":
            session_options.intra_op_num_threads = threads
        providers: list = [wanted]
        if self.options.device == "cuda":
            tf32 = True if self.options.precision == "tf32" else self.options.tf32
            cuda_options = {} if tf32 is None else {"use_tf32": int(tf32)}
            providers = [(wanted, cuda_options), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(artifact.path), session_options, providers=providers)
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime {ort.__version__} cannot load {artifact.path}: "
                                f"{one_line(ort_reason(exc), REASON_LIMIT).rstrip('.')}; "
                                f"{LOAD_ADVICE}") from None
        active = self.session.get_providers()
        if active[0] != wanted:  # ORT falls back to CPU with nothing but a log line
            raise SetupError(f"ONNX Runtime was asked for {wanted} but runs on {active[0]}; "
                             "check the CUDA and cuDNN libraries that onnxruntime-gpu needs")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        try:
            results = self.session.run(None, {self.input_name: array})
        except Exception as exc:
            raise ArtifactError(f"ONNX Runtime failed to run {self.artifact.path} on input "
                                f"{array.shape}: {ort_reason(exc)}") from None
        return dict(zip(self.output_names, results))
