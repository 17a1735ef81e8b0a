"""Where weights come from: `synthetic` (seeded, calibrated), `imagenet` (torchvision's cache)
or a file. Every source yields the classifier's state dict, so every norm variant and view of a
backbone loads exactly the same numbers."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from exporter.errors import SetupError, UsageError
from exporter.fsio import path_kind, two_zip_directories
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")
"""`.ckpt`: what PyTorch Lightning's ModelCheckpoint writes (a torch.save archive, read the same way)."""
WRAPPER_PREFIXES = ("module", "backbone", "body", "fpn")
"""First key components the checkpoint split reads itself; any other one that every key shares is a wrapper's."""
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
"""Where training scripts keep the weights' exponential moving average: timm, torchvision's references, others."""
# Synthetic calibration: a fixed batch independent of the verification input, so weights
# depend on (backbone, seed) alone.
CALIBRATION_SHAPE = (8, 3, 128, 128)
CALIBRATION_PASSES = 2
GAMMA_RANGE = (0.5, 1.5)
BRANCH_END_GAMMA_RANGE = (0.05, 0.3)
"""The norm that ends a residual branch gets a small gamma, as training leaves it."""
SYNTHETIC_DIGESTS = Path(__file__).with_name("synthetic_digests.json")
"""The committed sha256 (`state_dict_sha256`) of the synthetic weights per backbone and seed, written by
`python bench/synthetic_digests.py`: a copy read from the cache is used only when its tensors hash to this, so the
copy is proven, never trusted (README, the cache's threat model)."""
DIGESTS_SCHEMA = "backbone-verify/synthetic-digests"
COPY_HEADER_BYTES = 1 << 20
"""What a copy may hold beyond its tensors' bytes (the safetensors header: ~100 bytes a tensor); a larger file is
refused unread."""


