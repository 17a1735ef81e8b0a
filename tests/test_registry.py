import pytest

from exporter.backbones import BACKBONES, VIEWS
from exporter.errors import UsageError
from exporter.norms import NORMS
from exporter.registry import Registry
from exporter.spec import ModelSpec, parse_shape
from verify.runtimes import RUNTIMES


def test_duplicate_registration_raises():
    registry = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("a", 2)
    assert registry.get("a") == 1


def test_unknown_name_lists_valid_names():
    registry = Registry("thing")
    registry.add("alpha", 1)
    registry.add("beta", 2)
    with pytest.raises(UsageError, match="Unknown thing 'gamma'; choose one of: alpha, beta"):
        registry.get("gamma")


@pytest.mark.parametrize("registry", [BACKBONES, NORMS, VIEWS, RUNTIMES])
def test_project_registries_refuse_overwrites(registry):
    first = registry.names()[0]
    with pytest.raises(ValueError):
        registry.add(first, None)


def test_registered_names():
    assert BACKBONES.names() == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                 "resnext50_32x4d", "wide_resnet50_2"]
    assert NORMS.names() == ["batch", "frozen", "frozen-eps0", "fused"]
    assert VIEWS.names() == ["body", "fpn", "trunk"]
    # runtimes and formats are checked as properties in tests/test_runtimes.py, not as a name list
    assert all(RUNTIMES.get(name) for name in RUNTIMES)


@pytest.mark.parametrize(("text", "expected"), [
    ("resnet50:frozen:body", ModelSpec("resnet50", "frozen", "body")),
    ("resnet50:batch:trunk", ModelSpec("resnet50", "batch", "trunk")),
    ("resnet18", ModelSpec("resnet18", "frozen", "body")),
    ("resnet18:frozen-eps0", ModelSpec("resnet18", "frozen-eps0", "body")),
])
def test_parse_spec(text, expected):
    assert ModelSpec.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("resnet50:frozen:body:x", "Bad model spec"),
    ("resnet50::body", "Bad model spec"),
    ("vgg16:frozen:body", "Unknown backbone 'vgg16'"),
    ("resnet50:layer:body", "Unknown norm 'layer'"),
    ("resnet50:frozen:head", "Unknown view 'head'"),
])
def test_parse_spec_errors(text, message):
    with pytest.raises(UsageError, match=message):
        ModelSpec.parse(text)


def test_parse_shape():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("2,3,64,80") == (2, 3, 64, 80)
    for bad in ("1x3x224", "ax3x2x2", "0x3x8x8", ""):
        with pytest.raises(UsageError, match="Bad shape"):
            parse_shape(bad)


@pytest.mark.parametrize("text", ["[1, 2]", "{\"input_shape\": 5}", "not json", "{\"output_names\": \"x\"}"])
def test_malformed_artifact_metadata_is_an_artifact_error(text):
    from exporter.artifacts import ArtifactMeta
    from exporter.errors import ArtifactError

    with pytest.raises(ArtifactError, match="malformed"):
        ArtifactMeta.from_json(text, "model.onnx")
