"""`manifest.json` and `goldens.npz`: the proof an artifact folder carries.

The manifest has one typed schema, `Manifest` (pydantic v2, strict: unknown fields, wrong types and
non-finite numbers are refused), published as `exporter/manifest.schema.json` for tools in other
languages. It is written and read only through that model, as strict JSON (no NaN or Infinity, no
duplicate keys). Which numbers an artifact check re-derives instead of trusting: verify/folder/validate.py.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)

from exporter.artifacts import Artifact
from exporter.errors import ArtifactError
from exporter.fsio import write_text_atomic
from exporter.messages import MAX_MESSAGE

if TYPE_CHECKING:
    import numpy as np

MANIFEST_NAME = "manifest.json"
GOLDENS_NAME = "goldens.npz"
SIGNATURE_NAME = "model.sig"
"""OpenSSF model-signing's signature of the whole folder (exporter/signing.py); never listed in `files`,
since it signs the manifest itself, but declared by the manifest's `signature` field."""
SIGNATURE_METHOD = "model-signing/elliptic-curve-key"
MANIFEST_SCHEMA = "backbone-verify/manifest"
MANIFEST_SCHEMA_VERSION = 2
"""2: the typed, strict schema (exporter/manifest.schema.json); 1 was never validated."""
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
GOLDENS_FORMAT = "goldens"
EXTERNAL_DATA_FORMAT = "external-data"
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is a few kB; anything this large is not one (and is not read into memory)."""
DECIMAL_RANGE = (-10, 20)
"""numpy's bound is 1.5 x 10**-decimal: outside this range it is no check at all or overflows."""
HISTORY_FIELDS = ("created", "versions", "identity", "verdicts[].worst_output", "verdicts[].worst_max_abs",
                  "verdicts[].worst_ratio", "verdicts[].null_reason")
"""What the export measured or noted on its own runs, or was asked to do: recorded for people (and, for
`identity`, for a later export deciding whether it may replace the folder), re-derivable by no artifact
check (the eager model is not in the folder), and read by no verdict."""
DETECTOR_KIND = "detector"
"""The manifest `kind` of a whole detector's folder (exporter/detector_manifest.py); a backbone's has no `kind`."""
GOLDENS_LAYOUT = {"file": GOLDENS_NAME, "input": "input.<name>", "float32": "float32.<output>",
                  "float64": "float64.<output>"}
GOLDENS_MORE_KEYS = "<group>@<k>.<name>"
"""How goldens.npz names the arrays of its stored input k >= 1 (input 0 keeps the plain `<group>.<name>` keys, so a
folder holding one golden input reads as before)."""
GOLDENS_BUDGET_BYTES = 80 << 20
"""The most bytes the goldens of a folder keep (every stored input with its float32, float64 and folded outputs): every
input the export judged on while they fit, else the first ones that fit, and always the first. The first three inputs
are one of each seeded kind (normal, uniform, image: verify/inputs.py SAMPLE_PATTERN); a 224 px ResNet-50 body's are
24.7 MB each, so it keeps those three (74 MB, under one of its 94 MB model files), and a 32 px resnet18's all eight
(1.1 MB). Measured: README, "Artifact folders that prove themselves"."""
ModelT = TypeVar("ModelT", bound=BaseModel)


def _plain_name(value: Any) -> Any:
    """A file name directly inside the folder: refused before the pattern so the reason is said plainly."""
    if isinstance(value, str):
        if "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"entry {value!r} points outside the artifact folder (only plain file names are listed)")
        if value.startswith("."):
            raise ValueError(f"entry {value!r} is a hidden file name (a complete export holds none)")
    return value


def _iso_timestamp(value: str) -> str:
    try:
        stamp = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 timestamp") from None
    if stamp.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return value


