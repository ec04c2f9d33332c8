"""Egress by allowlist on Docker: an attempt's own internal network whose only way out is a proxy.

For an agent with ``network: {allow: [...]}`` the attempt gets a network created with
``Internal: true`` (no route out of it) and no address for the host on its bridge (so not the
host's services either), named after its container, and a tinyproxy container
(``flowyard/egress``) on that network, under the alias ``egress-proxy``, and on
``executor.egress_network`` (the default bridge), through which it reaches the allowed hosts
and nothing else (:mod:`.egressrules`). The agent's container sits on the internal network only,
with ``HTTPS_PROXY``/``HTTP_PROXY`` pointing at the proxy: a client that ignores them reaches
nothing at all. One network and proxy per attempt, so no two attempts (of one run or of two) share a
network they could talk to each other over.

When the agent has ended the proxy's log is read: every refusal is logged with the agent and
the host and counted (``flowyard_egress_denied_total{agent}``); the proxy and the network are
removed in the background while the outcome is reported. Both carry the attempt's run and stack
labels, so an executor that died before removing them leaves nothing behind for long: the sweep
removes them with the run's containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import aiodocker

from . import egressrules

ALIAS = "egress-proxy"
LABEL = "io.flowyard"
READY_TIMEOUT_S = 15.0


def proxy_env() -> dict[str, str]:
    return egressrules.proxy_env(ALIAS)


class EgressError(Exception):
    """The proxy could not be set up; ``retryable`` when that may pass (the daemon, the pool)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class DockerEgress:
    def __init__(self, docker: aiodocker.Docker, *, image: str, network: str) -> None:
        self.docker = docker
        self.image = image
        self.network = network
        self._removing: set[asyncio.Task[None]] = set()

    @staticmethod
    def names(container: str) -> tuple[str, str]:
        """(the attempt's internal network, its proxy container)."""
        return f"{container}-net", f"{container}-egress"

    async def open(self, container: str, allow: list[str], labels: Mapping[str, str]) -> str:
        """The internal network for the agent's container, its proxy up and ready.

        Idempotent: a redelivered dispatch (or an adopting executor) finds both made before.
        """
        net_name, proxy_name = self.names(container)
        tags = {**labels, f"{LABEL}.egress": container}
        network = await self._network(net_name, tags)
        proxy = await self._proxy(proxy_name, allow, tags)
        info = await proxy.show()
        if net_name not in (info.get("NetworkSettings") or {}).get("Networks", {}):
            await network.connect({"Container": proxy.id, "EndpointConfig": {"Aliases": [ALIAS]}})
        if not info["State"].get("Running"):
            await proxy.start()
        await self._ready(proxy, proxy_name)
        return net_name

    async def _network(self, name: str, labels: Mapping[str, str]) -> Any:
        try:
            return await self.docker.networks.create(
                {
                    "Name": name,
                    "Internal": True,
                    "CheckDuplicate": True,
                    "Labels": dict(labels),
                    # No address for the host on this bridge: `Internal` alone stops forwarding,
                    # not the host itself, whose every service would be one hop away.
                    "Options": {"com.docker.network.bridge.inhibit_ipv4": "true"},
                }
            )
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                return await self.docker.networks.get(name)
            if "address pool" in exc.message or "non-overlapping" in exc.message:
                raise EgressError(
                    "Docker has no address range left for another network (each attempt with network.allow "
                    "gets one); give the daemon smaller pools (`default-address-pools` with size 24 in "
                    f"daemon.json) or fewer concurrent attempts: {exc.message}",
                    retryable=True,
                ) from None
            raise

    async def _proxy(self, name: str, allow: list[str], labels: Mapping[str, str]) -> Any:
        spec = {
            "Image": self.image,
            "User": "10001:10001",
            "Env": [
                f"{egressrules.IMAGE_ENV_CONFIG}={egressrules.config()}",
                f"{egressrules.IMAGE_ENV_FILTER}={egressrules.filter_text(allow)}",
            ],
            "Labels": dict(labels),
            "HostConfig": {
                "NetworkMode": self.network,
                "ReadonlyRootfs": True,
                "Tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=4m"},
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "Memory": 64 * 1024 * 1024,
                "MemorySwap": 64 * 1024 * 1024,
                "PidsLimit": 32,
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "4m"}},
            },
        }
        try:
            return await self.docker.containers.create(spec, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                return await self.docker.containers.get(name)
            if exc.status == 404:
                raise EgressError(
                    f"the egress proxy's image {self.image!r} is not present on this executor; build it here "
                    "(`flowyard agents build`) — nothing is pulled",
                    retryable=False,
                ) from None
            raise

    async def _ready(self, proxy: Any, name: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = "".join(await proxy.log(stdout=True, stderr=True))
            if egressrules.READY_LINE in text:
                return
            if not (await proxy.show())["State"].get("Running"):
                raise EgressError(f"the egress proxy {name} exited at its start: {text[-500:]}", retryable=False)
            await asyncio.sleep(0.05)
        raise EgressError(f"the egress proxy {name} was not ready within {READY_TIMEOUT_S:.0f}s", retryable=True)

    async def close(self, container: str, agent: str) -> list[str]:
        """Report what the proxy refused, then remove it and the network. The places refused."""
        net_name, proxy_name = self.names(container)
        refused: list[str] = []
        try:
            proxy = await self.docker.containers.get(proxy_name)
        except aiodocker.DockerError:
            proxy = None
        if proxy is not None:
            with contextlib.suppress(aiodocker.DockerError):
                text = "".join(await proxy.log(stdout=True, stderr=True))
                refused = egressrules.refusals(text, every=True)
        egressrules.report(agent, refused, container=container)
        # Removed after the attempt's outcome is reported, not before: nothing reads them again.
        removal = asyncio.create_task(self._remove(proxy, net_name))
        self._removing.add(removal)
        removal.add_done_callback(self._removing.discard)
        return refused

    async def _remove(self, proxy: Any, net_name: str) -> None:
        if proxy is not None:
            with contextlib.suppress(aiodocker.DockerError):
                await proxy.delete(force=True)
        with contextlib.suppress(aiodocker.DockerError):
            await (await self.docker.networks.get(net_name)).delete()

    async def drain(self) -> None:
        """Wait for the removals under way (the runtime closing, a test looking)."""
        while self._removing:
            await asyncio.gather(*list(self._removing), return_exceptions=True)

    async def sweep(self) -> None:
        """Networks of attempts whose containers are gone (an executor died between the two)."""
        with contextlib.suppress(aiodocker.DockerError):
            await self.docker.networks.prune(filters={"label": [f"{LABEL}.egress"], "until": "2m"})
