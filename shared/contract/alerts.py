"""Alertmanager's webhook payload (version 4), as the gateway accepts it and the planner reads it.

Lenient on purpose (unknown fields are kept out, missing ones get defaults) — Alertmanager adds
fields over releases — but typed, so a body that is not a notification is refused at the edge.
"""

from __future__ import annotations

import msgspec


class Alert(msgspec.Struct, kw_only=True):
    status: str = "firing"  # firing | resolved
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str = ""
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""


class Notification(msgspec.Struct, kw_only=True):
    version: str = "4"
    groupKey: str = ""
    truncatedAlerts: int = 0
    status: str = "firing"
    receiver: str = ""
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    alerts: list[Alert] = []


class AlertsAccepted(msgspec.Struct, kw_only=True):
    status: str = "ok"
    alerts: int = 0  # how many alerts the notification held


decode_notification = msgspec.json.Decoder(Notification).decode
encode_notification = msgspec.json.Encoder().encode