Text = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, BeforeValidator(_plain_name),
                     StringConstraints(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")]
Timestamp = Annotated[str, AfterValidator(_iso_timestamp)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class Strict(BaseModel):
    """Every model: unknown fields, coercions (\"1\" for 1, 1.0 for an int) and NaN/Infinity are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


class FileEntry(Strict):
    """One file of the folder: its sha256 and size, and what it is."""

    sha256: Sha256
    size: Annotated[int, Field(ge=0)]


class GoldensFile(FileEntry):
    """`goldens.npz`: the input and the float32 and float64 outputs (arrays only, no pickles)."""

    format: Literal["goldens"]


class ExternalDataFile(FileEntry):
    """Tensor data a model file references by location (ONNX external data)."""

    format: Literal["external-data"]
    of: FileName
    """The listed model file that references it."""


def _format_entries() -> list[type[FileEntry]]:
    """One entry model per registered file format, with exactly the fields the format declares."""
    from exporter.formats import file_formats, get_format

    entries = []
    for name in file_formats():
        fmt = get_format(name)
        fields: dict[str, Any] = {key: (Text if kind is str else kind, ...)
                                  for key, kind in fmt.manifest_field_types.items()}
        model = create_model(f"{type(fmt).__name__.removesuffix('Format')}File", __base__=FileEntry,
                             __doc__=f"A model file of format {name}.", format=(Literal[name], ...), **fields)
        entries.append(model)
    return entries


MODEL_FILE_TYPES: tuple[type[FileEntry], ...] = tuple(_format_entries())
AnyFileEntry = Annotated[Union[(*MODEL_FILE_TYPES, GoldensFile, ExternalDataFile)],  # noqa: UP007
                         Field(discriminator="format")]


class ModelInfo(Strict):
    spec: Text
    """`backbone:norm:view`, or your own model's `file.py:factory` / `pkg.mod:factory`."""
    backbone: Text | None = None
    norm: Text | None = None
    view: Text | None = None
    """All three for a registered backbone; none for your own model."""
    source: Text | None = None
    factory: Text | None = None
    """Your own model: the file or module, and the factory called."""
    weights: Text
    """`synthetic:SEED`, `imagenet` or the weights file."""
    weights_sha256: Sha256 | None


class InputSpec(Strict):
    name: Text
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=4, max_length=4)]
    """NCHW, the shape of the goldens' input."""
    dtype: Literal["float32"]
    dynamic_axes: dict[Annotated[str, StringConstraints(pattern=r"^[0-3]$")], Text]
    """Axis index -> name, for the axes the model files accept at any size."""


class AutoTolerance(Strict):
    """|a - b| <= factor x the float32 noise floor."""

    mode: Literal["auto"]
    factor: Positive


class DecimalTolerance(Strict):
    """numpy.testing.assert_array_almost_equal(decimal=...)."""

    mode: Literal["decimal"]
    decimal: Annotated[int, Field(ge=DECIMAL_RANGE[0], le=DECIMAL_RANGE[1])]


class AllcloseTolerance(Strict):
    """numpy.testing.assert_allclose(rtol=..., atol=...)."""

    mode: Literal["allclose"]
    rtol: NonNegative
    atol: NonNegative


ToleranceSpec = Annotated[Union[AutoTolerance, DecimalTolerance, AllcloseTolerance],  # noqa: UP007
                          Field(discriminator="mode")]


class Verdict(Strict):
    """One pair the export judged: two runs, or a run against the float64 oracle."""

    a: Text
    b: Text
    kind: Literal["runtime", "oracle"]
    passed: bool
    worst_output: Text | None
    worst_max_abs: NonNegative | None
    worst_ratio: NonNegative | None
    """max |a - b| over the float32 noise floor, at the worst output."""
    null_reason: Text | None = None
    """Why a figure above is null (it could not be measured); present exactly when one is."""

    @model_validator(mode="after")
    def _nulls_explained(self) -> Verdict:
        nulls = [k for k in ("worst_output", "worst_max_abs", "worst_ratio") if getattr(self, k) is None]
        if nulls and self.null_reason is None:
            raise ValueError(f"{', '.join(nulls)} null without a null_reason saying why")
        if not nulls and self.null_reason is not None:
            raise ValueError("null_reason given but no figure is null")
        if (self.kind == "oracle") != (self.b == "oracle"):
            raise ValueError(f"kind {self.kind!r} does not fit the pair {self.a} vs {self.b}")
        return self


