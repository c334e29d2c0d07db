"""Deployment artefacts: k8s manifests against the Kubernetes OpenAPI schema, timing relations,
Dockerfile invariants (no Docker engine here to build it), gunicorn settings."""

from __future__ import annotations

import json
import os
import re
import runpy
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s" / "base"
K8S_VERSION = "1.33"


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text())]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    """The base's one manifest of ``kind`` (named ``name`` when the base has several)."""
    [doc] = [d for d in manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid_against_the_kubernetes_schema(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_can_fail() -> None:
    broken = json.loads(json.dumps(by_kind("Deployment")))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_resource_except_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == present


def container() -> dict[str, Any]:
    [c] = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_shape() -> None:
    spec = by_kind("Deployment")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # the only writable path
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_shutdown_timing_relations(monkeypatch: pytest.MonkeyPatch) -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    pre_stop = int(container()["lifecycle"]["preStop"]["exec"]["command"][-1])
    config = by_kind("ConfigMap")["data"]
    drain = float(config["SHUTDOWN_DRAIN_SECONDS"])
    secrets = {"WECOM_TOKEN": "token", "WECOM_ENCODING_AES_KEY": "a" * 43, "DIFY_API_KEY": "app-key"}
    for name, value in {**config, **secrets}.items():
        monkeypatch.setenv(name, value)
    gunicorn = runpy.run_path(str(ROOT / "gunicorn.conf.py"), init_globals={})  # the pod's own settings
    assert gunicorn["drain_seconds"] == drain
    assert gunicorn["graceful_timeout"] >= drain  # gunicorn waits for the whole drain
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + gunicorn["graceful_timeout"]
    assert gunicorn["max_requests"] == 0 and gunicorn["worker_class"] == "gthread"


def test_drain_budget_has_one_validated_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:

    monkeypatch.chdir(tmp_path)  # gunicorn reads .env from the working directory, as the app does
    (tmp_path / ".env").write_text(f"WECOM_TOKEN=token\nWECOM_ENCODING_AES_KEY={'a' * 43}\n"
                                   "DIFY_BASE_URL=http://127.0.0.1:1/v1\nDIFY_API_KEY=k\nSHUTDOWN_DRAIN_SECONDS=7\n")
    for name in ("WECOM_TOKEN", "WECOM_ENCODING_AES_KEY", "DIFY_BASE_URL", "DIFY_API_KEY", "SHUTDOWN_DRAIN_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    gunicorn = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert gunicorn["drain_seconds"] == 7.0  # a value only in .env counts
    from services.engine.engine import LOOP_JOIN, SETTLE_AFTER_DRAIN

    assert gunicorn["graceful_timeout"] > 7.0 + SETTLE_AFTER_DRAIN + LOOP_JOIN  # the master outwaits the worker
    monkeypatch.setenv("SHUTDOWN_DRAIN_SECONDS", "soon")
    with pytest.raises(SystemExit, match="^configuration error: SHUTDOWN_DRAIN_SECONDS"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    monkeypatch.setenv("SHUTDOWN_DRAIN_SECONDS", "900")
    with pytest.raises(SystemExit, match="^configuration error: SHUTDOWN_DRAIN_SECONDS"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_plain_gunicorn_stops_on_a_configuration_error_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"PATH": os.environ.get("PATH", ""), "WECOM_TOKEN": "bad!", "WECOM_ENCODING_AES_KEY": "a" * 43,
           "DIFY_BASE_URL": "http://127.0.0.1:1/v1", "DIFY_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "app:create_app()", "--bind", "127.0.0.1:0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert (done.stdout + done.stderr).strip().splitlines() == [
        "configuration error: WECOM_TOKEN: must be 1-32 letters or digits (as shown in the WeCom admin console)"]


def test_selectors_and_targets_agree() -> None:
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind, name in (("Service", "wecom-dify"), ("Service", "wecom-dify-metrics"), ("PodDisruptionBudget", None)):
        doc = by_kind(kind, name)
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    assert by_kind("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", by_kind("Deployment")["metadata"]["name"])
    assert by_kind("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= by_kind("PodDisruptionBudget")["spec"][
        "minAvailable"]
    names = {c["configMapRef"]["name"] if "configMapRef" in c else c["secretRef"]["name"]
             for c in container()["envFrom"]}
    assert names == {by_kind("ConfigMap")["metadata"]["name"], by_kind("Secret")["metadata"]["name"]}


def test_config_and_secret_keys_are_real_settings() -> None:
    known = {f.metadata["env"] for f in fields(Settings)} | {"GUNICORN_WORKERS", "GUNICORN_THREADS",
                                                             "GUNICORN_BIND", "GUNICORN_TIMEOUT"}
    assert set(by_kind("ConfigMap")["data"]) <= known
    secret = by_kind("Secret")["stringData"]
    assert set(secret) <= known
    assert all(v == "" for v in secret.values())  # a template: no real values


def dockerfile() -> list[str]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def test_dockerfile_invariants() -> None:
    lines = dockerfile()
    base = lines[0]
    assert re.fullmatch(r"FROM python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY")]
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert lines[copies[0]] == "COPY requirements.txt ."
    assert copies[0] < install < copies[1]  # dependencies in their own layer, before the code
    user = [line for line in lines if line.startswith("USER")]
    assert user and not re.match(r"USER (root|0)\b", user[-1])
    cmd = next(line for line in lines if line.startswith("CMD"))
    argv = json.loads(cmd[len("CMD"):])
    assert argv[0] == "gunicorn" and "app:create_app()" in argv  # exec form: gunicorn is PID 1
    assert any(line.startswith("HEALTHCHECK") and "/livez" in line for line in lines)
    text = "\n".join(lines)
    assert ".env" not in text.replace(".dockerignore", "")
    for line in lines:
        if line.startswith(("ENV", "ARG")):
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY|AES_KEY)", line), line


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", ".git", ".venv", "var/", "tests/"} <= ignored


def test_dockerfile_copies_everything_the_app_imports() -> None:
    copied = " ".join(line for line in dockerfile() if line.startswith("COPY"))
    for package in ("config/", "crypto/", "services/", "utils/", "app.py", "gunicorn.conf.py"):
        assert package in copied


def test_gunicorn_builds_no_access_line_its_level_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    secrets = {"WECOM_TOKEN": "token", "WECOM_ENCODING_AES_KEY": "a" * 43, "DIFY_API_KEY": "k",
               "DIFY_BASE_URL": "http://127.0.0.1:1/v1"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    built: list[int] = []
    monkeypatch.setattr(Logger, "atoms", lambda self, *args: built.append(1) or {})
    saved = logging.root.handlers[:], logging.root.level
    try:
        cfg = Config()
        cfg.set("logconfig_dict", conf["logconfig_dict"])  # as the repo's config does: atoms were built
        logger = conf["logger_class"](cfg)
        assert logger.access_log_enabled  # gunicorn alone would build every line
        logger.access(None, None, {}, None)
        assert built == []  # gunicorn.access is silenced: nothing is built
        logger.access_log.setLevel(logging.INFO)  # an operator who turns access logging on gets it
        logger.access(None, None, {}, None)
        assert built == [1]
    finally:
        logging.root.handlers[:], _ = saved
        logging.root.setLevel(saved[1])


def test_the_image_is_set_by_kustomize_and_the_healthcheck_follows_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    image = container()["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]  # `kustomize edit set image`
    [check] = [line for line in dockerfile() if line.startswith("HEALTHCHECK")]
    code = json.loads(check.split("CMD ", 1)[1])[2]
    assert "GUNICORN_BIND" in code and ":8000/" not in code
    monkeypatch.setenv("GUNICORN_BIND", "0.0.0.0:9123")
    names: dict[str, object] = {}
    exec(code.split("; sys.exit")[0], names)  # the probe's own line, up to the request
    assert names["port"] == "9123"
