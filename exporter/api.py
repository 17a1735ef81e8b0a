"""The exporter's public Python API: a backbone by names, as torchvision's `get_model` (built here, above the
backbone registry and the weights, which both stay free of each other's builders)."""

from __future__ import annotations

from exporter.backbones import BuiltModel, build_model, validate_spec
from exporter.spec import ModelSpec
from exporter.weights import load_weights


def get_backbone(name: str, norm: str = "frozen", view: str = "body", weights: str = "synthetic",
                 seed: int = 0) -> BuiltModel:
    """Build a backbone by names, e.g. `get_backbone("resnet50", norm="frozen")`."""
    spec = ModelSpec(name, norm, view)
    validate_spec(spec)
    return build_model(spec, load_weights(weights, name, seed), seed)
