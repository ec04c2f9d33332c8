"""The kubernetes runtime's pure part: names, the Pod and Secret it asks for, and reading a Pod's status."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.runtimes import podspec
from shared.contract.messages import AgentSnapshot, TaskDispatched

SETTINGS = podspec.PodSettings(namespace="flowyard-agents", helper_image="flowyard/flowyard:0.1.0", pull_policy="Never")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _task(**agent: object) -> TaskDispatched:
    snapshot = AgentSnapshot(name="deploy.Check_1", image="registry.local/check:1", command=["check"], **agent)  # type: ignore[arg-type]
    return TaskDispatched(run_id="01JRUN", workflow="Nightly Fleet", node_id="hosts", attempt=2, item=7, agent=snapshot)


@given(st.text(min_size=1, max_size=300))
def test_a_pod_name_is_a_dns_label_and_distinct_per_key(key: str) -> None:
    name = podspec.pod_name(key)
    assert len(name) <= 63 and DNS_LABEL.fullmatch(name), name
    assert podspec.pod_name(key + "x") != name


@given(st.text(max_size=300))
def test_a_label_value_is_always_valid(text: str) -> None:
    value = podspec.label_value(text)
    assert len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value), value


@pytest.mark.parametrize("workspace", ["none", "ro", "rw"])
def test_the_pod_validates_strictly_and_holds_no_values(workspace: str) -> None:
    task = _task(network="egress", workspace=workspace)
    pod = podspec.pod(
        task,
        SETTINGS,
        command=["check", "--all"],
        env_names=["API_TOKEN"],
        mark="--m--",
        workspace=workspace,
        timeout_s=90.5,
        max_output_bytes=1024,
    )
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    data = podspec.secret_data(
        b'{"fleet_member": "a"}', {"API_TOKEN": "t0ken"}, b"packed" if workspace != "none" else None
    )
    secret = podspec.secret(task, SETTINGS, data)
    kubernetes_validate.validate(secret, kubernetes_validate.latest_version(), strict=True)
    assert "t0ken" not in str(pod) and "fleet_member" not in str(pod)
    agent = pod["spec"]["containers"][0]
    assert agent["command"][-2:] == ["check", "--all"] and agent["command"][:2] == ["/bin/sh", "-c"]
    assert pod["spec"]["activeDeadlineSeconds"] >= 91
    assert pod["metadata"]["labels"]["flowyard.io/network"] == "egress"
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == (["agent", "workspace-out"] if workspace == "rw" else ["agent"])
    assert ("initContainers" in pod["spec"]) == (workspace != "none")


def _pod(phase: str, agent_state: dict | None = None, reason: str | None = None, **more: object) -> dict:
    status: dict = {"phase": phase, **more}
    if reason:
        status["reason"] = reason
    if agent_state is not None:
        status["containerStatuses"] = [{"name": "agent", "image": "i", "state": agent_state}]
    return {"status": status}


def test_reading_a_pods_state() -> None:
    assert podspec.read_state(_pod("Pending")) == podspec.PodState("Pending")
    running = podspec.read_state(_pod("Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}))
    assert running.started_at and running.exit_code is None and not running.ended
    done = podspec.read_state(_pod("Succeeded", {"terminated": {"exitCode": 0, "startedAt": "x"}}))
    assert done.exit_code == 0 and done.ended
    oom = podspec.read_state(_pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))
    assert oom.oom and oom.exit_code == 137
    late = podspec.read_state(_pod("Failed", {"running": {"startedAt": "x"}}, reason="DeadlineExceeded"))
    assert late.deadline and late.ended
    pull = podspec.read_state(_pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}))
    assert pull.refused and "ImagePullBackOff" in pull.refused and "'i'" in pull.refused
    config = podspec.read_state(
        _pod("Pending", {"waiting": {"reason": "CreateContainerConfigError", "message": "no key"}})
    )
    assert config.refused and "no key" in config.refused
    # Still creating is not a refusal.
    assert podspec.read_state(_pod("Pending", {"waiting": {"reason": "ContainerCreating"}})).refused is None


def test_splitting_the_log_at_the_mark() -> None:
    log = b'progress 1\nprogress 2\n\n--m--\n{"ok": true}'
    out, err, marked = podspec.split_log(log, "--m--", max_output_bytes=100, stderr_keep=1000)
    assert marked and out == b'{"ok": true}' and err == b"progress 1\nprogress 2\n"
    # No mark (killed before the wrapper printed it): everything is stderr.
    out, err, marked = podspec.split_log(b"boom\n", "--m--", max_output_bytes=100, stderr_keep=1000)
    assert not marked and out == b"" and err == b"boom\n"
    # An agent that prints the mark's text on stderr cannot fake a result: the last one counts.
    log = b"\n--m--\nfake\n\n--m--\nreal"
    assert podspec.split_log(log, "--m--", max_output_bytes=100, stderr_keep=1000)[0] == b"real"
    # Over the limit: one byte past it, so the overflow is seen.
    assert podspec.split_log(b"\n--m--\n" + b"x" * 50, "--m--", max_output_bytes=10, stderr_keep=5)[0] == b"x" * 11


def test_an_input_too_big_for_a_secret_is_named() -> None:
    assert podspec.too_big(b"x" * 1000, {}, None) is None
    why = podspec.too_big(b"x" * 2_000_000, {}, None)
    assert why and "Secret" in why and "docker runtime" in why
