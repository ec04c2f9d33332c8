"""Delivering a notice to one sink: webhook (HMAC-signed JSON), Slack incoming webhook, SMTP, log."""

from __future__ import annotations

import hashlib
import hmac
import json
from email.message import EmailMessage

import aiohttp
import aiosmtplib
import structlog

from shared.config.secrets import SecretSource
from shared.config.settings import SinkConfig
from shared.formats.durations import parse_duration

from .messages import Notice, slack_text

log = structlog.get_logger("flowyard.notifier")

SIGNATURE_HEADER = "X-Flowyard-Signature"


class DeliveryError(Exception):
    pass


class Sinks:
    def __init__(self, sinks: dict[str, SinkConfig], secrets: SecretSource) -> None:
        self.config = sinks
        self.secrets = secrets
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _secret(self, name: str | None) -> str | None:
        if name is None:
            return None
        found, missing = await self.secrets.resolve([name])
        if missing:
            raise DeliveryError(f"secret {name} is not available: set {self.secrets.where(name)}")
        return found[name]

    async def deliver(self, sink_name: str, notice: Notice, event_id: str) -> None:
        sink = self.config[sink_name]
        match sink.type:
            case "log":
                log.info("notification", sink=sink_name, type=notice.type, run_id=notice.run_id, summary=notice.summary)
            case "webhook":
                body = json.dumps(notice.payload(event_id), ensure_ascii=False).encode()
                headers = {
                    "Content-Type": "application/json",
                    "X-Flowyard-Event": notice.type,
                    "X-Flowyard-Delivery": event_id,
                }
                key = await self._secret(sink.signing_secret)
                if key is not None:
                    digest = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
                    headers[SIGNATURE_HEADER] = f"sha256={digest}"
                await self._post(sink, body, headers)
            case "slack":
                body = json.dumps({"text": slack_text(notice)}, ensure_ascii=False).encode()
                await self._post(sink, body, {"Content-Type": "application/json"})
            case "smtp":
                await self._mail(sink, notice)

    async def _post(self, sink: SinkConfig, body: bytes, headers: dict[str, str]) -> None:
        url = sink.url or await self._secret(sink.url_secret)
        assert url is not None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=parse_duration(sink.timeout))
        try:
            async with self._http.post(url, data=body, headers=headers, timeout=timeout) as resp:
                if resp.status >= 300:
                    text = (await resp.text())[:200]
                    raise DeliveryError(f"HTTP {resp.status} from the sink: {text}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Never put the URL in the message: webhook URLs are secrets.
            raise DeliveryError(f"cannot reach the sink: {type(exc).__name__}") from None

    async def _mail(self, sink: SinkConfig, notice: Notice) -> None:
        message = EmailMessage()
        message["From"] = sink.sender
        message["To"] = ", ".join(sink.to)
        message["Subject"] = f"[flowyard] {notice.workflow}: {notice.type} ({notice.run_id})"
        message.set_content(notice.summary + "\n\n" + json.dumps(notice.payload(""), indent=2, ensure_ascii=False))
        password = await self._secret(sink.password_secret)
        try:
            await aiosmtplib.send(
                message,
                hostname=sink.host,
                port=sink.port,
                start_tls=sink.starttls,
                username=sink.username,
                password=password,
                timeout=parse_duration(sink.timeout),
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"SMTP delivery failed: {type(exc).__name__}: {exc}") from None
