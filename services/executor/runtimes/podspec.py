"""What the Kubernetes runtime asks the API for, and how it reads the answers: pure functions.

One attempt is one Pod named after the attempt's key, and one Secret of the same name made
before it: the agent's input (``input.json``), its environment (secrets included, so the Pod
spec names them but never holds their values) and, for an agent with a workspace, the packed
version the init container copies in. The kubelet starts no container before the Secret's
volume is mounted, so an agent always has its whole input, whatever happens to the executor
(docs/adr/0012-agents-as-kubernetes-pods.md).

The agent's container runs a `/bin/sh` wrapper: the agent reads ``input.json`` on stdin and
writes its stdout to a file; when it ends the wrapper prints a line only this attempt knows (the
*mark*) and then that file, so the container's log is the agent's stderr (streamed while it
runs), the mark, and its stdout — Kubernetes keeps one log per container, not two streams.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.contract.messages import TaskDispatched
from shared.state import workspace as ws

from .base import DEFAULT_CPUS, memory_limit

AGENT = "agent"
COLLECT = "workspace-out"
LABEL = "flowyard.io"
INPUT_DIR = "/flowyard/input"
OUT_DIR = "/flowyard/out"
AGENT_UID = ws.AGENT_UID
# A Secret holds at most 1 MiB; leave room for its keys and metadata.
SECRET_MAX = 1024 * 1024 - 16 * 1024
# Image pull and container config errors the kubelet reports while the Pod waits: the agent's
# settings (or the cluster's registry access) are at fault, not a passing condition.
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}

# $1 is the mark; the rest is the agent's command. Not `exec`: the wrapper prints the agent's
# stdout after it, and writes its exit status for the workspace collector.
WRAPPER = (
    f'mark="$1"; shift; "$@" < {INPUT_DIR}/input.json > {OUT_DIR}/stdout; code=$?; '
    f'printf "\\n%s\\n" "$mark"; cat {OUT_DIR}/stdout; echo "$code" > {OUT_DIR}/exit; exit "$code"'
)


def pod_name(key: str) -> str:
    """A DNS-1123 name for the attempt's key: readable, and unique by a hash of the whole key."""
    slug = re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")[:40].strip("-")
    return f"fy-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def label_value(text: str) -> str:
    """A label value (63 characters of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:63]
    return value.strip("_.-") or "x"


def mark_for(key: str, nonce: str) -> str:
    return f"--flowyard-result-{hashlib.sha256(f'{key}:{nonce}'.encode()).hexdigest()[:24]}--"


@dataclass(frozen=True, slots=True)
class PodSettings:
    namespace: str
    helper_image: str
    pull_policy: str
    stack_id: str | None = None


def secret_data(stdin: bytes, env: Mapping[str, str], workspace: bytes | None) -> dict[str, str]:
    """The Secret's ``data`` (base64): ``input.json``, ``env.NAME`` per variable, ``workspace.tgz``."""
    data = {"input.json": base64.b64encode(stdin).decode()}
    for name, value in env.items():
        data[f"env.{name}"] = base64.b64encode(value.encode()).decode()
    if workspace:
        data["workspace.tgz"] = base64.b64encode(workspace).decode()
    return data


def too_big(stdin: bytes, env: Mapping[str, str], workspace: bytes | None) -> str | None:
    size = len(stdin) + sum(len(k) + len(v) for k, v in env.items()) + len(workspace or b"")
    if size <= SECRET_MAX:
        return None
    return (
        f"the attempt's input, environment and workspace come to {size} bytes; on the kubernetes runtime "
        f"they travel in one Secret, which holds at most {SECRET_MAX} — pass large data by reference "
        "(a URL, an object store) or run this agent on the docker runtime"
    )


