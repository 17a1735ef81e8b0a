"""The manifest schema: one typed model, published as a JSON Schema file that never drifts, strict JSON in
and out, and one-line refusals that name the field and the reason."""

import copy
import json
import math

import pytest
from pydantic import ValidationError

from exporter.errors import ArtifactError
from exporter.manifest import (
    DECIMAL_RANGE,
    GOLDENS_NAME,
    MANIFEST_SCHEMA,
    MANIFEST_SCHEMA_VERSION,
    SCHEMA_FILE,
    Manifest,
    describe_validation_error,
    loads_strict,
    parse_manifest,
    schema_json,
    tolerance_record,
)
from exporter.messages import MAX_MESSAGE
from verify.judge.compare import AUTO_FACTOR, OutputComparison, PairResult, Tolerance

HASH = "ab" * 32
OUTPUTS = ["layer1", "layer2"]


def valid() -> dict:
    """A manifest as an export writes it (ONNX and TorchScript files, two outputs, three runs)."""
    runs = ["eager", "torchscript", "onnxruntime"]
    verdicts = [{"a": b, "b": a, "kind": "runtime", "passed": True, "worst_output": "layer1",
                 "worst_max_abs": 1e-6, "worst_ratio": 1.5} for i, a in enumerate(runs) for b in runs[i + 1:]]
    verdicts += [{"a": r, "b": "oracle", "kind": "oracle", "passed": True, "worst_output": "layer2",
                  "worst_max_abs": 2e-6, "worst_ratio": 1.0} for r in runs]
    return {
        "schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_SCHEMA_VERSION, "created": "2026-01-02T03:04:05+00:00",
        "files": {
            "model.pt": {"sha256": HASH, "size": 10, "format": "torchscript", "exporter": "torch.jit.script"},
            "model.onnx": {"sha256": HASH, "size": 20, "format": "onnx", "exporter": "torch.onnx.export", "opset": 18},
            GOLDENS_NAME: {"sha256": HASH, "size": 30, "format": "goldens"},
        },
        "versions": {"python": "3.11.7", "torch": "2.14.1"},
        "model": {"spec": "resnet18:frozen:body", "backbone": "resnet18", "norm": "frozen", "view": "body",
                  "weights": "synthetic:0", "weights_sha256": HASH},
        "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32",
                  "dynamic_axes": {"0": "batch", "2": "height", "3": "width"}},
        "outputs": OUTPUTS,
        "tolerance": {"mode": "auto", "factor": AUTO_FACTOR},
        "noise_floor": {"layer1": 2.5e-6, "layer2": 3.1e-6},
        "goldens": {"file": GOLDENS_NAME, "input": "input.<name>", "float32": "float32.<output>",
                    "float64": "float64.<output>"},
        "verdicts": verdicts,
        "passed": True,
    }


def test_schema_file_is_what_the_model_generates():
    assert SCHEMA_FILE.read_text() == schema_json(), \
        "exporter/manifest.schema.json is stale: write exporter.manifest.schema_json() to it"


def test_round_trip_is_exact_and_canonical():
    manifest = Manifest.model_validate(valid())
    text = manifest.to_json()
    again = parse_manifest(text)
    assert again == manifest
    assert again.to_json() == text
    assert json.loads(text) == valid()  # nothing added, nothing lost, key names as documented


def test_optional_fields_round_trip():
    data = valid() | {"identity": {"spec": "resnet18:frozen:body", "seed": 0, "export": {"formats": ["onnx"]}},
                      "signature": {"file": "model.sig", "method": "model-signing/elliptic-curve-key"}}
    assert json.loads(Manifest.model_validate(data).to_json()) == data


