"""``flowyard nats-config`` and ``flowyard nats-bootstrap``: NATS for a real deployment.

nats-config prints a complete nats-server configuration: JetStream, one account for flowyard with
its JetStream limits, and one user per service plus ``cli`` and ``admin``, each with exactly the
permissions of ``shared.contract.permissions`` and its password as a bcrypt hash of the secret
``NATS_PASSWORD_<USER>``. nats-bootstrap creates the streams and buckets as admin, so that the
services, on their own users, only bind to what exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import nats.js.errors

from shared.bus.connection import Bus
from shared.bus.delivery import NatsUnavailable
from shared.bus.topology import ensure_topology
from shared.config.secrets import SecretSource
from shared.config.settings import Config
from shared.contract import permissions as natsperms
from shared.workflow.model import memory_bytes

from .output import EXIT_BROKEN, EXIT_INVALID, EXIT_OK

ACCOUNT = "FLOWYARD"


@dataclass(frozen=True, slots=True)
class Cluster:
    """A JetStream cluster's side of one server: its unique name and its routes (none: one server)."""

    server_name: str | None = None
    name: str | None = None
    port: int = 6222
    routes: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        if (self.name or self.routes) and not (self.name and self.routes and self.server_name):
            return [
                "a cluster needs --cluster-name, --server-name (unique per server) and a --route for every "
                "server (NATS_CLUSTER_NAME, NATS_SERVER_NAME, NATS_ROUTES)"
            ]
        return [f"--route {r!r}: expected nats-route://HOST:PORT" for r in self.routes if "://" not in r]


def secret_name(user: str) -> str:
    return f"NATS_PASSWORD_{user.upper()}"


async def nats_config(
    *,
    secrets_dir: str | None,
    store_dir: str,
    max_file: str,
    max_mem: str,
    port: int,
    monitor_port: int,
    max_payload: int,
    pools: tuple[str, ...],
    tls: tuple[str | None, str | None, str | None],
    out: Path | None,
    cluster: Cluster | None = None,
    replicas: int = 1,
) -> int:
    cluster = cluster or Cluster()
    if problems := cluster.problems():
        print("flowyard: " + "; ".join(problems), file=sys.stderr)
        return EXIT_INVALID
    try:
        file_bytes, mem_bytes = memory_bytes(max_file), memory_bytes(max_mem)
    except ValueError as exc:
        print(f"flowyard: --max-file/--max-mem: {exc}", file=sys.stderr)
        return EXIT_INVALID
    source = SecretSource(secrets_dir)
    names = [secret_name(u) for u in natsperms.USERS]
    found, missing = await source.resolve(names)
    if missing:
        where = "; ".join(source.where(n) for n in missing)
        print(f"flowyard: the NATS passwords are not all set; set {where}", file=sys.stderr)
        return EXIT_INVALID
    perms = natsperms.table(pools)
    # nats-server checks bcrypt hashes ($2...) itself; the cost is nats' own default. Each hash
    # takes a fifth of a second: off the event loop.
    hashes = await asyncio.gather(*(asyncio.to_thread(_bcrypt, found[secret_name(user)]) for user in natsperms.USERS))
    users = [
        {"user": user, "password": hashed, "permissions": perms[user]}
        for user, hashed in zip(natsperms.USERS, hashes, strict=True)
    ]
    config: dict[str, Any] = {
        "port": port,
        "http_port": monitor_port,  # /healthz for probes, /jsz for KEDA's nats-jetstream scaler
        "max_payload": max_payload,
        "jetstream": {"store_dir": store_dir, "max_file_store": file_bytes, "max_memory_store": mem_bytes},
        "accounts": {
            ACCOUNT: {
                # A cluster counts every copy against the account (bus.replicas of each stream);
                # each server holds one.
                "jetstream": {"max_file": file_bytes * replicas, "max_mem": mem_bytes * replicas},
                "users": users,
            }
        },
        "no_auth_user": None,
    }
    del config["no_auth_user"]  # every connection names its user
    if cluster.server_name:
        config["server_name"] = cluster.server_name  # JetStream's raft groups tell servers apart by it
    if cluster.name:
        # Routes carry no client traffic; only NATS's own pods may reach the port (k8s NetworkPolicy).
        config["cluster"] = {"name": cluster.name, "port": cluster.port, "routes": list(cluster.routes)}
    cert, key, ca = tls
    if cert or key:
        if not (cert and key):
            print("flowyard: --tls-cert and --tls-key go together", file=sys.stderr)
            return EXIT_INVALID
        config["tls"] = {"cert_file": cert, "key_file": key, **({"ca_file": ca} if ca else {}), "timeout": 5}
    # nats-server reads JSON as its own configuration format.
    text = "# nats-server configuration generated by `flowyard nats-config`\n" + json.dumps(config, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(_write_private, out, text)
        print(f"wrote {out} (users: {', '.join(natsperms.USERS)})")
    return EXIT_OK


async def nats_bootstrap(config: Config) -> int:
    bus = Bus(config.nats, config.bus, name="bootstrap")
    await bus.connect()
    try:
        if not config.nats.creates_topology:
            print(
                f"flowyard: nats-bootstrap creates streams and buckets: connect as admin "
                f"(FLOWYARD_NATS_USER=admin), not as {config.nats.user or 'a creds file'}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        try:
            # A JetStream cluster just started elects its leader first: each call waits for it, within bounds.
            await ensure_topology(bus)
        except NatsUnavailable as exc:
            print(
                f"flowyard: {exc}. Is JetStream up on every server (a cluster elects a leader first)? "
                "Run nats-bootstrap again once `curl http://NATS:8222/healthz?js-enabled-only=true` answers ok",
                file=sys.stderr,
            )
            return EXIT_BROKEN
        except nats.js.errors.APIError as exc:
            print(
                f"flowyard: NATS refused to create the streams: {exc.description} (code {exc.err_code}). "
                "If it is about storage: each server's JetStream store (nats-config --max-file) must hold the "
                "bus.*_store_bytes limits plus the streams, and the account that many times bus.replicas",
                file=sys.stderr,
            )
            return EXIT_BROKEN
        if not await bus.topology_present():
            print("flowyard: the streams were not created; see the nats-server log", file=sys.stderr)
            return EXIT_BROKEN
    finally:
        await bus.close()
    print(f"streams and buckets are in place on {config.nats.url}")
    return EXIT_OK


def _bcrypt(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(11)).decode()


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start: the file holds password hashes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
