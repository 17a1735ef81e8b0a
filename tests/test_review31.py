"""Review 31 (stop 43's detectors and surface 30, attacked): a `-b` name off by its case or a space names the one it
meant, and `Tolerance` takes numpy's scalars as the numbers they
are (surface 30's TypeError said "rtol must be a number ... not float32")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.backbones import BACKBONES
from exporter.errors import UsageError
from exporter.families.detectors import DETECTOR_WORDS, DETECTORS, unknown_model
from exporter.messages import MAX_MESSAGE
from tests.helpers import invoke
from verify.judge.compare import FIELD_DEFAULTS, Tolerance
from verify.matrix.detectors import split_detectors


def _variants() -> list[tuple[str, str]]:
    """(what a user typed, the registered name meant): upper case, a stray space, a space inside."""
    detector, backbone = DETECTORS.names()[-1], BACKBONES.names()[0]
    return [(detector.upper(), detector), (f" {detector}", detector), (f"{backbone} ", backbone),
            (f"{backbone[:3]} {backbone[3:]}", backbone), (backbone.title(), backbone)]


@pytest.mark.parametrize("typed, meant", _variants())
def test_a_name_off_by_case_or_space_names_the_one_meant(typed, meant):
    """Before: `-b FCOS_resnet50_fpn` was "Unknown detector ...; choose one of: <every detector>", no word of the
    case; ` resnet18` listed every backbone."""
    said = str(unknown_model(typed, BACKBONES.names()))
    assert f"did you mean {meant!r}?" in said, said
    with pytest.raises(UsageError, match=f"did you mean {meant!r}"):  # the matrix's -b says the same
        split_detectors([typed])


def test_the_cli_names_the_detector_meant_in_one_line():
    detector = DETECTORS.names()[-1]
    result = invoke("export", "-b", detector.upper())
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and f"did you mean {detector!r}?" in result.output


def test_every_refusal_path_fits_the_one_line_limit():
    """Each path of `unknown_model` with the registries in full fits MAX_MESSAGE, so the CLI never cuts a list."""
    names = [f"{DETECTOR_WORDS[0]}_unknown", "unknown", *(typed for typed, _ in _variants())]
    for name in names:
        said = str(unknown_model(name, BACKBONES.names()))
        assert len(said) <= MAX_MESSAGE and "\n" not in said, (name, len(said))


@pytest.mark.parametrize("field, value", [("rtol", np.float32(1e-3)), ("atol", np.float32(1e-6)),
                                          ("factor", np.float32(4.0)), ("rtol", np.float64(1e-3))])
def test_tolerance_takes_a_numpy_float(field, value):
    """Before: `Tolerance.from_options(rtol=np.float32(1e-3))` raised "rtol must be a number ... not float32"."""
    tolerance = Tolerance.from_options(**{field: value})
    assert type(getattr(tolerance, field)) is float and getattr(tolerance, field) == float(value)
    assert json.loads(json.dumps(tolerance.to_dict()))[field] == float(value)


def test_tolerance_takes_a_numpy_integer_decimal_and_still_refuses_a_string():
    """Before: `Tolerance.from_options(decimal=np.int64(5))` raised "decimal must be a whole number ... not int64"."""
    tolerance = Tolerance.from_options(decimal=np.int64(5))
    assert type(tolerance.decimal) is int and tolerance.decimal == 5
    for field in FIELD_DEFAULTS:
        with pytest.raises(TypeError, match=f"^{field} must be"):
            Tolerance.from_options(**{field: "5"})


def _without_frozen() -> list[str]:
    return [name for name in DETECTORS.names() if "frozen" not in DETECTORS.get(name).norms]


@pytest.mark.parametrize("name", _without_frozen())
def test_a_typed_norm_a_detector_lacks_is_refused(name, tmp_path):
    """Before: `-b retinanet_resnet50_fpn_v2 --norm frozen` (a norm it has not) built, exported and judged its
    BatchNorm2d build and exited 0: a typed `--norm frozen` read as the default, which falls back to the detector's
    own. Now one line, exit 2, before anything is built."""
    result = invoke("export", "-b", name, "--norm", "frozen", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "has no norm 'frozen'" in result.output
    assert not any(tmp_path.iterdir())


def test_no_norm_given_is_the_detectors_own_default(monkeypatch, tmp_path):
    """Not typed, `--norm` leaves the choice to the detector (resolve_norm(name, None): its default_norm); typed,
    it reaches the detector export as given."""
    from verify.cli import detector as cli_detector

    seen = []
    monkeypatch.setattr(cli_detector, "export_detector", lambda name, norm, *args, **kwargs: seen.append(norm))
    name = _without_frozen()[0]
    invoke("export", "-b", name, "--out", tmp_path)
    invoke("export", "-b", name, "--norm", DETECTORS.get(name).norms[0], "--out", tmp_path)
    assert seen == [None, DETECTORS.get(name).norms[0]]
    assert cli_detector.resolve_norm(name, None) == DETECTORS.get(name).default_norm
    with pytest.raises(UsageError, match="has no norm 'frozen'"):
        cli_detector.resolve_norm(name, "frozen")
