"""``flowyard doctor``: check what running needs, and say how to fix what is missing."""

from __future__ import annotations

import asyncio

import msgspec
import nats.js.errors

from shared.bus.connection import Bus
from shared.config.secrets import SecretSource
from shared.config.settings import Config
from shared.contract import subjects
from shared.contract.errors import ConfigurationError
from shared.workflow.builtin import builtin_agents
from shared.workflow.model import AgentDoc

from .agentbuild import egress_tag
from .output import EXIT_FAILED, EXIT_OK, configure

_agent = msgspec.json.Decoder(AgentDoc)


async def doctor(config: Config) -> int:
    configure(config, "cli", quiet=True)
    problems = 0

    def report(ok: bool, what: str, fix: str = "") -> None:
        nonlocal problems
        problems += not ok
        print(f"{'ok ' if ok else 'FIX'}  {what}" + (f"\n     {fix}" if fix and not ok else ""))

    bus = Bus(config.nats, config.bus, name="doctor")
    agents: list[AgentDoc] = []
    try:
        await bus.connect()
        report(True, f"NATS reachable at {config.nats.url}")
        present = await bus.topology_present()
        report(present, "JetStream streams present", "start any service once (they create them), or `flowyard up`")
        try:
            kv = await bus.kv(subjects.AGENTS_BUCKET)
            for key in await kv.keys():
                entry = await kv.get(key)
                if entry.value:
                    agents.append(_agent.decode(entry.value))
        except (ConfigurationError, nats.js.errors.NoKeysError):
            pass
        report(True, f"{len(agents)} registered agent(s)")
    except ConfigurationError as exc:
        report(False, f"NATS reachable at {config.nats.url}", str(exc))
    finally:
        await bus.close()

    registered = {a.metadata.name for a in agents}
    # The built-in agents run by name even when nobody registered them: their images count too.
    agents += [a for name, a in (await asyncio.to_thread(builtin_agents)).items() if name not in registered]
    if config.executor.runtime == "docker":
        await _docker_checks(config, agents, report)
    elif config.executor.runtime == "kubernetes":
        print(
            f"     (executor.runtime is kubernetes: agents run as pods in namespace "
            f"{config.executor.kubernetes.namespace}; the cluster pulls their images, not checked here)"
        )
    else:
        print("     (executor.runtime is process: Docker and agent images are not needed)")
    source = SecretSource(config.executor.secrets_dir)
    await _provider_checks(config, source, report)
    for agent in agents:
        if agent.spec.secrets:
            _, missing = await source.resolve(agent.spec.secrets)
            for name in missing:
                report(False, f"agent {agent.metadata.name}: secret {name}", f"provide {source.where(name)}")
            if not missing:
                report(True, f"agent {agent.metadata.name}: secrets {', '.join(agent.spec.secrets)} resolvable")
    print(f"\n{problems} problem(s)" if problems else "\nall good")
    return EXIT_FAILED if problems else EXIT_OK


async def _provider_checks(config: Config, source: SecretSource, report) -> None:
    """Each llm.providers entry: its key resolvable, its endpoint answering and taking the key."""
    from shared.llm.client import Endpoint, probe

    for name, provider in sorted(config.llm.providers.items()):
        key = None
        if provider.api_key_secret:
            values, missing = await source.resolve([provider.api_key_secret])
            if missing:
                report(
                    False,
                    f"provider {name}: key (secret {provider.api_key_secret})",
                    f"provide {source.where(provider.api_key_secret)} where the executors run",
                )
                continue
            key = values[provider.api_key_secret]
        problem = await probe(Endpoint(name, provider, key))
        report(
            problem is None,
            f"provider {name}: {provider.kind} at {provider.url} answers" + (" and takes the key" if key else ""),
            f"{problem}; check base_url, the key and the network (an egress proxy: HTTPS_PROXY)",
        )


async def _docker_checks(config: Config, agents: list[AgentDoc], report) -> None:
    import aiodocker
    import aiohttp

    from shared.docker import client as dockerclient

    docker = dockerclient.client()
    try:
        try:
            version = await docker.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            why = (
                dockerclient.unreachable(docker, exc)
                if dockerclient.is_unreachable(exc)
                else f"the Docker daemon answered with an error ({exc}); see dockerd's log"
            )
            report(False, "Docker daemon reachable", why)
            return
        report(True, f"Docker daemon reachable (version {version.get('Version')})")
        for agent in agents:
            image = agent.spec.image
            if not image:
                continue
            try:
                await docker.images.inspect(image)
                report(True, f"agent {agent.metadata.name}: image {image} present")
            except aiodocker.DockerError:
                builtin = agent.metadata.labels.get("flowyard.io/builtin") == "true"
                report(
                    False,
                    f"agent {agent.metadata.name}: image {image} present",
                    "run `flowyard images build` (offline: the base, the service image, then every "
                    "built-in agent's; `flowyard agents build` when the service image is there)"
                    if builtin
                    else "build it on this machine (nothing is pulled); the base: deploy/base-image/build.sh",
                )
        allowlisted = [a.metadata.name for a in agents if not isinstance(a.spec.network, str)]
        if allowlisted:
            # Agents with network.allow reach the network only through the egress proxy.
            egress = config.executor.egress_image or egress_tag()
            try:
                await docker.images.inspect(egress)
                report(True, f"egress proxy: image {egress} present")
            except aiodocker.DockerError:
                report(
                    False,
                    f"egress proxy: image {egress} present",
                    f"`flowyard agents build` builds it; without it {', '.join(sorted(allowlisted))} cannot start",
                )
    finally:
        await docker.close()
