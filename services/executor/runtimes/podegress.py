"""Egress by allowlist on Kubernetes: the objects one attempt's proxy needs. Pure functions.

An agent with ``network: {allow: [...]}`` gets, before its own Pod, a proxy Pod
(``<pod>-egress``, the image ``flowyard/egress``: tinyproxy with the attempt's rules,
:mod:`.egressrules`) and a NetworkPolicy of the same name that lets only this attempt's Pod in to
it. The agent's Pod is labelled ``flowyard.io/network: allow``, which the static policy
``agent-allowlist`` (k8s/base/network-policies.yaml) lets reach egress proxies on their port and
nothing else — no DNS, no other Pod, no address outside; ``HTTPS_PROXY`` holds the proxy Pod's
address. Proxies (``flowyard.io/role: egress-proxy``) may reach anywhere and resolve names: the
proxy's filter decides which host:port it connects to. So an agent reaches exactly its list,
and another attempt's proxy refuses it at the door.
"""

from __future__ import annotations

from typing import Any

from shared.contract.messages import TaskDispatched

from . import egressrules
from .podspec import AGENT_UID, LABEL, PodSettings, _lockdown, labels, pod_name

PROXY = "proxy"
ROLE = f"{LABEL}/role"
FOR = f"{LABEL}/egress-for"
ATTEMPT = f"{LABEL}/egress"


def proxy_name(task: TaskDispatched) -> str:
    return f"{pod_name(task.key)}-egress"


def agent_labels(task: TaskDispatched) -> dict[str, str]:
    """What the agent's own Pod carries besides the usual labels."""
    return {f"{LABEL}/network": "allow", ATTEMPT: pod_name(task.key)}


def proxy_env(address: str) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in egressrules.proxy_env(address).items()]


def proxy_pod(task: TaskDispatched, settings: PodSettings, image: str) -> dict[str, Any]:
    allow = list(task.agent.egress_allow)
    tags = labels(task, settings) | {f"{LABEL}/network": "proxy", ROLE: "egress-proxy", FOR: pod_name(task.key)}
    port = egressrules.PORT
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": proxy_name(task),
            "namespace": settings.namespace,
            "labels": tags,
            "annotations": {f"{LABEL}/key": task.key},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": int(task.timeout_s) + 600,
            "terminationGracePeriodSeconds": 2,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": AGENT_UID,
                "runAsGroup": AGENT_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": PROXY,
                    "image": image,
                    "imagePullPolicy": settings.pull_policy,
                    "command": ["/usr/local/bin/egress-proxy"],
                    "env": [
                        {"name": egressrules.IMAGE_ENV_CONFIG, "value": egressrules.config()},
                        {"name": egressrules.IMAGE_ENV_FILTER, "value": egressrules.filter_text(allow)},
                    ],
                    "ports": [{"name": "proxy", "containerPort": port, "protocol": "TCP"}],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                    "resources": {
                        "requests": {"cpu": "20m", "memory": "32Mi"},
                        "limits": {"cpu": "500m", "memory": "64Mi"},
                    },
                    "securityContext": _lockdown(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}}],
        },
    }


def proxy_policy(task: TaskDispatched, settings: PodSettings) -> dict[str, Any]:
    """Into this attempt's proxy: from this attempt's Pod only, on the proxy's port."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": proxy_name(task),
            "namespace": settings.namespace,
            "labels": labels(task, settings),
        },
        "spec": {
            "podSelector": {"matchLabels": {ROLE: "egress-proxy", FOR: pod_name(task.key)}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {ATTEMPT: pod_name(task.key)}}}],
                    "ports": [{"protocol": "TCP", "port": egressrules.PORT}],
                }
            ],
        },
    }


def ready_address(pod_obj: dict[str, Any]) -> str | None:
    """The proxy Pod's address once it accepts connections (its readiness probe passed)."""
    status = pod_obj.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("podIP") if ready else None


def proxy_failed(pod_obj: dict[str, Any]) -> str | None:
    """Why the proxy Pod will not become ready, in words; None while it still may."""
    status = pod_obj.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return f"the egress proxy pod ended ({status.get('phase')}) before the agent started"
    for s in status.get("containerStatuses") or []:
        reason = ((s.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
            return f"the egress proxy's image {s.get('image')!r} cannot be pulled ({reason})"
    return None
