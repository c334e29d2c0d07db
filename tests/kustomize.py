"""Render the kustomizations of k8s/ in Python, as ``kustomize build`` does for the features they use
(resources, components, namespace, labels, images, configMapGenerator without the hash suffix, JSON 6902
``add`` patches and ``$patch: delete``), so the checks run without kustomize; tests/test_k8s_kit.py compares
this with ``kubectl kustomize`` where it is installed."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
KUSTOMIZE = shutil.which("kustomize") or shutil.which("kubectl")
CLUSTER_SCOPED = frozenset({"Namespace"})


def build(root: Path) -> list[Doc]:
    """The documents ``kustomize build root`` would print (generated names without their hash)."""
    kustomization: Doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (root / entry).resolve()
        docs += build(path) if path.is_dir() else list(filter(None, yaml.safe_load_all(path.read_text())))
    for entry in kustomization.get("components", []):
        docs = component((root / entry).resolve(), docs)
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (root / f).read_text() for f in generator["files"]}
        labels = generator.get("options", {}).get("labels", {})
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generator["name"], **({"labels": labels} if labels else {})}, "data": data})
    return transform(kustomization, docs)


def component(root: Path, docs: list[Doc]) -> list[Doc]:
    """``docs`` with the component at ``root`` applied: its resources added, then its patches."""
    kustomization: Doc = yaml.safe_load((root / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    for entry in kustomization.get("resources", []):
        docs = docs + list(filter(None, yaml.safe_load_all((root / entry).read_text())))
    return transform(kustomization, docs)


def transform(kustomization: Doc, docs: list[Doc]) -> list[Doc]:
    """Apply a kustomization's patches, namespace, labels and images to ``docs`` (copies)."""
    docs = copy.deepcopy(docs)
    for patch in kustomization.get("patches", []):
        docs = apply_patch(patch, docs)
    namespace = kustomization.get("namespace")
    for doc in docs:
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
        for group in kustomization.get("labels", []):
            assert group.get("includeSelectors") is False and not group.get("includeTemplates"), group
            doc["metadata"].setdefault("labels", {}).update(group["pairs"])
        for container in pod_containers(doc):
            for image in kustomization.get("images", []):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return docs


def apply_patch(patch: Doc, docs: list[Doc]) -> list[Doc]:
    body = yaml.safe_load(patch["patch"])
    if isinstance(body, dict) and body.get("$patch") == "delete":
        key = (body["kind"], body["metadata"]["name"])
        kept = [d for d in docs if (d["kind"], d["metadata"]["name"]) != key]
        assert len(kept) == len(docs) - 1, f"nothing to delete: {key}"
        return kept
    target = patch["target"]
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) == (target["kind"], target["name"]):
            json_patch_add(doc, body)
    return docs


def json_patch_add(doc: Doc, ops: list[Doc]) -> None:
    """Apply RFC 6902 ``add`` operations (all the overlays use) to ``doc``."""
    for op in ops:
        assert op["op"] == "add", op
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
        else:
            node[last] = op["value"]


def pod_containers(doc: Doc) -> list[Doc]:
    """The containers of a workload's pod template (none for other kinds)."""
    pod = doc.get("spec", {}).get("template", {}).get("spec", {}) if doc["kind"] in ("Deployment", "Job") else {}
    containers: list[Doc] = pod.get("containers", []) + pod.get("initContainers", [])
    return containers


def generator_names(root: Path) -> set[str]:
    """The names of every configMapGenerator under ``root``."""
    return {g["name"] for path in root.rglob("kustomization.yaml")
            for g in (yaml.safe_load(path.read_text()) or {}).get("configMapGenerator", [])}


def kubectl_build(root: Path, generated: set[str]) -> list[Doc]:
    """``kustomize build root`` (or ``kubectl kustomize``), the hash suffix of the ``generated`` names removed."""
    assert KUSTOMIZE is not None
    cmd = [KUSTOMIZE, "build" if KUSTOMIZE.endswith("kustomize") else "kustomize", str(root)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for name in generated:
        text = re.sub(rf"\b{re.escape(name)}-[a-z0-9]{{10}}\b", name, text)
    return list(yaml.safe_load_all(text))