class GoldensLayout(Strict):
    """How `goldens.npz` names its arrays."""

    file: Literal["goldens.npz"]
    input: Literal["input.<name>"]
    float32: Literal["float32.<output>"]
    float64: Literal["float64.<output>"]
    inputs: Annotated[list[Text], Field(min_length=2)] | None = None
    """The labels of the stored inputs, in order (`normal0, seed 0`, ...), where the goldens keep more than one: input
    0 under the keys above, input k under `more`'s. Absent: one input (every folder before they kept more)."""
    more: Literal["<group>@<k>.<name>"] | None = None
    """The keys of stored input k >= 1 (`float32@1.layer4`); present exactly when `inputs` is."""

    @model_validator(mode="after")
    def _together(self) -> GoldensLayout:
        if (self.inputs is None) != (self.more is None):
            raise ValueError("inputs and more are given together (where the goldens keep several inputs) or not at all")
        if self.inputs is not None and len(set(self.inputs)) != len(self.inputs):  # a report names the worst by label
            raise ValueError("inputs names an input twice; each stored input's label is its own")
        return self

    @property
    def count(self) -> int:
        """How many inputs the goldens keep."""
        return len(self.inputs) if self.inputs is not None else 1


class SignatureInfo(Strict):
    """The folder is signed (the signature covers this manifest, so it is declared here, not listed)."""

    file: Literal["model.sig"]
    method: Literal["model-signing/elliptic-curve-key"]


def check_file_list(files: dict[str, Any]) -> None:
    """A folder's `files`: never the manifest or the signature, exactly one goldens file, at least one model,
    external data only of a listed model (every manifest kind)."""
    kinds = {name: entry.format for name, entry in files.items()}
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        if name in kinds:
            raise ValueError(f"files lists {name}, which is never hashed into the manifest")
    goldens = [n for n, k in kinds.items() if k == GOLDENS_FORMAT]
    if goldens != [GOLDENS_NAME]:
        raise ValueError(f"files must list exactly one goldens file, {GOLDENS_NAME}; it lists {goldens}")
    models = {n for n, k in kinds.items() if k not in (GOLDENS_FORMAT, EXTERNAL_DATA_FORMAT)}
    if not models:
        raise ValueError("files lists no model artifact (only goldens or external data); a folder must "
                         "hold at least one model to pass")
    for name, entry in files.items():
        if isinstance(entry, ExternalDataFile) and entry.of not in models:
            raise ValueError(f"files[{name!r}] is external data of {entry.of!r}, which is not a listed model")


