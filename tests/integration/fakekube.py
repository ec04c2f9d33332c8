"""A Kubernetes API server and kubelet, faked at the HTTP boundary, for the kubernetes runtime.

No API server can run on these machines, so this speaks the part of the Kubernetes REST API the
runtime uses — Pods and Secrets (create, get, list by label, watch by name, delete, merge patch),
and a container's log (whole or followed) — with the API's own shapes: Status objects for
errors, PodList/SecretList, watch events as JSON lines, resourceVersions.

Every Pod and Secret it is asked to create is validated strictly with kubernetes-validate first
(a 422 otherwise, and the problem kept in ``invalid`` for the test to assert on).

Its kubelet runs a Pod's containers as local processes: init containers in order, then the
containers together, each with its volumes emulated — an emptyDir is a directory of the Pod's,
a Secret volume a directory holding the Secret's keys, and a mount path the host does not have
(``/flowyard/input``, ``/workspace``) is rewritten to that directory in the command, the
environment and the working directory. The container's log is its stdout and stderr as one
stream, as Kubernetes keeps it. It starts nothing before the Secrets the Pod mounts exist,
reports an image it was not told about as ErrImagePull, and enforces activeDeadlineSeconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
from aiohttp import web

K8S_VERSION = kubernetes_validate.latest_version()
ROOT = Path(__file__).resolve().parents[2]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def respond(obj: Any, code: int = 200) -> web.Response:
    # Exactly "application/json", as the API server sends it (clients check it to read a Status).
    return web.Response(body=json.dumps(obj).encode(), status=code, headers={"Content-Type": "application/json"})


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    body |= {"message": message, "reason": reason, "code": code}
    return respond(body, code)


def matches(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class Running:
    """One Pod's life in the fake kubelet."""

    def __init__(self, pod: dict[str, Any], workdir: Path) -> None:
        self.pod = pod
        self.dir = workdir
        self.procs: list[asyncio.subprocess.Process] = []
        self.logs: dict[str, bytearray] = {}
        self.task: asyncio.Task[None] | None = None


