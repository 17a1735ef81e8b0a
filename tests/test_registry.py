import pytest

from exporter.backbones import BACKBONES, VIEWS
from exporter.errors import UsageError
from exporter.families import FAMILIES
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


@pytest.mark.parametrize("registry", [BACKBONES, NORMS, VIEWS, RUNTIMES, FAMILIES])
def test_project_registries_refuse_overwrites(registry):
    first = registry.names()[0]
    with pytest.raises(ValueError):
        registry.add(first, None)


def test_every_backbone_has_a_registered_family_and_every_family_a_backbone():
    families = {BACKBONES.get(name).family for name in BACKBONES}
    assert families == set(FAMILIES.names())
    for name in FAMILIES:
        family = FAMILIES.get(name)
        assert set(family.norms) <= set(NORMS.names())
        assert {v.name for v in family.views} <= set(VIEWS.names())
    # runtimes and formats are checked as properties in tests/test_runtimes.py, not as name lists
    assert all(RUNTIMES.get(name) for name in RUNTIMES)


def test_register_backbone_needs_a_known_family():
    from exporter.backbones import register_backbone

    with pytest.raises(UsageError, match="Unknown backbone family 'vgg'; choose one of: "):
        register_backbone("vgg16", family="vgg")
    assert "vgg16" not in BACKBONES


@pytest.mark.parametrize(("text", "expected"), [
    ("resnet50:frozen:body", ModelSpec("resnet50", "frozen", "body")),
    ("resnet50:batch:trunk", ModelSpec("resnet50", "batch", "trunk")),
    ("resnet18", ModelSpec("resnet18", "frozen", "body")),
    ("resnet18:frozen-eps0", ModelSpec("resnet18", "frozen-eps0", "body")),
    ("mobilenet_v3_small:batch:trunk", ModelSpec("mobilenet_v3_small", "batch", "trunk")),
])
def test_parse_spec(text, expected):
    assert ModelSpec.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("resnet50:frozen:body:x", "Bad model spec"),
    ("resnet50::body", "Bad model spec"),
    ("vgg16:frozen:body", "Unknown backbone 'vgg16'"),
    ("resnet50:layer:body", "Unknown norm 'layer'"),
    ("resnet50:frozen:head", "Unknown view 'head'; choose one of: body, fpn, trunk"),
    # torchvision never sets eps 0 for MobileNetV3: the family has no such variant
    ("mobilenet_v3_large:frozen-eps0:body",
     "The mobilenet_v3 family has no norm variant 'frozen-eps0' .*; choose one of: batch, frozen, fused$"),
])
def test_parse_spec_errors(text, message):
    with pytest.raises(UsageError, match=message):
        ModelSpec.parse(text)


def test_a_view_the_family_lacks_is_a_one_line_usage_error():
    from dataclasses import replace

    family = FAMILIES.get("mobilenet_v3")
    bodiless = replace(family, views=tuple(v for v in family.views if v.name != "body"))
    with pytest.raises(UsageError, match="^The mobilenet_v3 family has no view 'body'; choose one of: fpn, trunk$"):
        bodiless.view("body")


def test_a_family_may_supply_its_own_norm_layer():
    """Variants are family-agnostic names; a family whose builders differ overrides one (None: builder default)."""
    from dataclasses import replace

    from exporter.norms import get_norm

    family = FAMILIES.get("resnet")
    assert family.norm_layer(get_norm("batch")) is None
    assert replace(family, norm_layers={"batch": lambda: dict}).norm_layer(get_norm("batch")) is dict


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
