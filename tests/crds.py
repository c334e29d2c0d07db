"""Validate custom resources (KEDA, Prometheus Operator) against their CRDs' published OpenAPI schemas.

The CRDs are vendored verbatim in tests/schemas/ (versions and sources in their first lines). An API server
prunes unknown fields of a structural schema; kubectl's strict field validation refuses them. So do we: every
object schema with ``properties`` refuses other keys unless it says ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"


@cache
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` → the strict schema of that version, for every vendored CRD."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        for crd in filter(None, yaml.safe_load_all(path.read_text())):
            spec = crd["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                found[(api_version, spec["names"]["kind"])] = strict(version["schema"]["openAPIV3Schema"])
    return found


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which objects with declared properties refuse undeclared ones."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def is_custom(doc: dict[str, Any]) -> bool:
    """Whether ``doc`` is a kind of one of the vendored CRDs."""
    return (doc.get("apiVersion"), doc.get("kind")) in crds()


def validate(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is valid for its CRD (``KeyError``: no such CRD)."""
    schema = crds()[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft4Validator(schema).validate(doc)  # OpenAPI v3.0 schemas are a dialect of draft 4
