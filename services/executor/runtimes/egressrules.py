"""What the egress proxy enforces for one attempt, and what its log says it refused.

The Docker and Kubernetes runtimes both start Debian's tinyproxy (the image ``flowyard/egress``)
with :func:`config` and :func:`filter_text`, give the agent :func:`proxy_env`, and read the
proxy's log with :func:`refusals` once the agent has ended, which :func:`report` logs and counts
(docs/agents.md, "Egress"). All pure but :func:`report`.

tinyproxy matches each request against extended regular expressions: with ``FilterURLs`` a
CONNECT is matched as ``host:port`` and a plain HTTP request as its whole URL, so an allowlist of
``host:port`` pairs is enforced exactly (a host allowed on 443 is refused on 8443); ``FilterDefaultDeny``
refuses everything else. No ``ConnectPort`` line: the filter already names the port, and a
refusal by port would log no host.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import structlog

from shared.telemetry import metrics

log = structlog.get_logger("flowyard.executor.egress")

PORT = 3128
# The proxy prints this once it accepts connections; the agent starts only then.
READY_LINE = "Accepting connections"
IMAGE_ENV_CONFIG = "FY_EGRESS_CONFIG"
IMAGE_ENV_FILTER = "FY_EGRESS_FILTER"
_REFUSED = re.compile(r'Proxying refused on filtered url "([^"]+)"')


def provider_entry(url: str) -> str:
    """``host:port`` of a provider's base URL (443 for https, 80 for http when it names none)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _host_pattern(host: str) -> str:
    if host.startswith("*."):
        # Every subdomain, at any depth, and not the bare domain (as `*.` reads).
        return r"([a-z0-9-]+\.)+" + re.escape(host[2:].lower())
    return re.escape(host.lower())


def filter_lines(allow: list[str]) -> list[str]:
    """One anchored pattern per way a client may ask for each ``host:port``."""
    lines = []
    for entry in sorted(set(allow)):
        host, _, port = entry.rpartition(":")
        pattern = _host_pattern(host)
        lines.append(f"^{pattern}:{port}$")  # CONNECT host:port (HTTPS and any tunnelled protocol)
        lines.append(f"^http://{pattern}:{port}(/|$)")  # plain HTTP, port named
        if port == "80":
            lines.append(f"^http://{pattern}(/|$)")  # ... or implied
    return lines


def filter_text(allow: list[str]) -> str:
    return "\n".join(filter_lines(allow)) + "\n"


def config(*, filter_path: str = "/tmp/egress.filter") -> str:
    lines = [
        f"Port {PORT}",
        "Listen 0.0.0.0",
        "Timeout 600",
        "MaxClients 64",
        "LogLevel Info",  # Info: the refusals, and the line that says it is ready
        "DisableViaHeader Yes",
        "FilterType ere",
        "FilterURLs On",
        "FilterCaseSensitive Off",
        "FilterDefaultDeny Yes",
        f'Filter "{filter_path}"',
    ]
    return "\n".join(lines) + "\n"


def refusals(log_text: str, *, every: bool = False) -> list[str]:
    """The places the proxy refused, as ``host:port``, in order: each once, or each time (``every``)."""
    seen: list[str] = []
    for match in _REFUSED.finditer(log_text):
        url = match.group(1)
        if "://" in url:
            parts = urlsplit(url)
            place = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        else:
            place = url.lower()
        if every or place not in seen:
            seen.append(place)
    return seen


def proxy_env(host: str) -> dict[str, str]:
    """What the agent is given: every spelling clients read (curl and Python the lower-case one)."""
    url = f"http://{host}:{PORT}"
    names = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
    return {**dict.fromkeys(names, url), "NO_PROXY": "", "no_proxy": ""}


def report(agent: str, refused: list[str], **where: Any) -> None:
    """Each refused place logged once with how often, every refusal counted for the agent."""
    for place, times in Counter(refused).items():
        log.warning(
            "the egress proxy refused the agent a host not on its network.allow list",
            agent=agent,
            host=place,
            times=times,
            **where,
        )
    if refused:
        metrics.EGRESS_DENIED.labels(agent).inc(len(refused))