def labels(task: TaskDispatched, settings: PodSettings) -> dict[str, str]:
    out = {
        f"{LABEL}/run": label_value(task.run_id),
        f"{LABEL}/node": label_value(task.node_id),
        f"{LABEL}/attempt": str(task.attempt),
        f"{LABEL}/workflow": label_value(task.workflow),
        f"{LABEL}/agent": label_value(task.agent.name),
        # What NetworkPolicy agent-egress selects: only an agent that asked for the network gets it.
        f"{LABEL}/network": task.agent.network,
        "app.kubernetes.io/managed-by": "flowyard",
    }
    if settings.stack_id:
        out[f"{LABEL}/stack"] = settings.stack_id
    return out


def secret(task: TaskDispatched, settings: PodSettings, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": pod_name(task.key),
            "namespace": settings.namespace,
            "labels": labels(task, settings),
            "annotations": {f"{LABEL}/key": task.key},
        },
        "type": "Opaque",
        "data": data,
    }


def _lockdown() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod(
    task: TaskDispatched,
    settings: PodSettings,
    *,
    command: list[str],
    env_names: list[str],
    mark: str,
    workspace: str,  # "none", "ro", "rw"
    timeout_s: float,
    max_output_bytes: int,
    workspace_max_bytes: int = 64 * 1024 * 1024,
    extra_labels: Mapping[str, str] | None = None,
    extra_env: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """``extra_labels``/``extra_env``: what egress by allowlist adds (:mod:`.podegress`)."""
    agent = task.agent
    name = pod_name(task.key)
    memory = memory_limit(agent.resources.memory)
    cpus = agent.resources.cpus or DEFAULT_CPUS
    limits = {"memory": str(memory), "cpu": f"{math.ceil(cpus * 1000)}m"}
    base_env = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    if workspace != "none":
        base_env["FLOWYARD_WORKSPACE"] = ws.MOUNT
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in base_env.items()]
    # Values stay in the Secret: the Pod spec (readable by more people) holds only their names.
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": name, "key": f"env.{n}"}}} for n in sorted(env_names)]
    env += extra_env or []
    mounts = [
        {"name": "input", "mountPath": INPUT_DIR, "readOnly": True},
        {"name": "out", "mountPath": OUT_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "input",
            "secret": {
                "secretName": name,
                "items": [{"key": "input.json", "path": "input.json"}],
                "defaultMode": 0o444,
            },
        },
        # stdout (up to the limit, and a little) and the exit status, for the wrapper and the collector.
        {"name": "out", "emptyDir": {"medium": "Memory", "sizeLimit": str(max_output_bytes * 2 + 1024 * 1024)}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    helper_resources = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}
    init: list[dict[str, Any]] = []
    sidecars: list[dict[str, Any]] = []
    if workspace != "none":
        mounts.append({"name": "workspace", "mountPath": ws.MOUNT, "readOnly": workspace == "ro"})
        volumes += [
            {"name": "workspace", "emptyDir": {}},
            {
                "name": "workspace-in",
                "secret": {"secretName": name, "items": [{"key": "workspace.tgz", "path": "workspace.tgz"}]},
            },
        ]
        init.append(
            {
                "name": "workspace-in",
                "image": settings.helper_image,
                "imagePullPolicy": settings.pull_policy,
                "command": ["python3", "-m", "services.executor.podinit", "unpack", "/flowyard/workspace-in", ws.MOUNT],
                "securityContext": _lockdown(),
                "resources": helper_resources,
                "volumeMounts": [
                    {"name": "workspace-in", "mountPath": "/flowyard/workspace-in", "readOnly": True},
                    {"name": "workspace", "mountPath": ws.MOUNT},
                ],
            }
        )
        if workspace == "rw":
            # Reads back what the agent left, once its exit status is written; prints it packed.
            sidecars.append(
                {
                    "name": COLLECT,
                    "image": settings.helper_image,
                    "imagePullPolicy": settings.pull_policy,
                    "command": [
                        *("python3", "-m", "services.executor.podinit", "collect"),
                        *(ws.MOUNT, OUT_DIR, str(workspace_max_bytes)),
                    ],
                    "securityContext": _lockdown(),
                    "resources": helper_resources,
                    "volumeMounts": [
                        {"name": "workspace", "mountPath": ws.MOUNT, "readOnly": True},
                        {"name": "out", "mountPath": OUT_DIR, "readOnly": True},
                    ],
                }
            )
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Scheduling and the image pull come first; the executor holds the agent to its own timeout.
        "activeDeadlineSeconds": math.ceil(timeout_s) + 300,
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": AGENT_UID,
            "runAsGroup": AGENT_UID,
            "fsGroup": AGENT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": AGENT,
                "image": agent.image,
                "imagePullPolicy": settings.pull_policy,
                "command": ["/bin/sh", "-c", WRAPPER, "flowyard-agent", mark, *command],
                "workingDir": ws.MOUNT if workspace != "none" else "/tmp",
                "env": env,
                "resources": {"requests": dict(limits), "limits": dict(limits)},
                "securityContext": _lockdown(),
                "volumeMounts": mounts,
            },
            *sidecars,
        ],
        "volumes": volumes,
    }
    if init:
        spec["initContainers"] = init
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels(task, settings) | dict(extra_labels or {}),
            "annotations": {
                f"{LABEL}/key": task.key,
                f"{LABEL}/mark": mark,
                f"{LABEL}/timeout": repr(timeout_s),
                f"{LABEL}/workspace": workspace,
            },
        },
        "spec": spec,
    }


