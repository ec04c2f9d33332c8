"""k8s/: every overlay renders with `kubectl kustomize` (kustomize v5), every object validates
strictly with kubernetes-validate, and the security properties hold on what is rendered — so a
later change cannot drop `readOnlyRootFilesystem` (or a NetworkPolicy, or a PDB) silently.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.config.settings import load_config
from shared.contract import permissions as natsperms
from shared.contract import subjects

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod", "prod-no-keda")
VERSION = kubernetes_validate.latest_version()


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("FLOWYARD_REQUIRE_SERVERS"):
            pytest.fail("kubectl (with kustomize v5) is needed to render k8s/; .ci/run installs it")
        pytest.skip("kubectl is not installed")
    return found


@functools.cache
def render(path: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / "k8s" / path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]["spec"]
    return out


@pytest.mark.parametrize("overlay", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_object_renders_and_validates_strictly(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked field by field below
        try:
            kubernetes_validate.validate(doc, VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(overlay: str) -> None:
    for where, spec in pod_specs(render(f"overlays/{overlay}")).items():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        wants_api = where == "Deployment/executor"
        assert spec["automountServiceAccountToken"] is wants_api, where
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert sc.get("privileged") is not True, where
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], where
            assert res["limits"]["cpu"] and res["limits"]["memory"], where
            # Secrets by name only: never a value in a manifest.
            for e in c.get("env", []):
                assert "value" in e or "valueFrom" in e, where
                assert "PASSWORD" not in e["name"] or e["name"].endswith("_SECRET"), f"{where}: {e['name']}"
        assert all(not v.get("hostPath") for v in spec.get("volumes", [])), f"{where}: a host path"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probe_health_and_readiness_and_run_as_their_own_nats_user(overlay: str) -> None:
    docs = render(f"overlays/{overlay}")
    deployments = of(docs, "Deployment")
    assert set(deployments) == set(natsperms.SERVICES)
    assert not of(docs, "Secret"), "a Secret in the manifests: they are made by the operator (docs/deploy.md)"
    for name, d in deployments.items():
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["args"] == ["serve", name]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["FLOWYARD_NATS_USER"] == name and name in natsperms.USERS
        assert env["FLOWYARD_NATS_PASSWORD_SECRET"] == f"NATS_PASSWORD_{name.upper()}"
        # Each mounts its own password and no one else's.
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        sources = volumes["secrets"]["projected"]["sources"]
        keys = [i["key"] for s in sources for i in s["secret"].get("items", [])]
        assert keys == [f"NATS_PASSWORD_{name.upper()}"], (name, keys)
    job = of(docs, "Job")["flowyard-bootstrap"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWYARD_NATS_USER"] == "admin"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_is_a_valid_configuration(overlay: str, tmp_path: Path) -> None:
    cm = of(render(f"overlays/{overlay}"), "ConfigMap")["flowyard-config"]
    path = tmp_path / "flowyard.yaml"
    path.write_text(cm["data"]["flowyard.yaml"])
    config = load_config(path, env={})
    assert config.executor.runtime == "kubernetes" and config.executor.kubernetes.namespace == "flowyard-agents"
    assert config.nats.url.startswith("nats://nats.flowyard.svc")


def test_network_policies_deny_by_default_and_open_only_what_is_needed() -> None:
    docs = render("overlays/prod")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    by_ns: dict[str, list[dict[str, Any]]] = {}
    for p in policies:
        by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
    for ns in ("flowyard", "flowyard-agents"):
        deny = [p for p in by_ns[ns] if p["spec"]["podSelector"] == {} and p["metadata"]["name"] == "default-deny"]
        assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, ns
        assert "ingress" not in deny[0]["spec"] and "egress" not in deny[0]["spec"]
    # Only the gateway accepts traffic from anywhere (an ingress rule with no `from`).
    open_ingress = [
        p["metadata"]["name"] for p in policies for rule in p["spec"].get("ingress", []) if "from" not in rule
    ]
    assert open_ingress == ["gateway-ingress"]
    gateway = next(p for p in policies if p["metadata"]["name"] == "gateway-ingress")
    assert gateway["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "gateway"}
    # Agents get egress only by the labels the runtime sets: `network: egress` the internet;
    # `network: {allow: [...]}` the egress proxies' port and nothing else; the proxies anywhere
    # (each one's filter decides), and into each proxy only its attempt's Pod, by a policy the
    # executor makes per attempt (tests/integration/test_kubernetes_egress.py).
    agents = {p["metadata"]["name"]: p["spec"] for p in by_ns["flowyard-agents"] if p["spec"].get("egress")}
    assert {n: s["podSelector"] for n, s in agents.items()} == {
        "agent-egress": {"matchLabels": {"flowyard.io/network": "egress"}},
        "agent-allowlist": {"matchLabels": {"flowyard.io/network": "allow"}},
        "egress-proxy": {"matchLabels": {"flowyard.io/role": "egress-proxy"}},
    }
    assert agents["agent-allowlist"]["egress"] == [
        {"to": [{"podSelector": {"matchLabels": {"flowyard.io/role": "egress-proxy"}}}],
         "ports": [{"protocol": "TCP", "port": 3128}]}
    ]  # fmt: skip
    assert not any(p["spec"].get("ingress") for p in by_ns["flowyard-agents"])


def test_the_executor_may_only_manage_pods_secrets_and_proxy_policies_in_the_agents_namespace() -> None:
    docs = render("overlays/prod")
    roles = of(docs, "Role")
    assert list(roles) == ["flowyard-executor"] and not of(docs, "ClusterRole")
    role = roles["flowyard-executor"]
    assert role["metadata"]["namespace"] == "flowyard-agents"
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert not {r for r, _ in granted} - {"pods", "pods/log", "secrets", "networkpolicies"}
    # Network policies: only the per-attempt ones of egress proxies (made, read, removed).
    assert {v for r, v in granted if r == "networkpolicies"} == {"create", "get", "delete"}
    assert ("pods/exec", "create") not in granted and ("pods/attach", "create") not in granted
    binding = of(docs, "RoleBinding")["flowyard-executor"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "executor", "namespace": "flowyard"}]


def test_prod_is_a_three_server_cluster_with_two_of_everything_and_budgets() -> None:
    docs = render("overlays/prod")
    for name, d in of(docs, "Deployment").items():
        assert d["spec"]["replicas"] >= 2, name
        assert d["spec"]["template"]["spec"]["topologySpreadConstraints"], name
    nats = of(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    spec = nats["spec"]["template"]["spec"]
    assert spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    routes = env["NATS_ROUTES"].split()
    assert len(routes) == 3 and all(r.startswith("nats-route://nats-") for r in routes)
    assert env["NATS_CLUSTER_NAME"] and env["FLOWYARD_BUS_REPLICAS"] == "3"
    assert nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    pdbs = of(docs, "PodDisruptionBudget")
    assert set(pdbs) == {*natsperms.SERVICES, "nats"}
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs.values())
    job = of(docs, "Job")["flowyard-bootstrap"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWYARD_BUS_REPLICAS"] == "3"


def test_dev_is_one_of_each() -> None:
    docs = render("overlays/dev")
    assert all(d["spec"]["replicas"] == 1 for d in of(docs, "Deployment").values())
    assert of(docs, "StatefulSet")["nats"]["spec"]["replicas"] == 1
    assert not [d for d in docs if d["kind"] == "ScaledObject"]


def test_keda_scales_executors_on_their_dispatch_consumer_and_prod_no_keda_has_no_autoscaler() -> None:
    scaled = [d for d in render("overlays/prod") if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    spec = scaled[0]["spec"]
    assert spec["scaleTargetRef"] == {"name": "executor"} and spec["minReplicaCount"] >= 2
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert meta["stream"] == subjects.TASKS_STREAM and meta["consumer"] == "executor-default"
    assert meta["account"] == "FLOWYARD" and meta["natsServerMonitoringEndpoint"].endswith(":8222")
    assert int(meta["lagThreshold"]) > 0
    without = render("overlays/prod-no-keda")
    assert not [d for d in without if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    assert of(without, "Deployment")["executor"]["spec"]["replicas"] >= 2