class Manifest(Strict):
    """What an export folder holds and what its export found. Numbers that decide a verdict are
    re-derived by `verify artifact` from the files, never taken from here on trust."""

    schema_id: Literal["backbone-verify/manifest"] = Field(alias="schema")
    schema_version: Literal[2]
    created: Timestamp
    files: Annotated[dict[FileName, AnyFileEntry], Field(min_length=1)]
    """Every file in the folder but this manifest and the signature, by name."""
    versions: dict[Text, Text]
    model: ModelInfo
    input: InputSpec
    outputs: Annotated[list[Text], Field(min_length=1)]
    tolerance: ToleranceSpec
    """What the export judged with; an artifact check may only tighten with it, never loosen."""
    noise_floor: dict[Text, Positive]
    """Per output, max |float32 - float64| of the goldens (at least one float32 ulp of the scale)."""
    channel_floors_sha256: Sha256 | None = None
    """sha256 of every per-channel floor re-derived from the goldens (float32, float64 and the folded
    sample): an edit of the goldens that moves a channel floor is caught even where the per-output floors
    stay the same. `verify artifact` requires it whenever `noise_floor` is present."""
    summation_floor: dict[Text, Annotated[list[Positive], Field(min_length=1)]] | None = None
    """Per output that a user's model computes directly by a layer summing few values (a Linear, a conv or pool on a
    1x1 map: verify/judge/summation.py `summed_outputs`), that layer's summation floor on the golden input: one value,
    or one per channel. The floors re-derived from the goldens are raised to it, as the export's were (the one
    float32 run the goldens hold is no estimate of another runtime's summation order on a few values). Taken as the
    goldens are, from the folder (a signature covers both); absent where no output is such a head."""
    goldens: GoldensLayout
    verdicts: list[Verdict]
    passed: bool
    """Every verdict passed."""
    identity: dict[str, JsonValue] | None = None
    """What distinguishes this export from another into the same folder (model, weights, seed, export
    options, input); absent from folders of older exports."""
    signature: SignatureInfo | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        from exporter.spec import ModelSpec

        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs lists a name twice: {self.outputs}")
        if set(self.noise_floor) != set(self.outputs) and (self.noise_floor or self.tolerance.mode == "auto"):
            raise ValueError(f"noise_floor has floors for {sorted(self.noise_floor)}, but the outputs are "
                             f"{sorted(self.outputs)}")
        check_file_list(self.files)
        if self.summation_floor is not None and not set(self.summation_floor) <= set(self.noise_floor):
            raise ValueError(f"summation_floor names {sorted(set(self.summation_floor) - set(self.noise_floor))}, "
                             "outputs with no noise_floor")
        if self.summation_floor and self.model.backbone is not None:  # only a user's model is lifted: never widen
            raise ValueError("summation_floor is recorded for your own model's heads only (--model); a registered "
                             "backbone's folder has none")
        for axis in self.input.dynamic_axes:
            if int(axis) >= len(self.input.shape):
                raise ValueError(f"input.dynamic_axes names axis {axis} of a {len(self.input.shape)}-D input")
        parts = (self.model.backbone, self.model.norm, self.model.view)
        if any(p is not None for p in parts) and self.model.spec != str(ModelSpec(*parts)):
            raise ValueError(f"model.spec {self.model.spec!r} is not its backbone, norm and view")
        self._check_verdicts()
        return self

    def _check_verdicts(self) -> None:
        """The verdicts are every pair of the export's runs and each run against the oracle, once each,
        and `passed` is their conjunction: none can be dropped or flipped unnoticed."""
        runs = list(dict.fromkeys(x for v in self.verdicts for x in (v.a, v.b) if x != "oracle"))
        oracle = bool(self.noise_floor or self.tolerance.mode == "auto")  # no float64 oracle: pairs only
        seen = [(v.a, v.b) for v in self.verdicts]
        # counted before any pair is made: n runs make n(n-1)/2 pairs, and 4,000 names in a 656 kB manifest took
        # 11 s and 1.5 GB to list them (hunt 11a)
        if len(seen) != len(runs) * (len(runs) - 1) // 2 + len(runs) * oracle:
            shown = ", ".join(runs[:6]) + (f" and {len(runs) - 6} more" if len(runs) > 6 else "")
            raise ValueError(f"verdicts are not every pair of the runs ({shown}) and each run against the oracle, "
                             f"once: {len(seen)} verdicts for {len(runs)} runs")
        expected = {(b, a) for i, a in enumerate(runs) for b in runs[i + 1:]}
        if oracle:
            expected |= {(r, "oracle") for r in runs}
        if len(set(seen)) != len(seen) or {tuple(sorted(p)) for p in seen} != {tuple(sorted(p)) for p in expected}:
            raise ValueError(f"verdicts are not every pair of the runs {runs} and each run against the oracle, once")
        for verdict in self.verdicts:
            if verdict.worst_output is not None and verdict.worst_output not in self.outputs:
                raise ValueError(f"verdict {verdict.a} vs {verdict.b} names output {verdict.worst_output!r}, "
                                 "not one of the outputs")
        if self.passed != (bool(self.verdicts) and all(v.passed for v in self.verdicts)):
            raise ValueError(f"passed is {self.passed} but {sum(v.passed for v in self.verdicts)} of "
                             f"{len(self.verdicts)} verdicts passed")

    def model_files(self) -> dict[str, FileEntry]:
        """The listed model artifacts (every entry of a registered format), by name."""
        return {n: e for n, e in self.files.items() if e.format not in (GOLDENS_FORMAT, EXTERNAL_DATA_FORMAT)}

    def to_json(self) -> str:
        """Strict JSON, the only way a manifest is written."""
        absent: dict[str, Any] = {k: True for k in ("identity", "signature", "channel_floors_sha256", "summation_floor")
                                  if getattr(self, k) is None}
        unset = {k for k in ("backbone", "norm", "view", "source", "factory") if getattr(self.model, k) is None}
        if unset:
            absent["model"] = unset  # a backbone has no source/factory, your own model no backbone/norm/view
        if self.goldens.inputs is None:
            absent["goldens"] = {"inputs", "more"}  # one golden input: the layout every older folder has
        data = self.model_dump(mode="json", by_alias=True, exclude=absent)
        for verdict in data["verdicts"]:
            if verdict["null_reason"] is None:
                del verdict["null_reason"]  # present exactly when a figure is null
        return json.dumps(data, indent=2, allow_nan=False) + "\n"


