"""The Kubernetes operator kit: every kustomization under k8s/ rendered (in Python, and by kustomize where it is
installed) and validated, core kinds against the Kubernetes schema and custom ones against their vendored CRDs;
the namespace, the private metrics port, the Ingress, the NetworkPolicy, KEDA autoscaling and the migration Job."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from flask import Flask

from services.routes import callback, health, metrics
from tests import crds, kustomize
from tests.conftest import MySQLParams
from tests.test_monitoring import exported

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
K8S_VERSION = "1.33"
Doc = dict[str, Any]
# every kustomization and what applying it is for (a test checks that none is left out)
KUSTOMIZATIONS = (".", "base", "bots", "keda", "ingress", "migrate", "monitoring")


def render(name: str) -> list[Doc]:
    return kustomize.build(K8S / name)


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    [doc] = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def namespace() -> str:
    value: str = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["namespace"]
    return value


def validate(doc: Doc) -> None:
    """Against its CRD's schema when it is a custom resource, else the Kubernetes schema (strict: no unknown field)."""
    if crds.is_custom(doc):
        crds.validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- every manifest, rendered and validated -------------------------------------------------------------------

def test_every_kustomization_is_checked() -> None:
    found = {str(p.parent.relative_to(K8S)) for p in K8S.rglob("kustomization.yaml")
             if yaml.safe_load(p.read_text())["kind"] == "Kustomization"}
    assert found == set(KUSTOMIZATIONS)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_valid_manifests_in_one_namespace(name: str) -> None:
    docs = render(name)
    assert docs
    for doc in docs:
        validate(doc)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace()
        else:
            assert doc["metadata"].get("namespace") == namespace(), (doc["kind"], doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "wecom-dify"


@pytest.mark.parametrize("directory", sorted({p.parent for p in K8S.rglob("kustomization.yaml")}))
def test_every_file_is_listed_by_its_kustomization(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = {*kustomization.get("resources", []),
              *(f for g in kustomization.get("configMapGenerator", []) for f in g["files"])}
    present = {p.name for p in directory.iterdir() if p.is_file()} - {"kustomization.yaml", "secret.example.yaml"}
    assert present <= listed


@pytest.mark.skipif(kustomize.KUSTOMIZE is None, reason="neither kustomize nor kubectl on PATH")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_builds_what_the_tests_render(name: str) -> None:
    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    built = kustomize.kubectl_build(K8S / name, kustomize.generator_names(K8S))
    assert sorted(built, key=key) == sorted(render(name), key=key)


def test_custom_resource_validation_can_fail() -> None:
    monitor = copy.deepcopy(one(render("monitoring"), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"  # not a Prometheus duration
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(monitor)
    rule = copy.deepcopy(one(render("monitoring"), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["severity"] = "warning"  # belongs under labels
    with pytest.raises(jsonschema.ValidationError):
        crds.validate(rule)
    with pytest.raises(KeyError):
        crds.validate({**rule, "apiVersion": "monitoring.coreos.com/v9"})


# -- /metrics private ---------------------------------------------------------------------------------------

def ports(container: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_metrics_are_served_on_their_own_port_behind_their_own_service() -> None:
    docs = render("base")
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    config = one(docs, "ConfigMap", "wecom-dify-config")["data"]
    assert ports(container)["metrics"] == int(config["METRICS_PORT"]) != ports(container)["http"]
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/port"] == config["METRICS_PORT"]
    public = one(docs, "Service", "wecom-dify")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]  # the Ingress's Service: no metrics
    private = one(docs, "Service", "wecom-dify-metrics")
    assert [p["targetPort"] for p in private["spec"]["ports"]] == ["metrics"]
    monitor = one(render("monitoring"), "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= private["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= public["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in private["spec"]["ports"]]


# -- Ingress -------------------------------------------------------------------------------------------------

def prefix_matches(prefix: str, path: str) -> bool:
    """Kubernetes ``pathType: Prefix``: whole path elements."""
    want, have = prefix.rstrip("/").split("/"), path.rstrip("/").split("/")
    return have[:len(want)] == want


def sample_paths(*blueprints: Any) -> set[str]:
    app = Flask(__name__)
    for bp in blueprints:
        app.register_blueprint(bp)
    return {re.sub(r"<[^>]+>", "hr", rule.rule) for rule in app.url_map.iter_rules() if rule.endpoint != "static"}


def test_ingress_exposes_the_callbacks_only_over_tls() -> None:
    ingress = one(render("ingress"), "Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    [rule] = ingress["spec"]["rules"]
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]] and ingress["spec"]["tls"][0]["secretName"]
    paths = rule["http"]["paths"]
    assert {p["pathType"] for p in paths} == {"Prefix"}
    callbacks, private = sample_paths(callback.bp), sample_paths(health.bp, metrics.bp)
    assert callbacks == {"/wecom/callback", "/wecom/callback/hr"}
    for path in callbacks:
        assert any(prefix_matches(p["path"], path) for p in paths), path
    for path in private | {"/", "/wecom/callbackx"}:
        assert not any(prefix_matches(p["path"], path) for p in paths), path
    base = render("base")
    for p in paths:
        backend = p["backend"]["service"]
        service = one(base, "Service", backend["name"])
        assert backend["port"]["name"] in {port["name"] for port in service["spec"]["ports"]} == {"http"}


# -- NetworkPolicy -------------------------------------------------------------------------------------------

def test_network_policy_admits_each_port_from_its_namespace_only() -> None:
    docs = render("base")
    policy = one(docs, "NetworkPolicy")
    pod = one(docs, "Deployment")["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    admitted = {}
    for rule in policy["spec"]["ingress"]:
        [source] = rule["from"]
        assert set(source) == {"namespaceSelector"}  # whole namespaces, named by their automatic label
        [(label, namespace_name)] = source["namespaceSelector"]["matchLabels"].items()
        assert label == "kubernetes.io/metadata.name"
        for port in rule["ports"]:
            admitted[port["port"]] = namespace_name
    assert admitted == {"http": "ingress-nginx", "metrics": "monitoring"}
    assert set(admitted) == set(ports(pod["spec"]["containers"][0]))  # every container port, once
    egress = {(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (3306, "TCP"), (443, "TCP")} <= egress


# -- KEDA ----------------------------------------------------------------------------------------------------

def test_keda_replaces_the_cpu_hpa_with_a_scaled_object_on_saturation() -> None:
    base, keda = render("base"), render("keda")
    hpa = one(base, "HorizontalPodAutoscaler")
    assert not [d for d in keda if d["kind"] == "HorizontalPodAutoscaler"]  # KEDA's own HPA is the only one
    assert [d for d in keda if d["kind"] != "ScaledObject"] == [d for d in base if d["kind"] != hpa["kind"]]
    so = one(keda, "ScaledObject")["spec"]
    target = so["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", one(keda, "Deployment")["metadata"]["name"])
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    assert so["minReplicaCount"] <= so["fallback"]["replicas"] <= so["maxReplicaCount"]
    triggers = {t["type"]: t for t in so["triggers"]}
    assert triggers["cpu"]["metadata"]["value"] == str(hpa["spec"]["metrics"][0]["resource"]["target"][
        "averageUtilization"])
    saturation = triggers["prometheus"]
    assert saturation["metricType"] == "Value"  # replicas × ratio / threshold: scales with the utilisation
    assert saturation["metadata"]["ignoreNullValues"] == "false"  # no series: the fallback, not a scale-down
    query = saturation["metadata"]["query"]
    assert set(re.findall(r"wecom_dify_[a-z_]+", query)) == {"wecom_dify_engine_jobs", "wecom_dify_engine_capacity"}
    assert set(re.findall(r"wecom_dify_[a-z_]+", query)) <= exported()
    assert set(re.findall(r'namespace="([^"]+)"', query)) == {namespace()}
    alert = next(r for g in one(render("monitoring"), "PrometheusRule")["spec"]["groups"] for r in g["rules"]
                 if r["alert"] == "WeComDifySaturated")
    assert re.sub(r"\{[^}]*\}", "", query) in alert["expr"]  # the alert's ratio, per namespace
    assert 0 < float(saturation["metadata"]["threshold"]) < float(alert["expr"].split(">")[1].split()[0])


def test_scaled_object_validation_can_fail() -> None:
    so = one(render("keda"), "ScaledObject")
    for path, value in ((("spec", "minReplicas"), 3),  # a typo of minReplicaCount: unknown field
                        (("spec", "minReplicaCount"), "three"),
                        (("spec", "triggers", 0, "metadata", "threshold"), 0.6)):  # metadata values are strings
        broken = copy.deepcopy(so)
        node: Any = broken
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            crds.validate(broken)


def test_keda_component_composes_with_the_bots_overlay(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace(),
        "resources": [os.path.relpath(K8S / "bots", tmp_path)],  # kustomize takes no absolute root
        "components": [os.path.relpath(K8S / "components" / "keda", tmp_path)]}))
    docs = kustomize.build(tmp_path)
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert one(docs, "ScaledObject")["metadata"]["namespace"] == namespace()
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "BOTS_FILE" in {e["name"] for e in container["env"]}
    for doc in docs:
        validate(doc)
    if kustomize.KUSTOMIZE is not None:
        assert len(kustomize.kubectl_build(tmp_path, kustomize.generator_names(K8S))) == len(docs)


# -- the migration Job ---------------------------------------------------------------------------------------

def job_container() -> Doc:
    container: Doc
    [container] = one(render("migrate"), "Job")["spec"]["template"]["spec"]["containers"]
    return container


def test_migration_job_runs_the_users_tool_with_the_deployments_image_and_env() -> None:
    base = render("base")
    job = one(render("migrate"), "Job")
    [app] = one(base, "Deployment")["spec"]["template"]["spec"]["containers"]
    container = job_container()
    assert container["image"] == app["image"]  # both kustomizations set the same image
    assert container["envFrom"] == app["envFrom"]
    assert container["command"] == ["python", "-m", "tools.users", "migrate"]
    assert container["securityContext"] == app["securityContext"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    labels = job["spec"]["template"]["metadata"]["labels"]
    for doc in base:  # no Service, PDB or policy of the bridge counts the Job's pod as one of its pods
        selector = doc.get("spec", {}).get("selector") or doc.get("spec", {}).get("podSelector")
        if isinstance(selector, dict):
            assert not selector.get("matchLabels", selector).items() <= labels.items(), doc["kind"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "tools/users.py" in dockerfile and "COPY services/" in dockerfile  # the tool and services/sql/


def test_migration_job_command_migrates_a_real_database(mysql_params: MySQLParams, tmp_path: Path) -> None:
    config = one(render("base"), "ConfigMap", "wecom-dify-config")["data"]
    env = {**config, "AUTH_MODE": "mysql", "MYSQL_HOST": mysql_params.host, "MYSQL_PORT": str(mysql_params.port),
           "MYSQL_USER": mysql_params.user, "MYSQL_PASSWORD": mysql_params.password, "MYSQL_DATABASE": "k8s_job",
           "PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)}
    command = [sys.executable if arg == "python" else arg for arg in job_container()["command"]]
    for _ in range(2):  # idempotent: a Job applied again does nothing
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "applied: nothing (up to date)"
    import pymysql

    with pymysql.connect(host=mysql_params.host, port=mysql_params.port, user=mysql_params.user,
                         password=mysql_params.password, database="k8s_job") as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES LIKE 'wecom_users'")
        assert cur.fetchall()
