"""Every stream, bucket and object store flowyard uses, created (or brought up to date) at start.

Safe from every replica at once. ``FY_TRIGGERS`` is created but never updated here: its subjects
are the registered workflows' (see :mod:`shared.bus.capture`), and a restart must not shrink them.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import api

from shared.bus.connection import Bus
from shared.config.settings import seconds
from shared.contract import subjects
from shared.contract.errors import ConfigurationError


async def ensure_topology(bus: Bus) -> None:
    """Create or update every stream and bucket; safe to call from every replica at once.

    A service on its own NATS user may not: it checks that bootstrap made them."""
    if bus.nats_cfg.creates_topology:
        await ensure(bus)
    elif not await bus.topology_present():
        raise ConfigurationError(
            f"the streams do not exist yet and NATS user {bus.nats_cfg.user or '(creds)'} may not create them: "
            "run `flowyard nats-bootstrap` with the admin user first"
        )


async def ensure(bus: Bus) -> None:
    """Create or update every stream and bucket, as a user that may (admin, or the embedded stack)."""
    cfg = bus.cfg
    storage = api.StorageType.FILE if cfg.storage == "file" else api.StorageType.MEMORY
    dup = seconds(cfg.duplicate_window)
    streams = [
        api.StreamConfig(
            name=subjects.RUNS_STREAM,
            description="Run and task events: the audit log of every run",
            subjects=[subjects.RUNS_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.retention),
            duplicate_window=dup,
            allow_direct=True,  # a run's request is read by subject (runs show, retry, the gateway)
        ),
        api.StreamConfig(
            name=subjects.TASKS_STREAM,
            description="Task dispatches, one work queue per executor pool",
            subjects=[subjects.TASKS_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=dup,
        ),
        api.StreamConfig(
            name=subjects.TIMERS_STREAM,
            description="Durable timers (retry back-off, run deadlines), handed back until due",
            subjects=[subjects.TIMERS_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=dup,
        ),
        api.StreamConfig(
            name=subjects.DLQ_STREAM,
            description="Dead letters: poison messages with the reason they were terminated",
            subjects=[subjects.DLQ_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.retention),
            duplicate_window=dup,
        ),
        api.StreamConfig(
            name=subjects.LOGS_STREAM,
            description="Agents' stderr while they run, for `flowyard logs`",
            subjects=[subjects.LOGS_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.logs_retention),
            max_bytes=cfg.logs_store_bytes,
            discard=api.DiscardPolicy.OLD,
        ),
        api.StreamConfig(
            name=subjects.AUDIT_STREAM,
            description="Who did what through the gateway and the CLI; never secrets or tokens",
            subjects=[subjects.AUDIT_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.audit_retention),
            duplicate_window=dup,
            allow_direct=True,
        ),
        api.StreamConfig(
            name=subjects.TRIGGER_EVENTS_STREAM,
            description="What triggers did besides starting a run: deduplicated, suppressed, refused, skipped",
            subjects=[subjects.TRIGGER_EVENT_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=seconds(cfg.retention),
            max_bytes=cfg.logs_store_bytes,
            discard=api.DiscardPolicy.OLD,
            duplicate_window=dup,
        ),
        api.StreamConfig(
            name=subjects.ACTIVE_STREAM,
            description="Runs active or ended by status and approvals pending, one empty message each",
            subjects=[subjects.ACTIVE_SUBJECTS, subjects.ENDED_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            duplicate_window=dup,
        ),
    ]
    # Trigger events: alerts from the gateway, plus the workflows' own NATS subjects, which
    # the planner keeps in step with the registry; so it is created here, never updated.
    captured = api.StreamConfig(
        name=subjects.TRIGGERS_STREAM,
        description="Trigger events for the planner: alerts and the registered workflows' NATS subjects",
        subjects=[subjects.ALERT_SUBJECTS],
        retention=api.RetentionPolicy.LIMITS,
        max_age=seconds(cfg.retention),
        duplicate_window=dup,
    )
    for sc in [*streams, captured]:
        sc.storage = storage
        sc.num_replicas = cfg.replicas
        sc.max_msg_size = cfg.max_payload
        await _ensure_stream(bus, sc, update=sc is not captured)
    await _ensure_kv(bus, subjects.RUNS_BUCKET, "Run records kept by the scheduler", history=5)
    await _ensure_kv(bus, subjects.AGENTS_BUCKET, "Registered agents", history=10)
    await _ensure_kv(bus, subjects.CONCURRENCY_BUCKET, "Runs admitted and queued per workflow", history=1)
    await _ensure_kv(bus, subjects.APPROVALS_BUCKET, "Approval requests and every decision on them", history=5)
    await _ensure_kv(bus, subjects.PLANS_BUCKET, "Plans drafted from goals: rounds, proposal, decision", history=5)
    await _ensure_kv(bus, subjects.NOTIFY_BUCKET, "Notifications delivered, per sink and event", history=1)
    await _ensure_kv(bus, subjects.WORKFLOWS_BUCKET, "The workflow registry: heads and every version", history=1)
    await _ensure_kv(
        bus,
        subjects.TRIGGER_RUNS_BUCKET,
        "Trigger events' de-duplication keys -> the runs they started",
        history=1,
        ttl=seconds(cfg.retention),
    )
    await _ensure_kv(
        bus, subjects.INFLIGHT_BUCKET, "Redelivered messages in hand, for the poison ceiling", history=1, ttl=86400
    )
    await _ensure_kv(
        bus, subjects.SESSIONS_BUCKET, "Web UI sessions, by the SHA-256 of their id", history=1, ttl=24 * 3600
    )
    await _ensure_kv(bus, subjects.EXECUTORS_BUCKET, "Live executors: pool and runtime", history=1, ttl=30)
    await _ensure_kv(
        bus, subjects.LIMITS_BUCKET, "Agents' request and token counts, rate-limit cool-downs", history=1, ttl=7200
    )
    await _ensure_kv(bus, subjects.TRIGGER_STATE_BUCKET, "Schedules, storm windows, trigger counts", history=1)
    await _ensure_kv(
        bus, subjects.IDEMPOTENCY_BUCKET, "Idempotency-Key of a run request -> its run", history=1, ttl=24 * 3600
    )
    await _ensure_kv(bus, subjects.ITEMS_BUCKET, "Ended foreach items, RUN.NODE.INDEX (ADR 11)", history=1)
    await _ensure_object_store(
        bus,
        subjects.WORKSPACES_BUCKET,
        "Run workspaces, one object per version",
        storage,
        ttl=seconds(bus.cfg.workspace_retention),
        max_bytes=bus.cfg.workspace_store_bytes,
    )
    # Kept as long as run records are (for ever): a record's references must stay readable.
    await _ensure_object_store(
        bus,
        subjects.VALUES_BUCKET,
        "Values too large for a message, RUN/SHA256 (ADR 11)",
        storage,
        ttl=0,
        max_bytes=bus.cfg.value_store_bytes,
    )


async def _ensure_object_store(
    bus: Bus, bucket: str, description: str, storage: api.StorageType, *, ttl: float, max_bytes: int
) -> None:
    config = api.ObjectStoreConfig(
        description=description,
        ttl=ttl or None,
        max_bytes=max_bytes,
        storage=storage,
        replicas=bus.cfg.replicas,
    )
    try:
        await bus.js.create_object_store(bucket, config=config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # exists with other settings: keep it as the operator left it
            raise


async def _ensure_stream(bus: Bus, sc: api.StreamConfig, *, update: bool = True) -> None:
    try:
        await bus.js.add_stream(sc)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != 10058:  # name in use with a different configuration
            raise
        if update:
            await bus.js.update_stream(sc)


async def _ensure_kv(bus: Bus, bucket: str, description: str, *, history: int, ttl: float | None = None) -> None:
    storage = api.StorageType.FILE if bus.cfg.storage == "file" else api.StorageType.MEMORY
    try:
        kv = await bus.js.create_key_value(
            bucket=bucket,
            description=description,
            history=history,
            storage=storage,
            replicas=bus.cfg.replicas,
            max_value_size=bus.cfg.max_payload,
            ttl=ttl,
            # Reads go straight to the stream (no JetStream API round trip through the meta
            # layer, no header re-parsing): the scheduler, the CLI and the gateway read often.
            direct=True,
        )
    except nats.js.errors.BadRequestError:
        kv = await bus.js.key_value(bucket)
    bus.remember_kv(bucket, kv)