def schema_json() -> str:
    """The published JSON Schema (exporter/manifest.schema.json is this text; a test keeps it so)."""
    schema = Manifest.model_json_schema(by_alias=True)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": MANIFEST_SCHEMA, **schema}
    return json.dumps(schema, indent=2) + "\n"


# Reading -------------------------------------------------------------------------------------

def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (strict JSON has no NaN or Infinity; an unmeasurable value is null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to infinity")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) < len(pairs):  # linear: counting each key was quadratic (200,000 keys took 508 s)
        seen: set[str] = set()
        duplicated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {duplicated!r} appears twice in one object (readers would disagree on it)")
    return found


def loads_strict(text: str) -> Any:
    """json.loads refusing NaN, Infinity, numbers that overflow and duplicate keys."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_no_duplicates)
    except RecursionError:  # a manifest is a few levels deep; Python's reader recurses per level
        raise ValueError("it nests arrays or objects deeper than a JSON reader goes") from None


DICT_FIELDS = ("files", "versions", "noise_floor", "dynamic_axes", "identity")


def _where(loc: tuple[Any, ...], tags: set[str]) -> str:
    """`files['model.onnx'].opset`, `tolerance.factor`, `verdicts[2].worst_ratio` from pydantic's loc."""
    union_at = {"files": 2, "tolerance": 1}.get(loc[0] if loc else None)  # where pydantic names the member tried
    text = ""
    for i, part in enumerate(loc):
        if part == "[key]":
            text += " (its name)"
        elif isinstance(part, int):
            text += f"[{part}]"
        elif i == union_at and part in tags:
            continue
        elif i > 0 and loc[i - 1] in DICT_FIELDS:
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line: the first problem's field and reason, and how many more there are."""
    from exporter.formats import file_formats

    errors = exc.errors(include_url=False)
    first = errors[0]
    tags = {*file_formats(), GOLDENS_FORMAT, EXTERNAL_DATA_FORMAT, "auto", "decimal", "allclose"}
    where = _where(tuple(first["loc"]), tags)
    reason = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        reason = "missing (a required field)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    text = f"{source}: {where + ': ' if where else ''}{reason}{more}"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> Manifest:
    """Validate manifest text; any problem is one ArtifactError naming the field and the reason."""
    try:
        data = loads_strict(text)
    except ValueError as exc:
        raise ArtifactError(f"{source} is not strict JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise ArtifactError(f"{source} is not a {MANIFEST_SCHEMA} manifest")
    if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(f"{source} has schema version {data.get('schema_version')!r}; this verify reads "
                            f"{MANIFEST_SCHEMA_VERSION}: re-export the folder with this version")
    return validate_as(Manifest, data, source)


def validate_as(model: type[ModelT], data: Any, source: str) -> ModelT:
    """`data` validated as `model`; any problem is one ArtifactError naming `source`, the field and the reason."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(describe_validation_error(exc, source)) from None


def signature_record() -> dict[str, str]:
    """The manifest's `signature` block of a folder signed as it is written."""
    return {"file": SIGNATURE_NAME, "method": SIGNATURE_METHOD}


def load_manifest(path: Path) -> Manifest:
    """Read and validate `path` (a regular file, not a link, of a manifest's size) as a Manifest."""
    return parse_manifest(read_manifest_text(path))


def manifest_kind(path: Path) -> str:
    """`detector` when `path` is a readable manifest of that kind, else `backbone` (whose reader then says
    what is wrong with it)."""
    try:
        data = loads_strict(read_manifest_text(path))
    except (ArtifactError, ValueError):
        return "backbone"
    return DETECTOR_KIND if isinstance(data, dict) and data.get("kind") == DETECTOR_KIND else "backbone"


def read_manifest_text(path: Path) -> str:
    """The text of `path`: a regular file, not a link, of a manifest's size, in UTF-8."""
    try:
        mode = os.lstat(path)
    except FileNotFoundError:
        raise ArtifactError(f"no {MANIFEST_NAME} in {path.parent}: an incomplete export or not an export folder") \
            from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror}") from None
    if stat.S_ISLNK(mode.st_mode):
        raise ArtifactError(f"{MANIFEST_NAME} is a symbolic link; an export folder holds regular files only")
    if not stat.S_ISREG(mode.st_mode):
        raise ArtifactError(f"{MANIFEST_NAME} is not a regular file")
    if mode.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{MANIFEST_NAME} is {mode.st_size} bytes, far more than a manifest; not reading it")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{MANIFEST_NAME} is not UTF-8 text") from None
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror}") from None
    return text


