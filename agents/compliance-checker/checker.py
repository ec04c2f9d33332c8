"""compliance-checker: licences, HTTP security headers and secrets in a workspace.

Reads its input (JSON) on stdin and the files at $FLOWYARD_WORKSPACE (default /workspace);
prints one JSON object: ``violations`` (rule, severity, file, line, message) and ``passed``
(true when nothing at or above ``fail_on`` was found). Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEVERITIES = ("info", "warning", "critical")
DEFAULT_ALLOWED = [
    "MIT",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "PSF-2.0",
    "Python-2.0",
    "MPL-2.0",
    "Unlicense",
    "0BSD",
    "CC0-1.0",
    "Zlib",
]
LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "LICENCE.md", "COPYING", "COPYING.md")
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "dist", "build", ".tox"}
MAX_FILE = 1024 * 1024  # larger files are not scanned for secrets or headers

# Well-known key formats: (rule, what, pattern)
SECRET_PATTERNS: list[tuple[str, str, re.Pattern[str]]] = [
    ("secret-aws-access-key", "AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("secret-github-token", "GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("secret-slack-token", "Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("secret-private-key", "private key", re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP )?PRIVATE KEY-----")),
    ("secret-google-api-key", "Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("secret-stripe-key", "Stripe secret key", re.compile(r"\b[sr]k_live_[0-9A-Za-z]{16,}\b")),
]
# name = "value" style assignments whose value is checked for entropy
ASSIGNMENT = re.compile(
    r"""(?i)\b([A-Za-z0-9_.-]*(?:secret|token|passw(?:or)?d|api[_-]?key|access[_-]?key|auth)[A-Za-z0-9_.-]*)\s*[:=]\s*["']([^"'\s]{8,})["']"""
)
PLACEHOLDER = re.compile(r"(?i)^(?:\$\{?[A-Z_]+\}?|<[^>]+>|x+|\*+|changeme|example|your[_-].*|test|dummy|none|null)$")

WEB_CONFIG_NAMES = re.compile(r"(?i)(nginx.*\.conf|\.conf$|\.htaccess$|httpd.*\.conf|apache.*\.conf|Caddyfile$)")
HEADERS = {
    "content-security-policy": ("header-csp", "Content-Security-Policy", "warning"),
    "x-frame-options": ("header-x-frame-options", "X-Frame-Options", "warning"),
    "strict-transport-security": ("header-hsts", "Strict-Transport-Security", "warning"),
    "x-content-type-options": ("header-x-content-type-options", "X-Content-Type-Options", "warning"),
}


def violation(rule: str, severity: str, file: str | None, line: int | None, message: str) -> dict[str, Any]:
    return {"rule": rule, "severity": severity, "file": file, "line": line, "message": message}


def walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:4096]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


# --- licences ---------------------------------------------------------------------------------


def normalise_licence(text: str) -> str:
    t = text.strip()
    aliases = {
        "apache 2.0": "Apache-2.0",
        "apache-2": "Apache-2.0",
        "apache license 2.0": "Apache-2.0",
        "apache software license": "Apache-2.0",
        "mit license": "MIT",
        "bsd": "BSD-3-Clause",
        "bsd license": "BSD-3-Clause",
        "new bsd": "BSD-3-Clause",
        "isc license": "ISC",
        "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
        "gpl": "GPL-3.0",
        "gplv3": "GPL-3.0",
        "gplv2": "GPL-2.0",
        "lgpl": "LGPL-3.0",
        "agpl": "AGPL-3.0",
    }
    return aliases.get(t.lower(), t)


def licence_allowed(licence: str, allowed: list[str]) -> bool:
    """An SPDX expression is allowed when every alternative of some OR-branch is allowed."""
    allow = {a.lower() for a in allowed}
    expr = licence.replace("(", " ").replace(")", " ")
    for branch in re.split(r"\s+OR\s+", expr, flags=re.IGNORECASE):
        parts = [normalise_licence(p) for p in re.split(r"\s+AND\s+", branch, flags=re.IGNORECASE) if p.strip()]
        if parts and all(p.lower() in allow for p in parts):
            return True
    return False


def dependency_licences(root: Path) -> Iterator[tuple[str, str, int | None, str]]:
    """(file, dependency, line, licence) for every dependency that declares its licence.

    Licences come from metadata in the workspace: package.json files under node_modules, a
    ``licenses.json``/``THIRD_PARTY_LICENSES.json`` map, ``# license: X`` comments in
    requirements files, and `[tool.flowyard.licenses]` in pyproject.toml.
    """
    for path in walk(root):
        rel = str(path.relative_to(root))
        name = path.name
        if name.startswith("requirements") and name.endswith(".txt"):
            text = read_text(path) or ""
            for no, line in enumerate(text.splitlines(), 1):
                m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)[^#]*#\s*licen[cs]e:\s*(.+?)\s*$", line, re.IGNORECASE)
                if m:
                    yield rel, m.group(1), no, m.group(2)
        elif name == "pyproject.toml":
            try:
                data = tomllib.loads(read_text(path) or "")
            except tomllib.TOMLDecodeError:
                continue
            declared = data.get("tool", {}).get("flowyard", {}).get("licenses", {})
            for dep, lic in declared.items():
                yield rel, dep, None, str(lic)
        elif name in ("licenses.json", "THIRD_PARTY_LICENSES.json"):
            try:
                data = json.loads(read_text(path) or "{}")
            except ValueError:
                continue
            if isinstance(data, dict):
                for dep, lic in data.items():
                    yield rel, dep, None, str(lic if not isinstance(lic, dict) else lic.get("license", ""))
    node_modules = root / "node_modules"
    if node_modules.is_dir():
        for pkg in sorted(node_modules.glob("*/package.json")) + sorted(node_modules.glob("@*/*/package.json")):
            try:
                meta = json.loads(pkg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            lic = meta.get("license")
            if isinstance(lic, dict):
                lic = lic.get("type")
            yield str(pkg.relative_to(root)), str(meta.get("name", pkg.parent.name)), None, str(lic or "UNKNOWN")


def check_licences(root: Path, allowed: list[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not any((root / n).is_file() for n in LICENSE_FILES):
        found.append(
            violation("license-missing", "warning", None, None, "no LICENSE file at the top of the repository")
        )
    for path in (root / "package.json", root / "pyproject.toml"):
        if path.is_file():
            own = _own_licence(path)
            if own and not licence_allowed(own, allowed):
                found.append(
                    violation(
                        "license-not-allowed",
                        "warning",
                        path.name,
                        None,
                        f"the project's own licence {own!r} is not on the allow-list",
                    )
                )
    for file, dep, line, lic in dependency_licences(root):
        if not lic or lic.upper() in ("UNKNOWN", "UNLICENSED", "NONE"):
            found.append(violation("license-unknown", "warning", file, line, f"dependency {dep!r} declares no licence"))
        elif not licence_allowed(lic, allowed):
            found.append(
                violation(
                    "license-not-allowed",
                    "critical",
                    file,
                    line,
                    f"dependency {dep!r} is licensed {lic!r}, which is not on the allow-list",
                )
            )
    return found


def _own_licence(path: Path) -> str | None:
    text = read_text(path) or ""
    try:
        if path.name == "package.json":
            lic = json.loads(text).get("license")
            return lic if isinstance(lic, str) else None
        project = tomllib.loads(text).get("project", {})
        lic = project.get("license")
        if isinstance(lic, dict):
            lic = lic.get("text")
        return lic if isinstance(lic, str) and len(lic) < 64 else None
    except (ValueError, tomllib.TOMLDecodeError, AttributeError):
        return None


# --- HTTP security headers ----------------------------------------------------------------------


def check_headers(root: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in walk(root):
        rel = str(path.relative_to(root))
        if not WEB_CONFIG_NAMES.search(path.name):
            continue
        text = read_text(path)
        if text is None or not _is_web_config(text):
            continue
        lower = text.lower()
        for key, (rule, header, severity) in HEADERS.items():
            if key not in lower:
                found.append(
                    violation(rule, severity, rel, _server_line(text), f"the web server config sets no {header} header")
                )
    return found


def _is_web_config(text: str) -> bool:
    return bool(re.search(r"(?m)^\s*(server\s*\{|<VirtualHost|listen\s+\d+|Header\s+(always\s+)?set)", text))


def _server_line(text: str) -> int | None:
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*(server\s*\{|<VirtualHost)", line):
            return no
    return None


# --- secrets ------------------------------------------------------------------------------------


def mask(value: str) -> str:
    """What the report shows of a secret: enough to find it, not enough to use it."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 6) + value[-2:]


