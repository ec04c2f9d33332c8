"""Values under secret-looking keys replaced by ``[masked]``: what approvers and the web UI see of
a step's input (agents' real secrets never travel in inputs; this catches the ones people type)."""

from __future__ import annotations

from typing import Any

SECRET_KEYS = ("password", "passwd", "secret", "token", "apikey", "api_key", "private_key", "credential")


def mask_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "[masked]" if any(s in str(k).lower().replace("-", "_") for s in SECRET_KEYS) else mask_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value
