"""The security-scanner agent: secrets, Python (bandit), shell (shellcheck) and Dockerfiles.

Reads {path, checks, fail_on} on stdin, scans /workspace (or $FLOWYARD_WORKSPACE), prints
{findings, passed, counts, summary, skipped}: findings in the code-reviewer's shape (category,
severity critical|warning|info, file, line, message, suggestion) plus the rule that matched.
Offline: bandit and shellcheck come with the image; a tool that is missing is reported under
`skipped`, never silently passed over. Matched secret values are masked in every message.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SEVERITIES = ("critical", "warning", "info")
CHECKS = ("secrets", "python", "shell", "dockerfile")
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "dist", "build"}
MAX_FILE = 2 * 1024 * 1024

SECRET_PATTERNS = [
    ("aws-access-key", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("private-key", re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----")),
    ("github-token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("slack-token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
    ("stripe-key", re.compile(r"\b[sr]k_live_[A-Za-z0-9]{20,}\b")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("anthropic-key", re.compile(r"\bsk-ant-[A-Za-z0-9_-]{20,}\b")),
]
ASSIGNED = re.compile(
    r"""(?i)\b(\w*(?:password|passwd|secret|api[_-]?key|token|access[_-]?key)\w*)["']?\s*[:=]\s*["']([^"'\s]{8,})["']"""
)


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def mask(value: str) -> str:
    return value[:4] + "…" if len(value) > 4 else "…"


def finding(category, severity, file, line, message, suggestion, rule) -> dict:
    return {
        "category": category,
        "severity": severity,
        "file": file,
        "line": line,
        "message": message,
        "suggestion": suggestion,
        "rule": rule,
    }


