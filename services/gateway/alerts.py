"""``POST /v1/alerts/alertmanager`` and ``GET /v1/triggers``.

The gateway only receives and forwards: a valid notification is published to
``fy.alert.alertmanager`` (captured in FY_TRIGGERS) and answered 200 once JetStream has it, so
an answered notification is never lost. Matching alerts to workflows is the planner's.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from shared.contract import subjects
from shared.contract.alerts import AlertsAccepted, Notification, encode_notification
from shared.contract.envelope import MSG_ID
from shared.state.triggering import list_triggers

from .context import GATEWAY
from .http import json_body, json_response
from .problems import HttpProblem

_MAX_ALERTS = 10_000


async def alertmanager(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    note = await json_body(request, Notification)
    assert note is not None
    if note.version != "4":
        raise HttpProblem(422, f"payload version {note.version!r} is not supported; Alertmanager sends version 4")
    if len(note.alerts) > _MAX_ALERTS:
        raise HttpProblem(413, f"{len(note.alerts)} alerts in one notification; at most {_MAX_ALERTS}")
    body = encode_notification(note)
    # Every delivery goes through (repeats, an HA pair's copies): the planner de-duplicates each
    # alert by fingerprint and start, and counts what it dropped, so repeats stay visible.
    headers = {MSG_ID: "am:" + uuid.uuid4().hex, "content-type": "application/json"}
    await gw.bus.publish_raw(subjects.ALERTMANAGER, body, headers)
    return json_response(AlertsAccepted(status="ok", alerts=len(note.alerts)))


async def triggers(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return json_response(await list_triggers(gw.bus))