# Writing -------------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "size": path.stat().st_size, **extra}


def write_goldens(folder: Path, input_name: str, inputs: np.ndarray, fp32: dict[str, np.ndarray],
                  fp64: dict[str, np.ndarray], folded: dict[str, np.ndarray] | None = None,
                  more: Sequence[GoldenSet] = ()) -> Path:
    """`folded` (optional): the model with its norms folded into its convolutions in float32, a second
    rounding sample from which the per-channel floors are re-derived as the export measured them. `more`: the goldens
    of inputs 1, 2, ... (their arrays under GOLDENS_MORE_KEYS)."""
    import numpy as np

    sets = [GoldenSet(inputs, fp32, fp64, folded or {}), *more]
    arrays: dict[str, np.ndarray] = {}
    for index, golden in enumerate(sets):
        at = f"@{index}" if index else ""
        arrays.update({f"input{at}.{input_name}": golden.input})
        arrays.update({f"float32{at}.{k}": v for k, v in golden.float32.items()})
        arrays.update({f"float64{at}.{k}": v for k, v in golden.float64.items()})
        arrays.update({f"folded{at}.{k}": v for k, v in (golden.folded or {}).items()})
    path = folder / GOLDENS_NAME
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


@dataclass
class GoldenSet:
    """One stored input's goldens: the input, the eager float32 and float64 outputs, the folded float32 sample."""

    input: np.ndarray
    float32: dict[str, np.ndarray]
    float64: dict[str, np.ndarray]
    folded: dict[str, np.ndarray] | None = None

    @property
    def nbytes(self) -> int:
        return int(self.input.nbytes) + sum(int(a.nbytes) for group in (self.float32, self.float64, self.folded or {})
                                            for a in group.values())


def goldens_that_fit(sets: Sequence[GoldenSet], budget: int | None = None) -> int:
    """How many of `sets` (in order) the goldens keep: every one while together they fit `budget` bytes
    (GOLDENS_BUDGET_BYTES), else the first ones that fit, and always the first."""
    budget = GOLDENS_BUDGET_BYTES if budget is None else budget
    kept, total = 0, 0
    for golden in sets:
        total += golden.nbytes
        if kept and total > budget:
            break
        kept += 1
    return kept


GOLDEN_GROUPS = ("input", "float32", "float64", "folded")
"""`folded` is optional (absent where the model has no norm to fold)."""


