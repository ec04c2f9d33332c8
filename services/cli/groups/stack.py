"""Running the stack: ``up``, ``serve``, ``doctor``, ``nats-config``, ``nats-bootstrap``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from shared.contract.permissions import SERVICES

from ..context import Ctx, _run


@click.command()
@click.pass_obj
def doctor(obj: Ctx) -> None:
    """Check what running needs (NATS, Docker, agent images, secrets) and say how to fix it."""
    from ..doctor import doctor as run_doctor

    _run(run_doctor(obj.config()))


# --- agents ---------------------------------------------------------------------------------


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where JetStream keeps its data (default: ~/.local/share/flowyard).",
)
@click.option("--nats-port", type=int, default=-1, help="NATS client port (default: a free one).")
@click.option("--runtime", type=click.Choice(["process", "docker", "kubernetes"]), default=None)
@click.option("--http-port", type=int, default=None, help="Port for /healthz, /readyz, /metrics.")
@click.pass_obj
def up(obj: Ctx, data_dir: Path | None, nats_port: int, runtime: str | None, http_port: int | None) -> None:
    """Start the embedded stack: a private nats-server and every service, in one process."""
    from ..commands import run_up

    config = obj.config(
        executor={"runtime": runtime} if runtime else {},
        http={"port": http_port} if http_port is not None else {},
    )
    data_dir = data_dir or Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "flowyard"
    _run(run_up(config, data_dir, nats_port))


@click.command()
@click.argument("service", type=click.Choice(SERVICES))
@click.option(
    "--runtime", type=click.Choice(["process", "docker", "kubernetes"]), default=None, help="Executor runtime."
)
@click.option("--pool", default=None, help="Executor pool to take tasks from.")
@click.option("--http-port", type=int, default=None, help="Port for /healthz, /readyz, /metrics.")
@click.pass_obj
def serve(obj: Ctx, service: str, runtime: str | None, pool: str | None, http_port: int | None) -> None:
    """Run one service, connecting to FLOWYARD_NATS_URL (as containers and Kubernetes do)."""
    from ..commands import run_service

    executor: dict[str, Any] = {}
    if runtime:
        executor["runtime"] = runtime
    if pool:
        executor["pool"] = pool
    config = obj.config(executor=executor, http={"port": http_port} if http_port is not None else {})
    _run(run_service(config, service))


@click.command("nats-config")
@click.option("--secrets-dir", default=None, metavar="DIR", help="Read NATS_PASSWORD_<USER> from files here too.")
@click.option("--store-dir", default="/data/jetstream", show_default=True, help="JetStream's storage directory.")
@click.option(
    "--max-file",
    default=None,
    help="JetStream file storage for the account (default: the stores' limits in bus.* plus 4G for the streams).",
)
@click.option("--max-mem", default="1G", show_default=True, help="JetStream memory storage for the account.")
@click.option("--port", default=4222, show_default=True)
@click.option("--monitor-port", default=8222, show_default=True, help="/healthz, /jsz (probes, KEDA).")
@click.option("--max-payload", default=1024 * 1024, show_default=True, help="Must equal bus.max_payload.")
@click.option("--pool", "pools", multiple=True, default=("default",), show_default=True, help="Executor pools.")
@click.option("--tls-cert", default=None, metavar="PEM", help="The server's certificate.")
@click.option("--tls-key", default=None, metavar="PEM", help="Its private key.")
@click.option("--server-name", default=None, envvar="NATS_SERVER_NAME", help="Unique per server of a cluster.")
@click.option("--cluster-name", default=None, envvar="NATS_CLUSTER_NAME", help="A JetStream cluster: its name.")
@click.option("--cluster-port", default=6222, show_default=True, help="Where the servers of a cluster meet.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    envvar="NATS_ROUTES",
    metavar="URL",
    help="nats-route://host:6222 of every server of the cluster (NATS_ROUTES: space-separated).",
)
@click.option("--tls-ca", default=None, metavar="PEM", help="CA that clients' certificates must chain to.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write here (0600).")
@click.pass_obj
def nats_config_cmd(
    obj: Ctx,
    secrets_dir: str | None,
    store_dir: str,
    max_file: str | None,
    max_mem: str,
    port: int,
    monitor_port: int,
    max_payload: int,
    pools: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    server_name: str | None,
    cluster_name: str | None,
    cluster_port: int,
    routes: tuple[str, ...],
    out: Path | None,
) -> None:
    """Print a nats-server configuration: JetStream, and one least-privilege user per service
    (passwords: bcrypt hashes of the secrets NATS_PASSWORD_<USER>, e.g. NATS_PASSWORD_EXECUTOR)."""
    from .. import natsadmin
    from ..natsadmin import nats_config

    bus = obj.config().bus
    # Streams with a size limit reserve it from the account: the limit must cover them all.
    reserved = bus.workspace_store_bytes + bus.logs_store_bytes + bus.value_store_bytes + 4 * 1024**3
    _run(
        nats_config(
            secrets_dir=secrets_dir,
            store_dir=store_dir,
            max_file=max_file or str(reserved),
            max_mem=max_mem,
            port=port,
            monitor_port=monitor_port,
            max_payload=max_payload,
            pools=pools,
            tls=(tls_cert, tls_key, tls_ca),
            cluster=natsadmin.Cluster(server_name, cluster_name, cluster_port, routes),
            replicas=bus.replicas,
            out=out,
        )
    )


@click.command("nats-bootstrap")
@click.pass_obj
def nats_bootstrap_cmd(obj: Ctx) -> None:
    """Create flowyard's streams and buckets, as the admin NATS user (run once per deployment
    and after upgrades; safe to run again)."""
    from ..natsadmin import nats_bootstrap

    _run(nats_bootstrap(obj.config()))
