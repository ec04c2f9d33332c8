"""Who is calling: bearer tokens of the configured users, their roles, and the generated admin.

Tokens come from the secret source like every other secret (never from the config file), are
compared in constant time (every user's digest is compared, whoever matches), and never logged.
With no users configured, one admin token is made at the first start and kept 0600 in the data
dir, so a restarted gateway keeps accepting it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import structlog

from shared.config.secrets import SecretSource
from shared.config.settings import GatewayConfig
from shared.contract.errors import ConfigurationError

log = structlog.get_logger("flowyard.gateway")

# What each role may do: a role needed by an operation is granted by these roles.
GRANTED_BY: dict[str, frozenset[str]] = {
    "viewer": frozenset({"viewer", "operator", "approver", "admin"}),
    "operator": frozenset({"operator", "admin"}),
    "approver": frozenset({"approver", "admin"}),
    "admin": frozenset({"admin"}),
    "alerts": frozenset({"alerts", "operator", "admin"}),
}
ADMIN_TOKEN_FILE = "gateway-admin-token"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        return bool(self.roles & GRANTED_BY[role])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Users:
    def __init__(self, entries: list[tuple[User, str]]) -> None:
        self._entries = [(user, _digest(token)) for user, token in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def named(self, name: str) -> User | None:
        """The user a session was made for, if it is still configured."""
        return next((user for user, _ in self._entries if user.name == name), None)

    def authenticate(self, token: str) -> User | None:
        given = _digest(token)
        found: User | None = None
        for user, digest in self._entries:
            # No early exit: the time taken does not depend on which user (if any) matched.
            if hmac.compare_digest(given, digest):
                found = user
        return found


def bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


async def load_users(cfg: GatewayConfig, data_dir: Path) -> tuple[Users, Path | None]:
    """The configured users with their tokens; or the generated admin and the file it is kept in."""
    if not cfg.users:
        path = data_dir / ADMIN_TOKEN_FILE
        try:
            token = await asyncio.to_thread(_admin_token, path)
        except OSError as exc:
            raise ConfigurationError(
                f"gateway: no users are configured and the admin token cannot be kept in {path} "
                f"({exc.strerror or exc}); set gateway.data_dir to a writable directory, or configure gateway.users"
            ) from None
        return Users([(User("admin", frozenset({"admin"})), token)]), path
    source = SecretSource(cfg.secrets_dir)
    entries: list[tuple[User, str]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, spec in cfg.users.items():
        found, missing = await source.resolve([spec.token_secret])
        if missing:
            problems.append(
                f"gateway.users.{name}: token secret {spec.token_secret!r} not found; "
                f"put the token in {source.where(spec.token_secret)}"
            )
            continue
        token = found[spec.token_secret].strip()
        if not token:
            problems.append(f"gateway.users.{name}: token secret {spec.token_secret!r} is empty")
            continue
        if token in seen:
            problems.append(f"gateway.users.{name}: has the same token as user {seen[token]!r}; give each its own")
            continue
        if len(token) < 16:
            log.warning("short gateway token; use at least 16 random characters", user=name)
        seen[token] = name
        entries.append((User(name, frozenset(spec.roles)), token))
    if problems:
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems))
    return Users(entries), None


def _admin_token(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "flowyard"


def new_token() -> str:
    return secrets.token_urlsafe(32)