def check_stored_archive(path: Path) -> None:
    """Every member of the archive is stored, as np.savez writes it, and named once: a compressed member could
    expand a small file to gigabytes (a zip bomb) before a single key is checked; a stored one is no larger than
    the file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{path.name} is not a readable npz archive ({type(exc).__name__}: {exc})") from None
    seen: set[str] = set()
    twice = next((info.filename for info in infos if info.filename in seen or seen.add(info.filename)), None)
    if twice is not None:
        raise ArtifactError(f"{path.name} holds {twice} more than once; readers would disagree on which copy is "
                            "the golden, so none is read")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise ArtifactError(f"{path.name}: {info.filename} is compressed ({info.compress_size} bytes expanding "
                                f"to {info.file_size}); an export stores its goldens uncompressed (np.savez), so a "
                                "compressed member is refused unread")


def read_goldens(path: Path, groups: tuple[str, ...] = GOLDEN_GROUPS) -> dict[str, dict[str, np.ndarray]]:
    """{'input': {...}, 'float32': {...}, 'float64': {...}} (or the `groups` given), never unpickling and never
    expanding a compressed member. Anything but an npz archive of stored plain arrays named `group.name`, each
    once, is an ArtifactError naming the file and the reason."""
    return _read_archive(path, groups, indexed=False)[0]


def read_golden_sets(path: Path, count: int, groups: tuple[str, ...] = GOLDEN_GROUPS) -> list[dict[str, dict[str,
                                                                                                            np.ndarray]]]:
    """`read_goldens` of a backbone's goldens that keep `count` inputs: input 0's groups under `group.name`, input k's
    under `group@k.name` (GOLDENS_MORE_KEYS), one dict of groups per input. A member of an input outside 0..count-1 is
    refused like any member outside the groups."""
    return _read_archive(path, groups, indexed=True, count=count)


def _read_archive(path: Path, groups: tuple[str, ...], indexed: bool,
                  count: int = 1) -> list[dict[str, dict[str, np.ndarray]]]:
    import zipfile

    import numpy as np

    name = path.name
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{name} is not an npz archive (not a zip file)")
    check_stored_archive(path)
    found: list[dict[str, dict[str, np.ndarray]]] = [{group: {} for group in groups} for _ in range(count)]
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                group, dot, output = key.partition(".")
                base, at, index = group.partition("@")
                k = int(index) if indexed and at and index.isdigit() and index == str(int(index)) else None
                if at and indexed and base in found[0] and (k is None or not 1 <= k < count):
                    raise ArtifactError(f"{name} holds {key!r}, outside the {count} input{'s' if count > 1 else ''} "
                                        "the manifest says its goldens keep")
                if (at and k is None) or base not in found[0] or not dot or not output:
                    raise ArtifactError(f"{name} holds {key!r}, outside {', '.join(g + '.*' for g in groups)}")
                try:
                    array = data[key]
                except ValueError as exc:
                    if "pickle" in str(exc) or "Object arrays" in str(exc):
                        raise ArtifactError(f"{name}: {key} is a pickled object array; refusing to unpickle it") \
                            from None
                    raise
                if not isinstance(array, np.ndarray):
                    raise ArtifactError(f"{name}: {key} is not a numpy array")
                found[k or 0][base][output] = array
    except ArtifactError:
        raise
    except Exception as exc:  # zip and npy parse errors come in many types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"{name} is not a readable npz archive ({type(exc).__name__}: {first})") from None
    return found


def build_manifest(folder: Path, artifacts: dict[str, Artifact], model: dict[str, Any],
                   input_spec: dict[str, Any], outputs: list[str], tolerance: dict[str, Any],
                   floors: dict[str, float], verdicts: list[dict[str, Any]], versions: dict[str, str],
                   identity: dict[str, Any] | None = None, signed: bool = False,
                   channel_floors_sha256: str | None = None,
                   summation_floor: dict[str, list[float]] | None = None,
                   golden_labels: Sequence[str] = ()) -> Manifest:
    """The manifest of a staged folder, validated: an export that would write a lie (a NaN, a format the
    registry does not know) fails here instead. `golden_labels`: the stored inputs' labels, where the goldens keep
    more than one."""
    from exporter.formats import get_format

    files = {}
    for fmt, artifact in artifacts.items():
        if artifact.path is None:
            continue
        entry = get_format(fmt)
        files[artifact.path.name] = file_entry(folder / artifact.path.name, format=fmt,
                                               **entry.manifest_fields(artifact))
        for companion in entry.companions_of(artifact, folder):
            files[companion.name] = file_entry(companion, format=EXTERNAL_DATA_FORMAT, of=artifact.path.name)
    files[GOLDENS_NAME] = file_entry(folder / GOLDENS_NAME, format=GOLDENS_FORMAT)
    data = {
        "schema": MANIFEST_SCHEMA,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "versions": versions,
        "model": model,
        "input": input_spec,
        "outputs": outputs,
        "tolerance": tolerance_record(tolerance),
        "noise_floor": floors,
        "channel_floors_sha256": channel_floors_sha256,
        **({"summation_floor": summation_floor} if summation_floor else {}),
        "goldens": {**GOLDENS_LAYOUT, **({"inputs": list(golden_labels), "more": GOLDENS_MORE_KEYS}
                                         if len(golden_labels) > 1 else {})},
        "verdicts": verdicts,
        "passed": bool(verdicts) and all(v["passed"] for v in verdicts),
    }
    if identity is not None:
        data["identity"] = identity
    if signed:
        data["signature"] = signature_record()
    return validate_as(Manifest, data, "the manifest to write")


def tolerance_record(tolerance: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the tolerance's mode uses (the others would be numbers that mean nothing)."""
    keep = {"auto": ("factor",), "decimal": ("decimal",), "allclose": ("rtol", "atol")}
    mode = tolerance.get("mode")
    return {"mode": mode, **{k: tolerance.get(k) for k in keep.get(mode, ())}}


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    return write_manifest_text(folder, manifest.to_json())


def write_manifest_text(folder: Path, text: str) -> Path:
    path = folder / MANIFEST_NAME
    write_text_atomic(path, text)
    return path