def test_published_schema_agrees_with_the_model():
    """Tools in other languages validate with the published file: it accepts what we write and refuses
    what the model refuses (a format outside the registry, an unknown field)."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not list(validator.iter_errors(valid()))
    for breaks in (lambda m: m["files"]["model.onnx"].update(format="pickle"), lambda m: m.update(extra=1),
                   lambda m: m["tolerance"].update(mode="lenient")):
        data = valid()
        breaks(data)
        assert list(validator.iter_errors(data))
        with pytest.raises(ValidationError):
            Manifest.model_validate(data)


def _leaves(data):
    if isinstance(data, dict):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaves(value)
    else:
        yield data


def _set(path, value):
    def change(data):
        *head, last = path
        target = data
        for key in head:
            target = target[key]
        target[last] = value
    return change


def _delete(path):
    def change(data):
        *head, last = path
        target = data
        for key in head:
            target = target[key]
        del target[last]
    return change


def _rename_file(old, new):
    def change(data):
        data["files"][new] = data["files"].pop(old)
    return change


def _only_goldens(data):
    data["files"] = {GOLDENS_NAME: data["files"][GOLDENS_NAME]}


def _flip_one_verdict(data):
    data["verdicts"][0]["passed"] = False


def _drop_one_verdict(data):
    del data["verdicts"][1]


REFUSED = [
    ("unknown field", _set(("surprise",), 1), "surprise: Extra inputs are not permitted"),
    ("format outside the registry", _set(("files", "model.onnx", "format"), "pickle"),
     "files['model.onnx']: Input tag 'pickle' found using 'format'"),
    ("opset on a TorchScript entry", _set(("files", "model.pt", "opset"), 18),
     "files['model.pt'].opset: Extra inputs are not permitted"),
    ("ONNX entry without its opset", _delete(("files", "model.onnx", "opset")),
     "files['model.onnx'].opset: missing"),
    ("opset as text", _set(("files", "model.onnx", "opset"), "18"), "files['model.onnx'].opset: Input should be a "
                                                                     "valid integer"),
    ("sha256 not hex", _set(("files", "model.pt", "sha256"), "XYZ" * 21 + "A"), "files['model.pt'].sha256"),
    ("negative size", _set(("files", "model.pt", "size"), -1), "greater than or equal to 0"),
    ("size as a bool", _set(("files", "model.pt", "size"), True), "valid integer"),
    ("factor NaN", _set(("tolerance", "factor"), math.nan), "tolerance.factor: Input should be a finite number"),
    ("factor Inf", _set(("tolerance", "factor"), math.inf), "tolerance.factor: Input should be a finite number"),
    ("factor zero", _set(("tolerance", "factor"), 0.0), "tolerance.factor: Input should be greater than 0"),
    ("tolerance mode unknown", _set(("tolerance",), {"mode": "lenient", "factor": 4.0}), "Input tag 'lenient'"),
    ("auto mode with rtol", _set(("tolerance", "rtol"), 1e-3), "tolerance.rtol: Extra inputs"),
    ("decimal out of range", _set(("tolerance",), {"mode": "decimal", "decimal": DECIMAL_RANGE[0] - 1}),
     "tolerance.decimal"),
    ("atol Inf", _set(("tolerance",), {"mode": "allclose", "rtol": 0.0, "atol": math.inf}), "finite number"),
    ("floor missing for an output", _delete(("noise_floor", "layer2")), "noise_floor has floors for"),
    ("floor zero", _set(("noise_floor", "layer1"), 0.0), "noise_floor['layer1']: Input should be greater than 0"),
    ("floor NaN", _set(("noise_floor", "layer1"), math.nan), "noise_floor['layer1']: Input should be a finite"),
    ("only goldens", _only_goldens, "lists no model artifact"),
    ("entry outside the folder", _rename_file("model.onnx", "../model.onnx"), "points outside the artifact folder"),
    ("hidden entry", _rename_file("model.onnx", ".model.onnx"), "hidden file name"),
    ("manifest lists itself", _set(("files", "manifest.json"), {"sha256": HASH, "size": 1, "format": "goldens"}),
     "manifest.json"),
    ("goldens under another name", _rename_file(GOLDENS_NAME, "gold.npz"), "exactly one goldens file"),
    ("external data of nothing", _set(("files", "w.bin"), {"sha256": HASH, "size": 1, "format": "external-data",
                                                           "of": "model.pt2"}), "not a listed model"),
    ("verdict null without a reason", _set(("verdicts", 0, "worst_ratio"), None), "without a null_reason"),
    ("verdict flipped", _flip_one_verdict, "passed is True but 5 of 6 verdicts passed"),
    ("verdict dropped", _drop_one_verdict, "not every pair of the runs"),
    ("verdict output unknown", _set(("verdicts", 0, "worst_output"), "fc"), "names output 'fc'"),
    ("timestamp without zone", _set(("created",), "2026-01-02T03:04:05"), "created: '2026-01-02T03:04:05' has no "
                                                                         "time zone"),
    ("input float64", _set(("input", "dtype"), "float64"), "input.dtype: Input should be 'float32'"),
    ("input 3-D", _set(("input", "shape"), [3, 32, 32]), "input.shape"),
    ("dynamic axis 7", _set(("input", "dynamic_axes"), {"7": "x"}), "input.dynamic_axes['7'] (its name)"),
    ("spec not its parts", _set(("model", "view"), "fpn"), "model.spec"),
    ("identity NaN", _set(("identity",), {"seed": math.nan}), "identity['seed']"),
    ("signature by another method", _set(("signature",), {"file": "model.sig", "method": "gpg"}),
     "signature.method"),
]


@pytest.mark.parametrize(("change", "message"), [pytest.param(c, m, id=i) for i, c, m in REFUSED])
def test_schema_refuses_naming_the_field_in_one_line(change, message):
    data = valid()
    change(data)
    with pytest.raises(ValidationError) as caught:  # NaN and Inf included: what an export would try to write
        Manifest.model_validate(data)
    text = describe_validation_error(caught.value, "manifest.json")
    if all(isinstance(v, float) and math.isfinite(v) or not isinstance(v, float) for v in _leaves(data)):
        with pytest.raises(ArtifactError) as read:  # and as `verify artifact` reads it from a file
            parse_manifest(json.dumps(data))
        assert str(read.value) == text
    assert message in text
    assert text.startswith("manifest.json") and "\n" not in text and len(text) <= MAX_MESSAGE


def test_several_problems_are_counted_not_listed():
    data = valid()
    data["tolerance"]["factor"] = -1.0
    data["files"]["model.pt"]["size"] = -1
    with pytest.raises(ArtifactError, match=r"\(and 1 more problem\)$"):
        parse_manifest(json.dumps(data))


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": NaN}', "NaN is not JSON"),
    ('{"a": Infinity}', "Infinity is not JSON"),
    ('{"a": -Infinity}', "-Infinity is not JSON"),
    ('{"a": 1e999}', "1e999 overflows to infinity"),
    ('{"a": 1, "a": 2}', "key 'a' appears twice"),
])
def test_strict_json_reading(text, message):
    with pytest.raises(ValueError, match=message):
        loads_strict(text)
    with pytest.raises(ArtifactError, match="not strict JSON"):
        parse_manifest(text)


def test_wrong_schema_version_says_what_to_do():
    data = valid() | {"schema_version": 1}
    with pytest.raises(ArtifactError, match="schema version 1; this verify reads 2: re-export"):
        parse_manifest(json.dumps(data))


def test_writing_goes_through_the_model_and_is_strict_json():
    bypass = Manifest.model_construct(**{**Manifest.model_validate(valid()).__dict__})
    bypass.noise_floor = {"layer1": math.nan, "layer2": 1.0}  # only a bypass of validation can hold a NaN
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        bypass.to_json()


def test_tolerance_record_keeps_only_what_its_mode_uses():
    assert tolerance_record(Tolerance().to_dict()) == {"mode": "auto", "factor": AUTO_FACTOR}
    assert tolerance_record(Tolerance(mode="decimal", decimal=3).to_dict()) == {"mode": "decimal", "decimal": 3}
    assert tolerance_record(Tolerance(mode="allclose", rtol=1e-3, atol=1e-5).to_dict()) == \
        {"mode": "allclose", "rtol": 1e-3, "atol": 1e-5}


def test_unmeasurable_verdict_figures_are_null_with_a_reason():
    from exporter.manifest import Verdict
    from verify.folder.write import verdict_record

    shapes = OutputComparison("layer1", [1, 2], [1, 3], passed=False, reason="shape (1, 2) vs (1, 3)")
    record = verdict_record(PairResult("onnxruntime", "eager", [shapes]))
    assert record["worst_max_abs"] is None and record["worst_ratio"] is None
    assert record["null_reason"] == "worst_max_abs, worst_ratio: shape (1, 2) vs (1, 3)"
    Verdict.model_validate(record)
    fine = OutputComparison("layer1", [1], [1], passed=True, max_abs=1e-6, ratio=1.2, floor=1e-6)
    assert "null_reason" not in verdict_record(PairResult("onnxruntime", "eager", [fine]))


def test_reports_are_strict_json(tmp_path):
    """--json reports: a non-finite number becomes null with the reason beside it; the writer itself
    refuses NaN rather than write invalid JSON."""
    from exporter.fsio import write_json
    from verify.report import write_json_report

    data = {"pairs": [{"max_abs": math.inf, "ratio": math.nan, "ok": 1.0, "runs_ms": [1.0, -math.inf]}],
            "floor": {"value": 2.0, "null_reason": "earlier"}, "worst": (math.nan,)}
    write_json_report(data, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    written = loads_strict(text)
    pair = written["pairs"][0]
    assert pair["max_abs"] is None and pair["ratio"] is None and pair["runs_ms"] == [1.0, None]
    assert pair["null_reason"] == "not finite: max_abs: Inf, ratio: NaN, runs_ms[1]: -Inf"
    assert written["floor"] == {"value": 2.0, "null_reason": "earlier"}
    assert written["worst"] == [None] and written["null_reason"] == "not finite: worst[0]: NaN"
    assert data["pairs"][0]["max_abs"] == math.inf  # the caller's data is left as it was
    with pytest.raises(ValueError):
        write_json(tmp_path / "bad.json", {"x": math.nan})
    assert not (tmp_path / "bad.json").exists()


def test_valid_fixture_is_not_shared_state():
    first = valid()
    first["files"].clear()
    assert valid()["files"] and copy.deepcopy(valid()) == valid()