class FakeKube:
    def __init__(
        self,
        images: Iterable[str],
        helper_image: str = "flowyard/flowyard:0.1.0",
        commands: dict[str, list[str]] | None = None,
        path: Iterable[str] = (),
    ) -> None:
        self.images = set(images) | {helper_image}
        self.helper_image = helper_image
        # An image's program the host does not have -> what runs instead (e.g. the egress proxy's
        # script from deploy/egress), with ``path`` ahead of $PATH (its tinyproxy).
        self.commands = commands or {}
        self.path = list(path)
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            "pods": {},
            "secrets": {},
            "networkpolicies": {},
        }
        self._addresses = itertools.count(2)  # each Pod its own loopback address: 127.0.0.N
        self.running: dict[tuple[str, str], Running] = {}
        self.invalid: list[str] = []
        self.created: list[str] = []  # "pods/NAME" per successful create
        self.conflicts: list[str] = []
        self._rv = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.port = 0
        self.start_delay = 0.0  # seconds between a Pod's Secrets being there and its containers starting
        self.workdir = Path(tempfile.mkdtemp(prefix="fakekube-"))

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> FakeKube:
        threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True).start()
        assert self._ready.wait(10), "the fake API server did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, namespace: str = "flowyard-agents") -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "executor", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {"name": "fake", "context": {"cluster": "fake", "user": "executor", "namespace": namespace}}
                    ],
                    "current-context": "fake",
                }
            )
        )
        return path

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop (from a test's thread) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_as_coro(fn), self._loop).result(30)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=4 * 1024 * 1024)
        base = "/api/v1/namespaces/{ns}/{kind:pods|secrets}"
        app.router.add_post(base, self.create)
        app.router.add_get(base, self.list_or_watch)
        app.router.add_get(base + "/{name}", self.get)
        app.router.add_delete(base + "/{name}", self.delete)
        app.router.add_patch(base + "/{name}", self.patch)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self.log)
        policies = "/apis/networking.k8s.io/v1/namespaces/{ns}/{kind:networkpolicies}"
        app.router.add_post(policies, self.create)
        app.router.add_get(policies, self.list_or_watch)
        app.router.add_get(policies + "/{name}", self.get)
        app.router.add_delete(policies + "/{name}", self.delete)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        for run in list(self.running.values()):
            await self._kill(run)
        await runner.cleanup()

    async def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # --- the API ------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        ns, kind = request.match_info["ns"], request.match_info["kind"]
        obj = await request.json()
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problem = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {exc.message} at {list(exc.path)}"
            self.invalid.append(problem)
            return status(422, "Invalid", problem)
        name = obj["metadata"]["name"]
        if (ns, name) in self.objects[kind]:
            self.conflicts.append(f"{kind}/{name}")
            return status(409, "AlreadyExists", f'{kind} "{name}" already exists')
        obj["metadata"] |= {"namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": now()}
        if kind == "pods":
            obj["status"] = {"phase": "Pending"}
        self.objects[kind][(ns, name)] = obj
        self.created.append(f"{kind}/{name}")
        await self._bump(obj)
        if kind == "pods":
            run = Running(obj, self.workdir / f"{ns}-{name}")
            self.running[(ns, name)] = run
            run.task = asyncio.create_task(self._kubelet(run))
        return respond(obj, 201)

    async def get(self, request: web.Request) -> web.Response:
        ns, kind, name = request.match_info["ns"], request.match_info["kind"], request.match_info["name"]
        obj = self.objects[kind].get((ns, name))
        if obj is None:
            return status(404, "NotFound", f'{kind} "{name}" not found')
        return respond(obj)

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        ns, kind = request.match_info["ns"], request.match_info["kind"]
        selector = request.query.get("labelSelector", "")
        field = request.query.get("fieldSelector", "")
        wanted_name = field.partition("metadata.name=")[2] if field else ""

        def items() -> list[dict[str, Any]]:
            return [
                o
                for (n, name), o in self.objects[kind].items()
                if n == ns and matches(o, selector) and (not wanted_name or name == wanted_name)
            ]

        if request.query.get("watch") not in ("true", "1"):
            list_kind = {"pods": "PodList", "secrets": "SecretList"}.get(kind, "NetworkPolicyList")
            version = "networking.k8s.io/v1" if kind == "networkpolicies" else "v1"
            meta = {"resourceVersion": str(next(self._rv))}
            return respond({"kind": list_kind, "apiVersion": version, "metadata": meta, "items": items()})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        seen: dict[str, str] = {}
        assert self._changed is not None
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            while True:
                current = {o["metadata"]["name"]: o for o in items()}
                for name, o in current.items():
                    if seen.get(name) != o["metadata"]["resourceVersion"]:
                        kind_of = "ADDED" if name not in seen else "MODIFIED"
                        seen[name] = o["metadata"]["resourceVersion"]
                        await response.write(json.dumps({"type": kind_of, "object": o}).encode() + b"\n")
                for name in set(seen) - set(current):
                    del seen[name]
                async with self._changed:
                    await self._changed.wait()
        return response

    async def delete(self, request: web.Request) -> web.Response:
        ns, kind, name = request.match_info["ns"], request.match_info["kind"], request.match_info["name"]
        obj = self.objects[kind].pop((ns, name), None)
        if obj is None:
            return status(404, "NotFound", f'{kind} "{name}" not found')
        if kind == "pods":
            run = self.running.pop((ns, name), None)
            if run is not None:
                await self._kill(run)
            # The garbage collector: what the Pod owned goes with it.
            uid = obj["metadata"]["uid"]
            for key, secret in list(self.objects["secrets"].items()):
                if any(o.get("uid") == uid for o in secret["metadata"].get("ownerReferences") or []):
                    del self.objects["secrets"][key]
        await self._bump(obj)
        return respond(obj)

    async def patch(self, request: web.Request) -> web.Response:
        ns, kind, name = request.match_info["ns"], request.match_info["kind"], request.match_info["name"]
        obj = self.objects[kind].get((ns, name))
        if obj is None:
            return status(404, "NotFound", f'{kind} "{name}" not found')
        assert request.content_type == "application/merge-patch+json", request.content_type
        _merge(obj, await request.json())
        await self._bump(obj)
        return respond(obj)

    async def log(self, request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["ns"], request.match_info["name"]
        run = self.running.get((ns, name))
        container = request.query.get("container", "")
        if run is None or container not in run.logs:
            return status(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start')
        follow = request.query.get("follow") in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await self._send_log(run, container, follow, response)
        return response

    async def _send_log(self, run: Running, container: str, follow: bool, response: web.StreamResponse) -> None:
        sent = 0
        assert self._changed is not None
        while True:
            data = bytes(run.logs[container])
            if len(data) > sent:
                await response.write(data[sent:])
                sent = len(data)
            if not follow or self._terminated(run, container):
                if len(run.logs[container]) == sent:
                    break
                continue
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)
        await response.write_eof()

    # --- the kubelet --------------------------------------------------------------------------

    def _terminated(self, run: Running, container: str) -> bool:
        for s in run.pod["status"].get("containerStatuses") or []:
            if s["name"] == container and "terminated" in s["state"]:
                return True
        return (run.pod["metadata"]["namespace"], run.pod["metadata"]["name"]) not in self.running

    async def _kubelet(self, run: Running) -> None:
        pod = run.pod
        spec = pod["spec"]
        ns = pod["metadata"]["namespace"]
        # Nothing starts before every Secret the Pod mounts is there (the kubelet retries the mount).
        needed = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
        while any((ns, s) not in self.objects["secrets"] for s in needed):
            async with self._changed:  # type: ignore[union-attr]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.2)  # type: ignore[union-attr]
        pod["status"]["startTime"] = now()
        # Scheduling and pulling take a while on a real node; the log is not readable before.
        await asyncio.sleep(self.start_delay)
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            if c["image"] not in self.images:
                state = {"waiting": {"reason": "ErrImagePull", "message": f"pull access denied for {c['image']}"}}
                pod["status"]["containerStatuses"] = [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": state,
                    }
                ]
                await self._bump(pod)
                return
        deadline = spec.get("activeDeadlineSeconds")
        try:
            async with asyncio.timeout(deadline):
                for c in spec.get("initContainers", []):
                    code = await self._container(run, c, "initContainerStatuses")
                    if code != 0:
                        pod["status"]["phase"] = "Failed"
                        await self._bump(pod)
                        return
                pod["status"] |= {"phase": "Running", "podIP": f"127.0.0.{next(self._addresses) % 250 + 2}"}
                probe = asyncio.create_task(self._readiness(run))
                codes = await asyncio.gather(
                    *(self._container(run, c, "containerStatuses") for c in spec["containers"])
                )
        except TimeoutError:
            await self._kill(run)
            pod["status"] |= {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"}
            await self._bump(pod)
            return
        probe.cancel()
        pod["status"]["phase"] = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        await self._bump(pod)

    async def _readiness(self, run: Running) -> None:
        """Ready once every container's tcpSocket probe connects (at once when none has one)."""
        pod = run.pod
        ports = [
            c["readinessProbe"]["tcpSocket"]["port"]
            for c in pod["spec"]["containers"]
            if "tcpSocket" in (c.get("readinessProbe") or {})
        ]
        for port in ports:
            while True:
                try:
                    _, writer = await asyncio.open_connection(pod["status"]["podIP"], port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)  # the fake kubelet's probe period
        pod["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastTransitionTime": now()}]
        await self._bump(pod)

    async def _container(self, run: Running, c: dict[str, Any], where: str) -> int:
        pod = run.pod
        mounts = self._mounts(run, c)
        rewrite = _rewriter(mounts)
        env = {"PATH": os.pathsep.join([*self.path, os.environ["PATH"]]), "PYTHONPATH": str(ROOT)}
        for e in c.get("env", []):
            if "value" in e:
                # The Pod's own address: what listens on all of them listens on this Pod's only.
                env[e["name"]] = rewrite(e["value"]).replace("0.0.0.0", pod["status"].get("podIP", "127.0.0.1"))
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                secret = self.objects["secrets"][(pod["metadata"]["namespace"], ref["name"])]
                env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        argv = [rewrite(a) for a in c["command"]]
        argv[:1] = self.commands.get(argv[0], argv[:1])
        if c["image"] == self.helper_image and argv[0] == "python3":
            argv[0] = sys.executable  # flowyard's image: python with flowyard installed
        cwd = rewrite(c.get("workingDir") or "/tmp")
        run.logs[c["name"]] = bytearray()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        run.procs.append(proc)
        started = now()
        self._set_status(pod, where, c, {"running": {"startedAt": started}})
        await self._bump(pod)
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            run.logs[c["name"]] += chunk
            await self._bump(pod)
        code = await proc.wait()
        reason = "Completed" if code == 0 else "Error"
        term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}
        self._set_status(pod, where, c, {"terminated": term})
        await self._bump(pod)
        return code

    @staticmethod
    def _set_status(pod: dict[str, Any], where: str, c: dict[str, Any], state: dict[str, Any]) -> None:
        statuses = pod["status"].setdefault(where, [])
        for s in statuses:
            if s["name"] == c["name"]:
                s["state"] = state
                return
        statuses.append(
            {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0, "state": state}
        )

    def _mounts(self, run: Running, c: dict[str, Any]) -> dict[str, str]:
        volumes = {v["name"]: v for v in run.pod["spec"].get("volumes", [])}
        ns = run.pod["metadata"]["namespace"]
        out = {}
        for m in c.get("volumeMounts", []):
            v = volumes[m["name"]]
            host = run.dir / m["name"]
            if not host.exists():
                host.mkdir(parents=True)
                if "secret" in v:
                    secret = self.objects["secrets"][(ns, v["secret"]["secretName"])]
                    for item in v["secret"].get("items") or [{"key": k, "path": k} for k in secret["data"]]:
                        if item["key"] in secret.get("data", {}):
                            (host / item["path"]).write_bytes(base64.b64decode(secret["data"][item["key"]]))
            if not Path(m["mountPath"]).exists():  # the host's own /tmp stays the host's
                out[m["mountPath"]] = str(host)
        return out

    async def _kill(self, run: Running) -> None:
        for proc in run.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()
            with contextlib.suppress(BaseException):
                await run.task


def _rewriter(mounts: dict[str, str]) -> Any:
    """One pass, longest mount path first, whole path segments only: /workspace never eats /workspace-in."""
    if not mounts:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)) + r"(?=/|\b|$)(?![-\w])")
    return lambda text: pattern.sub(lambda m: mounts[m.group(0)], text)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


async def _as_coro(fn: Any) -> Any:
    result = fn()
    if asyncio.iscoroutine(result):
        return await result
    return result