# --- reading what happened ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodState:
    """What a Pod's status says, in the terms an attempt is judged by."""

    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    started_at: str | None = None  # the agent container's start
    exit_code: int | None = None  # once the agent container has terminated
    oom: bool = False
    deadline: bool = False  # the Pod's activeDeadlineSeconds ran out
    refused: str | None = None  # it will never start: why, in words
    collected: bool = True  # the workspace collector (if any) has ended

    @property
    def ended(self) -> bool:
        return self.refused is not None or self.phase in ("Succeeded", "Failed")


def read_state(pod_obj: Mapping[str, Any]) -> PodState:
    status = pod_obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    statuses = {s.get("name"): s for s in status.get("containerStatuses") or []}
    for s in [*(status.get("initContainerStatuses") or []), *statuses.values()]:
        waiting = (s.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in IMAGE_ERRORS:
            image = s.get("image") or "its image"
            return PodState(
                phase,
                refused=f"the cluster cannot pull image {image!r} for container {s.get('name')} ({reason}: "
                f"{waiting.get('message', '').strip() or 'no detail'}); push it where the nodes pull from",
            )
        if reason in CONFIG_ERRORS:
            return PodState(
                phase,
                refused=f"Kubernetes cannot start container {s.get('name')}: {reason}: "
                f"{waiting.get('message', '').strip() or 'no detail'}",
            )
    agent = statuses.get(AGENT) or {}
    state = agent.get("state") or {}
    started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    terminated = state.get("terminated")
    collector = statuses.get(COLLECT)
    collected = collector is None or "terminated" in (collector.get("state") or {})
    deadline = status.get("reason") == "DeadlineExceeded"
    if terminated is None:
        return PodState(phase, started_at=started, deadline=deadline, collected=collected)
    return PodState(
        phase,
        started_at=started,
        exit_code=terminated.get("exitCode"),
        oom=terminated.get("reason") == "OOMKilled",
        deadline=deadline,
        collected=collected,
    )


def split_log(log: bytes, mark: str, *, max_output_bytes: int, stderr_keep: int) -> tuple[bytes, bytes, bool]:
    """(stdout up to one byte past the limit, the tail of stderr, whether the mark was found)."""
    needle = b"\n" + mark.encode() + b"\n"
    at = log.rfind(needle)
    if at < 0:
        return b"", log[-stderr_keep:], False
    stderr = log[:at]
    stdout = log[at + len(needle) :]
    return stdout[: max_output_bytes + 1], stderr[-stderr_keep:], True


def collected_workspace(log: bytes) -> bytes | None:
    """The packed workspace the collector printed (base64 on one line), or None."""
    text = log.strip()
    if not text:
        return None
    return base64.b64decode(text.splitlines()[-1])


def epoch(text: str | None) -> float:
    if not text:
        return 0.0
    if isinstance(text, datetime):
        return text.timestamp()
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