def entropy(value: str) -> float:
    counts: dict[str, int] = {}
    for ch in value:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def check_secrets(root: Path, min_entropy: float = 3.5) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in walk(root):
        text = read_text(path)
        if text is None:
            continue
        rel = str(path.relative_to(root))
        for no, line in enumerate(text.splitlines(), 1):
            hit = False
            for rule, what, pattern in SECRET_PATTERNS:
                for m in pattern.finditer(line):
                    hit = True
                    found.append(violation(rule, "critical", rel, no, f"{what} in the source: {mask(m.group(0))}"))
            if hit:
                continue
            for m in ASSIGNMENT.finditer(line):
                value = m.group(2)
                if PLACEHOLDER.match(value) or entropy(value) < min_entropy:
                    continue
                found.append(
                    violation(
                        "secret-high-entropy",
                        "critical",
                        rel,
                        no,
                        f"{m.group(1)} looks like a hard-coded secret: {mask(value)}",
                    )
                )
    return found


# --- the agent --------------------------------------------------------------------------------


def check(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    checks = params.get("checks") or ["licenses", "headers", "secrets"]
    allowed = list(params.get("allowed_licenses") or DEFAULT_ALLOWED)
    fail_on = params.get("fail_on", "critical")
    violations: list[dict[str, Any]] = []
    if "licenses" in checks:
        violations += check_licences(root, allowed)
    if "headers" in checks:
        violations += check_headers(root)
    if "secrets" in checks:
        violations += check_secrets(root, float(params.get("min_entropy", 3.5)))
    violations.sort(key=lambda v: (-SEVERITIES.index(v["severity"]), v["file"] or "", v["line"] or 0, v["rule"]))
    worst = SEVERITIES.index(fail_on)
    counts = {s: sum(1 for v in violations if v["severity"] == s) for s in SEVERITIES}
    return {
        "passed": not any(SEVERITIES.index(v["severity"]) >= worst for v in violations),
        "violations": violations,
        "counts": counts,
        # One line a finding, worst first, for people reading a run's outputs.
        "summary": [f"{v['severity']:<8} {_where(v)}  {v['message']}" for v in violations],
    }


def _where(v: dict[str, Any]) -> str:
    if not v["file"]:
        return "(repository)"
    return f"{v['file']}:{v['line']}" if v["line"] else v["file"]


def main() -> int:
    try:
        params = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        print(f"input is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("input must be a JSON object", file=sys.stderr)
        return 2
    base = Path(os.environ.get("FLOWYARD_WORKSPACE", "/workspace")).resolve()
    root = (base / str(params.get("path") or ".")).resolve()
    if root != base and base not in root.parents:
        print(f"path {params.get('path')!r} leads outside the workspace", file=sys.stderr)
        return 2
    if not root.is_dir():
        print(f"nothing to check: {root} is not a directory (run with --workspace DIR)", file=sys.stderr)
        return 2
    result = check(root, params)
    print(
        f"checked {root}: {len(result['violations'])} finding(s), passed={result['passed']}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