def files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_FILE:
                found.append(path)
    return found


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:4096]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_secrets(root: Path, paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        text = text_of(path)
        if text is None:
            continue
        rel = str(path.relative_to(root))
        for number, line in enumerate(text.splitlines(), 1):
            for rule, pattern in SECRET_PATTERNS:
                m = pattern.search(line)
                if m:
                    out.append(
                        finding(
                            "secrets",
                            "critical",
                            rel,
                            number,
                            f"{rule} {mask(m.group(0))} committed in the file",
                            "revoke it, remove it from the history, and read it from a secret store",
                            rule,
                        )
                    )
            m = ASSIGNED.search(line)
            if m and entropy(m.group(2)) >= 3.0 and not m.group(2).startswith(("${", "{{", "$(", "<")):
                out.append(
                    finding(
                        "secrets",
                        "warning",
                        rel,
                        number,
                        f"{m.group(1)} assigned a literal value {mask(m.group(2))}",
                        "take it from the environment or a secret store, never the source",
                        "hardcoded-credential",
                    )
                )
    return out


QUOTED = re.compile(r"'([^']{1,4})[^']*'")  # bandit quotes a hard-coded password it found


def masked(m: re.Match[str]) -> str:
    return f"'{m.group(1)}…'"


BANDIT_SEVERITY = {"HIGH": "critical", "MEDIUM": "warning", "LOW": "info"}


def scan_python(root: Path, paths: list[Path], skipped: list[str]) -> list[dict]:
    if not any(p.suffix == ".py" for p in paths):
        return []
    try:
        import bandit  # noqa: F401
    except ImportError:
        skipped.append("python: bandit is not installed where the agent ran (it comes with the agent's image)")
        return []
    done = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "-f", "json", "-q", "-x", ",".join(SKIP_DIRS), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        report = json.loads(done.stdout or "{}")
    except json.JSONDecodeError:
        skipped.append(f"python: bandit printed no report (exit {done.returncode}): {done.stderr.strip()[-200:]}")
        return []
    out = []
    for r in report.get("results", []):
        rel = str(Path(r["filename"]).resolve().relative_to(root.resolve()))
        out.append(
            finding(
                "python",
                BANDIT_SEVERITY.get(r.get("issue_severity", "LOW"), "info"),
                rel,
                int(r.get("line_number", 0)),
                f"{QUOTED.sub(masked, r.get('issue_text', '').strip())} "
                f"(confidence {str(r.get('issue_confidence', '')).lower()})",
                f"see {r.get('more_info') or 'bandit ' + r.get('test_id', '')}",
                f"bandit:{r.get('test_id', '')}",
            )
        )
    return out


SHELLCHECK_SEVERITY = {"error": "critical", "warning": "warning", "info": "info", "style": "info"}


def is_shell(path: Path) -> bool:
    if path.suffix in (".sh", ".bash"):
        return True
    with path.open("rb") as f:
        first = f.readline(200)
    return first.startswith(b"#!") and re.search(rb"\b(ba|da|k)?sh\b", first) is not None


def scan_shell(root: Path, paths: list[Path], skipped: list[str]) -> list[dict]:
    scripts = [p for p in paths if is_shell(p)]
    if not scripts:
        return []
    tool = shutil.which("shellcheck")
    if tool is None:
        skipped.append("shell: shellcheck is not installed where the agent ran (it comes with the agent's image)")
        return []
    done = subprocess.run([tool, "-f", "json", *[str(p) for p in scripts]], capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        skipped.append(f"shell: shellcheck printed no report (exit {done.returncode})")
        return []
    return [
        finding(
            "shell",
            SHELLCHECK_SEVERITY.get(r.get("level", "info"), "info"),
            str(Path(r["file"]).relative_to(root)),
            int(r.get("line", 0)),
            str(r.get("message", "")),
            f"https://www.shellcheck.net/wiki/SC{r.get('code')}",
            f"SC{r.get('code')}",
        )
        for r in report
    ]


def scan_dockerfiles(root: Path, paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        if not (path.name == "Dockerfile" or path.name.startswith("Dockerfile.") or path.suffix == ".dockerfile"):
            continue
        text = text_of(path) or ""
        rel = str(path.relative_to(root))
        user_set = False
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            word = line.split(maxsplit=1)[0].upper() if line and not line.startswith("#") else ""
            rest = line.split(maxsplit=1)[1] if len(line.split(maxsplit=1)) > 1 else ""
            if word == "FROM":
                image = rest.split()[0] if rest else ""
                if (
                    image != "scratch"
                    and "$" not in image
                    and (":" not in image.split("/")[-1] or image.endswith(":latest"))
                    and "@" not in image
                ):
                    out.append(
                        finding(
                            "dockerfile",
                            "warning",
                            rel,
                            number,
                            f"base image {image!r} is not pinned",
                            "name an exact tag or a digest (image@sha256:…)",
                            "unpinned-base",
                        )
                    )
            elif word == "USER":
                user_set = rest.split(":")[0] not in ("root", "0")
            elif word == "ADD" and re.match(r"(?i)(--\S+\s+)*https?://", rest):
                out.append(
                    finding(
                        "dockerfile",
                        "warning",
                        rel,
                        number,
                        "ADD fetches a URL at build time, unchecked",
                        "download with a checksum check in RUN, or COPY a vetted file",
                        "add-url",
                    )
                )
            elif word == "RUN" and re.search(r"(curl|wget)[^|]*\|\s*(ba|z)?sh\b", rest):
                out.append(
                    finding(
                        "dockerfile",
                        "critical",
                        rel,
                        number,
                        "a script piped from the network into a shell",
                        "download it, verify its checksum or signature, then run it",
                        "curl-pipe-shell",
                    )
                )
            elif word in ("ENV", "ARG") and re.search(r"(?i)(password|secret|token|api_?key)\w*\s*[= ]\s*\S+", rest):
                out.append(
                    finding(
                        "dockerfile",
                        "critical",
                        rel,
                        number,
                        f"{word} bakes a secret into the image",
                        "pass secrets at run time (a mounted secret), never in the image",
                        "secret-in-image",
                    )
                )
            elif word == "RUN" and "apt-get install" in rest and "--no-install-recommends" not in rest:
                out.append(
                    finding(
                        "dockerfile",
                        "info",
                        rel,
                        number,
                        "apt-get install pulls in recommended packages",
                        "add --no-install-recommends: a smaller image, less to patch",
                        "apt-recommends",
                    )
                )
        if not user_set:
            out.append(
                finding(
                    "dockerfile",
                    "warning",
                    rel,
                    1,
                    "the container runs as root (no USER)",
                    "add a non-root USER before the ENTRYPOINT",
                    "runs-as-root",
                )
            )
    return out


def main() -> int:
    try:
        params = json.loads(sys.stdin.read() or "{}") or {}
    except json.JSONDecodeError as exc:
        print(json.dumps({"error": {"reason": "bad_request", "message": f"the input is not JSON ({exc.msg})"}}))
        return 1
    base = Path(os.environ.get("FLOWYARD_WORKSPACE") or "/workspace").resolve()
    root = (base / params.get("path", "")).resolve()
    if base not in (root, *root.parents) or not root.is_dir():
        message = f"path {params.get('path')!r} is not a folder inside the workspace"
        print(json.dumps({"error": {"reason": "bad_request", "message": message}}))
        return 1
    checks = params.get("checks") or list(CHECKS)
    fail_on = params.get("fail_on", "critical")
    paths = files(root)
    skipped: list[str] = []
    print(f"scanning {len(paths)} files for {', '.join(checks)}", file=sys.stderr)
    found: list[dict] = []
    if "secrets" in checks:
        found += scan_secrets(root, paths)
    if "python" in checks:
        found += scan_python(root, paths, skipped)
    if "shell" in checks:
        found += scan_shell(root, paths, skipped)
    if "dockerfile" in checks:
        found += scan_dockerfiles(root, paths)
    found.sort(key=lambda f: (SEVERITIES.index(f["severity"]), f["file"], f["line"]))
    counts = {s: sum(f["severity"] == s for f in found) for s in SEVERITIES}
    worst = SEVERITIES.index(fail_on)
    passed = not any(SEVERITIES.index(f["severity"]) <= worst for f in found)
    summary = [f"{f['severity']} {f['file']}:{f['line']} {f['rule']}: {f['message']}" for f in found]
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(json.dumps({"findings": found, "passed": passed, "counts": counts, "summary": summary, "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
