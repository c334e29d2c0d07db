"""Several bots: the k8s/bots/ overlay (the base plus a bots file) rendered and checked against the
Kubernetes schema, its Secret template against bots.toml, and the development bots file with
``make run`` (tools.devserver) and ``tools.wecom_sim --bot``."""

from __future__ import annotations

import copy
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config import Settings, load_bots
from tests.kustomize import json_patch_add
from tools import devserver, wecom_sim

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "k8s" / "base"
OVERLAY = ROOT / "k8s" / "bots"
K8S_VERSION = "1.33"
KUSTOMIZE = shutil.which("kustomize") or shutil.which("kubectl")


def overlay() -> dict[str, Any]:
    kustomization: dict[str, Any] = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    return kustomization


def render() -> list[dict[str, Any]]:
    """The overlay as kustomize builds it, but for the generated ConfigMap's hash suffix and labels."""
    kustomization = overlay()
    assert kustomization["resources"] == ["../base"]
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [doc for name in base["resources"] for doc in yaml.safe_load_all((BASE / name).read_text())]
    for generator in kustomization["configMapGenerator"]:
        data = {Path(f).name: (OVERLAY / f).read_text() for f in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for patch in kustomization["patches"]:
        target = patch["target"]
        for doc in docs:
            if (doc["kind"], doc["metadata"]["name"]) == (target["kind"], target["name"]):
                json_patch_add(doc, yaml.safe_load(patch["patch"]))
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any]
    [c] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def secret_template() -> dict[str, str]:
    secret = yaml.safe_load((OVERLAY / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret"
    data: dict[str, str] = secret["stringData"]
    return data


def bots_toml_references() -> list[str]:
    return devserver.referenced_names(tomllib.loads((OVERLAY / "bots.toml").read_text()))


def test_overlay_renders_manifests_valid_against_the_kubernetes_schema() -> None:
    docs = render()
    assert {d["kind"] for d in docs} >= {"Deployment", "ConfigMap", "Service", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kubernetes_validate.validate(yaml.safe_load((OVERLAY / "secret.example.yaml").read_text()), K8S_VERSION,
                                 strict=True)


def test_base_is_untouched_single_bot() -> None:
    for name in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]:
        assert "BOTS_FILE" not in (BASE / name).read_text(), name  # the base stays one bot from the env


def test_bots_file_is_mounted_read_only_where_bots_file_points() -> None:
    docs = render()
    c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    bots_file = Path(env["BOTS_FILE"])
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")  # the base's env is kept
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == str(bots_file.parent)]
    assert mount["readOnly"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # still the only writable path
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    [volume] = [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    config_map = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert bots_file.name in config_map["data"]
    assert "bots.toml" in config_map["data"]


def test_every_variable_bots_toml_refers_to_is_in_the_secret_template() -> None:
    references = bots_toml_references()
    secret = secret_template()
    assert references and set(references) <= set(secret)
    known = {f.metadata["env"] for f in Settings.__dataclass_fields__.values()}
    assert set(secret) - set(references) <= known  # the rest are real settings (REDIS_URL, …)
    assert all(v == "" for v in secret.values())  # a template: no real values
    base_secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    assert yaml.safe_load((OVERLAY / "secret.example.yaml").read_text())["metadata"]["name"] == \
        base_secret["metadata"]["name"]  # the Deployment's secretRef finds it


def test_bots_toml_loads_with_the_deployment_config() -> None:
    docs = render()
    env = {**one(docs, "ConfigMap", "wecom-dify-config")["data"],
           **{name: devserver.development_value(name) for name in bots_toml_references()},
           "BOTS_FILE": str(OVERLAY / "bots.toml")}
    bots = load_bots(Settings.from_env(env, dotenv=None), env)
    assert set(bots) == {"hr", "it"}
    assert bots["hr"].settings.dify_base_url == env["DIFY_BASE_URL"]  # left out: the global value
    assert bots["it"].settings.dify_base_url != env["DIFY_BASE_URL"]  # its own
    assert bots["hr"].settings.wecom_token == env["WECOM_TOKEN_HR"] != bots["it"].settings.wecom_token


def test_blank_secret_template_fails_naming_the_bot() -> None:
    from config import ConfigError

    docs = render()
    env = {**one(docs, "ConfigMap", "wecom-dify-config")["data"], **secret_template(),
           "BOTS_FILE": str(OVERLAY / "bots.toml")}
    env.pop("REDIS_URL")
    with pytest.raises(ConfigError, match=r"bots\.hr\.wecom_token"):
        load_bots(Settings.from_env(env, dotenv=None), env)


@pytest.mark.skipif(KUSTOMIZE is None, reason="neither kustomize nor kubectl on PATH")
def test_kustomize_builds_the_overlay_as_the_test_renders_it() -> None:
    assert KUSTOMIZE is not None
    cmd = [KUSTOMIZE, "build" if KUSTOMIZE.endswith("kustomize") else "kustomize", str(OVERLAY)]
    built = list(yaml.safe_load_all(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    [generated] = [d for d in built if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"].startswith("wecom-dify-bots-")]
    ours = render()
    assert generated["data"] == one(ours, "ConfigMap", "wecom-dify-bots")["data"]
    pod = one(built, "Deployment")["spec"]["template"]["spec"]
    expected = copy.deepcopy(one(ours, "Deployment")["spec"]["template"]["spec"])
    for volume in expected["volumes"]:
        if volume.get("configMap", {}).get("name") == "wecom-dify-bots":
            volume["configMap"]["name"] = generated["metadata"]["name"]  # the hashed name: edits roll the pods
    assert pod["volumes"] == expected["volumes"]
    assert pod["containers"][0]["env"] == expected["containers"][0]["env"]
    assert pod["containers"][0]["volumeMounts"] == expected["containers"][0]["volumeMounts"]


# -- make run BOTS_FILE=config/bots.example.toml and tools.wecom_sim --bot -------------------------------

EXAMPLE = ROOT / "config" / "bots.example.toml"


def test_development_example_loads_with_generated_values_and_the_simulator() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert all("dify_base_url" not in bot for bot in data["bots"].values())  # the simulator serves them
    env = {name: devserver.development_value(name) for name in devserver.referenced_names(data)}
    env.update(BOTS_FILE=str(EXAMPLE), DIFY_BASE_URL="http://127.0.0.1:8001/v1")
    bots = load_bots(Settings.from_env(env, dotenv=None), env)
    assert len(bots) >= 2 and sum(b.capacity_share for b in bots.values()) <= 1


def test_development_values_by_name() -> None:
    assert len(devserver.development_value("WECOM_TOKEN_HR")) == 32
    assert len(devserver.development_value("WECOM_AES_KEY_HR")) == 43
    assert devserver.development_value("DIFY_KEY_HR") == "app-local-simulator"
    with pytest.raises(SystemExit, match="DIFY_URL_HR"):
        devserver.development_value("DIFY_URL_HR")


def test_devserver_appends_only_the_missing_variables(tmp_path: Path) -> None:
    bots_file = tmp_path / "bots.toml"
    bots_file.write_text('[bots.a]\nwecom_token = "${WECOM_TOKEN_A}"\nwecom_encoding_aes_key = "${WECOM_AES_KEY_A}"\n'
                         'dify_api_key = "${DIFY_KEY_A}"\nstop_commands = ["${WECOM_TOKEN_A}"]\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("WECOM_TOKEN=x")  # no final newline
    added = devserver.ensure_bot_secrets(dotenv, str(bots_file), {"DIFY_KEY_A": "app-real"})
    assert list(added) == ["WECOM_TOKEN_A", "WECOM_AES_KEY_A"]
    from dotenv import dotenv_values

    assert dotenv_values(dotenv) == {"WECOM_TOKEN": "x", **added}
    assert devserver.ensure_bot_secrets(dotenv, str(bots_file), {**added, "DIFY_KEY_A": "k"}) == {}


def test_devserver_refuses_a_variable_it_cannot_invent_and_writes_nothing(tmp_path: Path) -> None:
    bots_file = tmp_path / "bots.toml"
    bots_file.write_text('[bots.a]\nwecom_token = "${WECOM_TOKEN_A}"\ndify_base_url = "${DIFY_URL_A}"\n')
    dotenv = tmp_path / ".env"
    dotenv.write_text("WECOM_TOKEN=x\n")
    with pytest.raises(SystemExit, match=r"\$\{DIFY_URL_A\}"):
        devserver.ensure_bot_secrets(dotenv, str(bots_file), {})
    assert dotenv.read_text() == "WECOM_TOKEN=x\n"


def test_wecom_sim_takes_a_bots_credentials_and_names_the_configured_ids() -> None:
    references = devserver.referenced_names(tomllib.loads(EXAMPLE.read_text()))
    values = {name: devserver.development_value(name) for name in references}
    values["BOTS_FILE"] = str(EXAMPLE)  # no DIFY_BASE_URL: the sim needs only the WeCom credentials
    assert wecom_sim._bot_credentials(values, "hr") == (values["WECOM_TOKEN_HR"], values["WECOM_AES_KEY_HR"], "")
    with pytest.raises(SystemExit, match="configured: hr, it, sales"):
        wecom_sim._bot_credentials(values, "nope")
    with pytest.raises(SystemExit, match="BOTS_FILE is not set"):
        wecom_sim._bot_credentials({"WECOM_TOKEN": "t", "WECOM_ENCODING_AES_KEY": "a" * 43}, "hr")