@dataclass
class Weights:
    source: str
    state_dict: dict[str, torch.Tensor]
    """Classifier keys (`conv1.weight`, `layer1.0.bn1.running_var`, ...); `fc.*` may be absent."""
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Weights for parts outside the classifier, e.g. `fpn` from a detection checkpoint."""
    digest: str | None = field(default=None, repr=False, compare=False)
    """The sha256 of `state_dict` as it was handed out (synthetic weights: each caller's own copy of the cached values
    the digest was taken of, once); None: taken again at each use. A caller that edits its copy in place keeps a
    stale digest: weights meant to change are a new Weights."""

    @property
    def sha256(self) -> str:
        """Of every tensor as it is now. Not remembered for a user's model, whose module may write its buffers
        through `.data` or a numpy view, which torch does not count as a change (review of session 27)."""
        if self.digest is not None:
            return self.digest
        return state_dict_sha256({**self.state_dict, **{f"{k}.{n}": t for k, sd in self.extra.items()
                                                        for n, t in sd.items()}})


WEIGHT_SOURCES: Registry[Callable[[str, int], Weights]] = Registry("weights source")


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Of each tensor's values: a conjugate or negative view is resolved first (the raw bytes of a view are not its
    values, and viewing them as bytes failed: a model holding `fft(w).conj()` could not be verified); a tensor
    without plain data (meta, sparse) is a one-line UsageError naming it."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if tensor.device.type == "meta" or tensor.layout != torch.strided:
            why = "a meta tensor (a shape without data)" if tensor.device.type == "meta" else \
                f"a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
            raise UsageError(f"The weights hold {str(key)[:80]}, {why}: it has no values to take a digest of; give "
                             "every parameter and buffer dense data (or drop it) before the model is verified")
        tensor = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # the raw bytes: numpy has no bfloat16 or float8 (a bf16 checkpoint ended the export with a TypeError)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # hashed in place, not copied first
    return digest.hexdigest()


def load_weights(source: str, backbone: str, seed: int = 0) -> Weights:
    """Resolve `synthetic`, `imagenet` or a path to a `.pt`/`.pth`/`.safetensors` file."""
    if source in WEIGHT_SOURCES:
        return WEIGHT_SOURCES.get(source)(backbone, seed)
    if source.endswith(WEIGHT_FILE_SUFFIXES) or "/" in source or path_kind(Path(source)) != "missing":
        return classifier_keys(load_weights_file(Path(source)), backbone)
    raise UsageError(
        f"Unknown weights {source!r}; use one of {', '.join(WEIGHT_SOURCES)} or a "
        f"{'/'.join(WEIGHT_FILE_SUFFIXES)} file path"
    )


CALIBRATION_THREADS = 1
"""Torch threads for the calibration passes: their BatchNorm statistics depend on how each convolution splits its
sums across threads, so one fixed count makes the same seed give the same weights bits on any thread count
(measured: resnet50 calibrated on 1 and on 2 threads gave two weights digests, and a cache keyed on the digest
missed whenever a run's thread count differed from the one before)."""


_Proven = TypeVar("_Proven")


class WeightsStore(Protocol):
    """Where copies of synthetic weights are kept, by their digest (verify/cache.py's Cache, under its rules)."""

    def read_weights(self, sha: str, max_bytes: int, prove: Callable[[bytes], _Proven | None]) -> _Proven | None:
        """`prove(bytes of the copy)`, or None when there is none or `prove` refuses it."""

    def store_weights(self, sha: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Keep the bytes of `chunks` as the copy of the weights whose digest is `sha` (atomically; never an error)."""


_STORE: ContextVar[WeightsStore | None] = ContextVar("weights_store", default=None)


@contextlib.contextmanager
def weights_store(store: WeightsStore | None) -> Iterator[None]:
    """Synthetic weights built inside are read from `store` when it holds a proven copy, and a copy is kept there
    when they are computed (None: computed, nothing read or kept)."""
    token = _STORE.set(store)
    try:
        yield
    finally:
        _STORE.reset(token)


@lru_cache(maxsize=1)
def committed_digests() -> dict[tuple[str, int], tuple[str, int]]:
    """(backbone, seed) -> (sha256, bytes of its tensors) from SYNTHETIC_DIGESTS; empty without the file."""
    import json
    import re

    try:
        table = json.loads(SYNTHETIC_DIGESTS.read_text())
        if table["schema"] != DIGESTS_SCHEMA:
            raise ValueError(table["schema"])
        digests = {(backbone, int(seed)): (entry["sha256"], int(entry["bytes"]))
                   for backbone, seeds in table["weights"].items() for seed, entry in seeds.items()}
        if not all(re.fullmatch(r"[0-9a-f]{64}", sha) and size > 0 for sha, size in digests.values()):
            raise ValueError("not a sha256 and a size")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SetupError(f"Cannot read {SYNTHETIC_DIGESTS}: {exc.strerror}; check the installation") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SetupError(f"{SYNTHETIC_DIGESTS} is not a {DIGESTS_SCHEMA} table; write it again with "
                         "`python bench/synthetic_digests.py`") from None
    return digests


def _proven_copy(data: bytes, sha: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a copy read from the cache when their digest is `sha`, else None (whatever the bytes are)."""
    from safetensors.torch import load

    try:
        state = load(data)
        return state if state_dict_sha256(state) == sha else None
    except Exception:  # noqa: BLE001 - bytes anyone may have written: what does not parse is not the copy
        return None


_SYNTHETIC_LOCK = threading.Lock()
"""A seeded init and its calibration use torch's global RNG and thread count: two at once (library calls from
threads) interleave and give neither seed's weights (found by hunt 8c)."""


@WEIGHT_SOURCES.register("synthetic")
def synthetic_weights(backbone: str, seed: int) -> Weights:
    with _SYNTHETIC_LOCK:
        state_dict, digest = _synthetic_state_dict(backbone, seed)
        # a copy per caller: the cached tensors the digest is of never leave this module (a caller's in-place edit
        # reached every later build while the digest named the values before it: review 15; a clone of ResNet-50's
        # costs 0.026 s, a hash 0.098 s)
        return Weights(f"synthetic:{seed}", {k: v.clone() for k, v in state_dict.items()}, digest=digest)


@lru_cache(maxsize=4)  # a matrix worker keeps the last four backbones' weights, not more
def _synthetic_state_dict(backbone: str, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of `_computed_state_dict`, and their digest. With a `weights_store` and a committed digest for
    (backbone, seed), a copy in the store whose tensors hash to it is used instead (reading and hashing it: 0.2 s
    for resnet50 against about 1 s computing); weights computed here that hash to it are kept there. A torch whose
    weights differ from the table (another version) computes them every time and keeps nothing."""
    store = _STORE.get()
    committed = committed_digests().get((backbone, seed)) if store is not None else None
    if store is not None and committed is not None:
        sha, size = committed
        copy = store.read_weights(sha, size + COPY_HEADER_BYTES, lambda data: _proven_copy(data, sha))
        if copy is not None:
            return copy, sha
    state_dict = _computed_state_dict(backbone, seed)
    digest = state_dict_sha256(state_dict)
    if store is not None and committed is not None and digest == committed[0]:
        chunks = _safetensors_chunks(state_dict)
        if chunks is not None:
            store.store_weights(digest, chunks)
    return state_dict, digest


SAFETENSORS_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _safetensors_chunks(state_dict: dict[str, torch.Tensor]) -> list[bytes | memoryview] | None:
    """`state_dict` in the safetensors layout (a JSON header, then every tensor's bytes in its order), as views of
    the tensors themselves: `safetensors.torch.save` builds the whole file in memory first (0.1 s of a cold run's
    critical path for resnet50). Read back by safetensors' own parser and proven by the digest; None for a dtype
    the layout has no name for (no copy kept)."""
    import json

    import torch

    header, offset = {}, 0
    for key, tensor in state_dict.items():
        size, dtype = tensor.numel() * tensor.element_size(), str(tensor.dtype).removeprefix("torch.")
        if dtype not in SAFETENSORS_DTYPES:
            return None
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(tensor.shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return [len(text).to_bytes(8, "little"), text, *(
        memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()) for t in state_dict.values())]


def _computed_state_dict(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded init of the classifier (torchvision's own norms), then BatchNorm statistics calibrated
    by train-mode passes.

    Conv output channels get log-uniform scales and BN affines are randomised, so running
    variances span five orders of magnitude as in a trained network; that is what makes
    FrozenBN's eps (0 vs 1e-5) matter as it does with real weights. The norm that ends each
    residual branch (the family's hint) gets a small gamma, as training leaves it: without that a
    random ResNet-50 amplifies float32 rounding 25x more than a trained one (measured: layer4 error
    vs float64 7.6e-5 relative instead of 2.2e-6; trained ImageNet weights give ~3e-6).
    """
    import torch

    with torch.random.fork_rng(devices=[]):  # a library caller's global RNG is its own, cache hit or miss (determ 47)
        return _seeded_state_dict(backbone, seed)


def _seeded_state_dict(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    """`_computed_state_dict`'s work, in torch's global RNG seeded from `seed` (the init, and a classifier's dropout
    in the calibration's train-mode passes, draw from it)."""
    import torch
    from torch import nn

    from exporter.backbones import build_classifier, family_of

    torch.manual_seed(seed)
    model = build_classifier(backbone, None)
    gen = torch.Generator().manual_seed(seed)
    family = family_of(backbone)
    if family.prepare_synthetic is not None:
        family.prepare_synthetic(model, gen)
    branch_ends = {id(m) for m in family.branch_end_norms(model)}
    momenta = {}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                scale = 10 ** (torch.rand(module.out_channels, generator=gen) * 1.5 - 1.0)
                module.weight.mul_(scale.view(-1, 1, 1, 1))
            elif isinstance(module, nn.BatchNorm2d):
                low, high = BRANCH_END_GAMMA_RANGE if id(module) in branch_ends else GAMMA_RANGE
                module.weight.uniform_(low, high, generator=gen)
                module.bias.normal_(0.0, 0.2, generator=gen)
                module.reset_running_stats()
                momenta[module] = module.momentum
                module.momentum = None  # cumulative average over the calibration passes
        model.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(CALIBRATION_THREADS)
        try:
            for _ in range(CALIBRATION_PASSES):
                model(torch.randn(CALIBRATION_SHAPE, generator=gen))
        finally:
            torch.set_num_threads(threads)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.eval()
    # the model is dropped here, so its tensors are this cache's alone: no copy (each caller gets one, above)
    return {k: v.detach() for k, v in model.state_dict().items()}


@WEIGHT_SOURCES.register("imagenet")
def imagenet_weights(backbone: str, seed: int) -> Weights:
    """torchvision's IMAGENET1K_V1 weights (what detection models use as `weights_backbone`),
    read from the local torch hub cache only: this tool never downloads."""
    import torch
    import torchvision

    try:
        entry = torchvision.models.get_model_weights(backbone)["IMAGENET1K_V1"]
    except (KeyError, ValueError):
        raise UsageError(f"torchvision has no IMAGENET1K_V1 weights for {backbone}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    kind = path_kind(path)
    if kind is not None:
        where = "not in the local cache" if kind == "missing" else f"not a file in the local cache ({kind} there)"
        raise SetupError(
            f"ImageNet weights for {backbone} are {where} ({path}); fetch them where "
            f"there is internet with `python -c \"import torchvision; torchvision.models.{backbone}"
            f"(weights='IMAGENET1K_V1')\"` and copy {path.name} there, or pass --weights FILE"
        )
    weights = classifier_keys(load_weights_file(path), backbone)
    weights.source = f"imagenet:{path.name}"
    return weights


def load_weights_file(path: Path) -> Weights:
    """A classifier or detection checkpoint; never unpickled beyond tensors (`weights_only`)."""
    import warnings

    import torch

    from exporter.fsio import require_regular_file
    from exporter.messages import library_reason

    require_regular_file(path, "Weights file", weights_in_folder(path))
    if path.suffix not in WEIGHT_FILE_SUFFIXES:
        raise UsageError(f"Weights file {path} must end in {', '.join(WEIGHT_FILE_SUFFIXES)}{suffix_hint(path)}")
    if path.stat().st_size == 0:
        raise UsageError(f"Weights file {path} is an empty file (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"Cannot read weights file {path}: it is not a valid .safetensors file "
                             f"({library_reason(exc)})") from None
    else:
        with open(path, "rb") as handle:
            start = handle.read(4)
        if not (start.startswith(b"PK\x03\x04") or start[:1] == b"\x80"):  # torch.save's zip, or its legacy pickle
            raise UsageError(f"Cannot read weights file {path}: it is not a PyTorch checkpoint (torch.save writes "
                             "a zip archive); pass a state dict saved with torch.save, or a .safetensors file")
        if start.startswith(b"PK"):
            require_unexpanded_archive(path)
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
                warnings.simplefilter("ignore")
                raw = load_tensors(path)
        except Exception as exc:  # torch raises many types for a bad or unsafe file
            raise UsageError(f"Cannot read weights file {path}: it {_checkpoint_problem(exc)}") from None
    raw = model_state(raw, path)
    if not isinstance(raw, dict):
        raise UsageError(f"Weights file {path} holds a {type(raw).__name__}, not a state dict of tensors")
    others = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    unnamed = [repr(k) for k in raw if not isinstance(k, str)]
    if others or unnamed or not raw:
        detail = (f"{len(others)} of its {len(raw)} entries are not tensors, e.g. {others[0][:60]!r}" if others
                  else f"{len(unnamed)} of its keys are not names, e.g. {unnamed[0][:60]}" if unnamed
                  else "it is empty")
        raise UsageError(f"Weights file {path} does not hold a state dict of tensors ({detail})")
    require_plain_numbers(raw, f"Weights file {path}")
    return Weights(f"file:{path.name}", *split_checkpoint(without_wrapper_prefix(raw), f"Weights file {path}"))


def load_tensors(path: Path) -> object:
    """`torch.load(weights_only=True)`, which also takes the training script's `argparse.Namespace` that torchvision's
    reference scripts save beside the model ({"model", "optimizer", "lr_scheduler", "args", "epoch"}): it was refused
    as code ("it needs argparse.Namespace"), though unpickling one only sets attributes, themselves held to the same
    rules."""
    import argparse

    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def weights_in_folder(path: Path) -> str:
    """For a folder given as weights (a Hugging Face hub snapshot holds model.safetensors beside config.json): the
    hint naming the weights file in it to pass instead; empty for anything else."""
    import itertools

    if path_kind(path) != "a directory":
        return ""
    try:
        names = sorted(entry.name for entry in itertools.islice(path.iterdir(), 1000)
                       if entry.name.endswith(WEIGHT_FILE_SUFFIXES) and path_kind(entry) is None)
    except OSError:
        return ""
    if not names:
        return ""
    best = next((name for name in ("model.safetensors", "pytorch_model.bin") if name in names), names[0])
    return f"; pass the weights file in it, e.g. --weights {path / best}"


def suffix_hint(path: Path) -> str:
    """What to pass instead of a file this tool does not read by its suffix; empty when nothing better is known."""
    if path.suffix != ".bin":
        return ""
    beside = path.with_name("model.safetensors")
    instead = f"pass {beside} beside it" if path_kind(beside) is None else "save its state dict as .safetensors"
    return f" (for a Hugging Face pytorch_model.bin: {instead}, or copy it to a .pt name)"


def model_state(raw: object, path: Path) -> object:
    """The model's state dict inside a training checkpoint (`state_dict`, `model`), or its EMA copy when that is the
    only one it holds. One holding both (timm's `state_dict_ema`, torchvision's references' `model_ema`) is refused:
    conventions differ on which one loads (timm's load_checkpoint takes the EMA), and the main one used to be taken
    silently while the EMA was the one deployed."""
    if not isinstance(raw, dict):
        return raw
    emas = [key for key in EMA_KEYS if isinstance(raw.get(key), dict)]
    mains = [key for key in ("state_dict", "model") if isinstance(raw.get(key), dict)]
    if emas and mains:
        raise UsageError(f"Weights file {path} holds two sets of weights, {mains[0]!r} and its EMA {emas[0]!r}: "
                         f"save the one you deploy alone, e.g. torch.save(checkpoint[{emas[0]!r}], 'ema.pt'), and "
                         "pass that file")
    if emas:
        if len(emas) > 1:
            raise UsageError(f"Weights file {path} holds {len(emas)} EMA copies ({', '.join(map(repr, emas))}): "
                             "save the one you deploy alone with torch.save and pass that file")
        raw = raw[emas[0]]
    elif mains:
        raw = raw[mains[0]]
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    if isinstance(raw, dict) and "n_averaged" in raw and all(str(k).startswith("module.") for k in raw if
                                                             k != "n_averaged"):
        # torch.optim.swa_utils.AveragedModel (the references' EMA) saves its update count beside `module.*`
        raw = {k: v for k, v in raw.items() if k != "n_averaged"}
    return raw


def without_wrapper_prefix(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys without the attribute name of a module that wrapped the model when it was saved: a Lightning
    module's `self.model` saves `model.conv1.weight` (measured: a resnet18 checkpoint was "122 unexpected keys, e.g.
    model.conv1.weight; 100 missing keys, e.g. conv1.weight"). Only a prefix that every key shares is dropped: a
    torchvision model's own keys start with several names (conv1, bn1, layer1...; features, classifier)."""
    names = [key.removeprefix("module.") for key in raw]
    first = {name.partition(".")[0] if "." in name else "" for name in names}
    shared = next(iter(first))
    if len(first) != 1 or not shared.isidentifier() or shared in WRAPPER_PREFIXES:
        return raw
    stripped = [name.removeprefix(f"{shared}.") for name in names]
    if len(set(stripped)) != len(stripped):  # `module.model.x` beside `model.x`: the split names the clash
        return raw
    return dict(zip(stripped, raw.values()))


def require_unexpanded_archive(path: Path) -> None:
    """torch.save stores its zip members uncompressed, so together they fit in the file; members that would expand
    past it are deflated (measured: a 4.9 kB file held 4 MB of tensor, so 50 MB would allocate 40 GB) and are
    refused before torch.load allocates a byte of them."""
    import zipfile

    import torch

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
        # and as torch's own zip reader sees them: a second central directory that only it follows (a zip64 record)
        # held a deflated member Python's listing did not show (measured: a 0.97 MB file took 0.96 GB; hunt 10c)
        reader = torch._C.PyTorchFileReader(str(path))
        record_size = getattr(reader, "get_record_size", None)  # torch 2.11 has none: the directories check below
        if record_size is not None:
            expanded = max(expanded, sum(record_size(name) for name in reader.get_all_records()))
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):  # RuntimeError: torch's reader (c10::Error)
        raise UsageError(f"Cannot read weights file {path}: it is truncated or corrupt (not a complete torch.save "
                         "archive)") from None
    if expanded > size:
        raise UsageError(f"Cannot read weights file {path}: its members would expand to {expanded:,} bytes, more "
                         f"than the whole {size:,}-byte file (torch.save stores them uncompressed); refused unread")
    if two_zip_directories(path):
        raise UsageError(f"Cannot read weights file {path}: it holds two zip central directories, one that torch's "
                         "reader follows and one that Python's shows (a crafted archive; torch.save writes one); "
                         "refused unread")


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why `tensor` cannot be a weight loaded into a float32 model as it is, in words; None when it can.
    load_state_dict would copy a complex tensor's real part or a bool's 0/1, and fail with a multi-line
    error on a sparse, quantized or meta one."""
    import torch

    if tensor.device.type == "meta":
        return "a meta tensor (a shape without data)"
    if tensor.layout != torch.strided:
        return f"a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.is_quantized:
        return f"a quantized tensor ({str(tensor.dtype).removeprefix('torch.')})"
    if tensor.is_complex() or tensor.dtype == torch.bool:
        return f"of dtype {str(tensor.dtype).removeprefix('torch.')}"
    if tensor.is_floating_point() and not bool(_finite(tensor)):
        return "holding NaN or infinite values"
    return None


def _finite(tensor: torch.Tensor) -> torch.Tensor:
    """Whether every value is finite; float8 kinds have no isfinite of their own, float32 holds them exactly."""
    try:
        return tensor.isfinite().all()
    except (NotImplementedError, RuntimeError):
        return tensor.float().isfinite().all()


def require_plain_numbers(state: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor dense, real and finite (`tensor_problem`), else a one-line UsageError naming the first;
    NaN weights would otherwise reach the oracle, which blames the input for the NaN outputs."""
    problems = {k: why for k, v in state.items() if (why := tensor_problem(v)) is not None}
    if problems:
        key, why = next(iter(problems.items()))
        raise UsageError(f"{what} holds {len(problems)} tensor{'s' if len(problems) > 1 else ''} that cannot be "
                         f"weights (e.g. {key[:80]}: {why}); pass a state dict of finite float tensors")


def classifier_keys(weights: Weights, backbone: str) -> Weights:
    """A detection body's keys (`4.block.0.0.weight`) as the classifier's (`features.4...`), by family."""
    from exporter.backbones import family_of

    family = family_of(backbone)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in weights.state_dict.items():
        _put(mapped, family.classifier_key(key), key, value, f"Weights {weights.source}")
    weights.state_dict = mapped
    return weights


def _checkpoint_problem(exc: Exception) -> str:
    """What went wrong loading a checkpoint, in our words: torch's own text advises loading unsafely."""
    import pickle
    import re

    from exporter.messages import library_reason

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        needed = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it needs {needed.group(1)})" if needed else ""
        return (f"holds Python objects beyond tensors{what} and is refused: loading it would run code from the "
                "file; save model.state_dict() with torch.save, or use .safetensors")
    if isinstance(exc, EOFError) or "zip archive" in text or "central directory" in text:
        return "is truncated or corrupt (not a complete torch.save archive)"
    return f"cannot be read as a state dict ({library_reason(exc)})"


def split_checkpoint(
    raw: dict[str, torch.Tensor], what: str = "The checkpoint",
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Split a classifier, detection (`backbone.body.*`, `backbone.fpn.*`, heads dropped) or backbone (`body.*`)
    checkpoint into body keys and the FPN's own weights when present. Body keys are the classifier's for
    ResNet; `classifier_keys` maps the others by family."""
    import torch

    body: dict[str, torch.Tensor] = {}
    fpn: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix("module.").removeprefix("backbone.")
        if name.startswith("fpn."):
            _put(fpn, name.removeprefix("fpn."), key, value, what)
        elif name.startswith(("rpn.", "roi_heads.", "head.", "anchor_generator.")):
            continue  # Faster/Mask R-CNN, RetinaNet and FCOS heads
        else:
            _put(body, name.removeprefix("body."), key, value, what)
    # FrozenBatchNorm2d checkpoints carry no num_batches_tracked; BatchNorm2d needs one to load.
    for key in [k for k in body if k.endswith(".running_mean")]:
        body.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0))
    return body, ({"fpn": fpn} if fpn else {})


def _put(state: dict[str, torch.Tensor], name: str, key: str, value: torch.Tensor, what: str) -> None:
    """state[name] = value, refusing a second key that names the same weight: which of two tensors a checkpoint
    means (`conv1.weight` beside `module.conv1.weight`) is not for this tool to pick."""
    if name in state:
        raise UsageError(f"{what} holds two tensors for {name[:80]} (one of them {key[:80]}): a classifier's and "
                         "a detector's or a wrapped model's keys mixed; save one model's state_dict()")
    state[name] = value


def save_weights(weights: Weights, path: Path) -> None:
    """Write weights as safetensors (or a plain tensor dict for .pt/.pth)."""
    import torch

    tensors = {k: v.contiguous() for k, v in weights.state_dict.items()}
    tensors.update({f"fpn.{k}": v.contiguous() for k, v in weights.extra.get("fpn", {}).items()})
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
