"""compliance-checker's rules on small trees written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .loader import agent_module

checker = agent_module("compliance-checker", "checker")


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def rules(result: dict) -> list[tuple[str, str | None, int | None]]:
    return [(v["rule"], v["file"], v["line"]) for v in result["violations"]]


def test_a_clean_repository_passes(tmp_path: Path) -> None:
    write(tmp_path, {"LICENSE": "MIT", "main.py": "print('hi')\n", "requirements.txt": "attrs  # license: MIT\n"})
    result = checker.check(tmp_path, {})
    assert result["passed"] is True and result["violations"] == []


def test_missing_licence_and_dependency_licences(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "ok==1  # license: Apache-2.0\nbad==2  # license: GPL-3.0\nwho==3  # license: UNKNOWN\n",
            "licenses.json": json.dumps({"left-pad": "WTFPL", "dual": "MIT OR GPL-3.0"}),
            "node_modules/react/package.json": json.dumps({"name": "react", "license": "MIT"}),
            "node_modules/copyleft/package.json": json.dumps({"name": "copyleft", "license": "AGPL-3.0"}),
        },
    )
    found = rules(checker.check(tmp_path, {"checks": ["licenses"]}))
    assert ("license-missing", None, None) in found
    assert ("license-not-allowed", "requirements.txt", 2) in found
    assert ("license-unknown", "requirements.txt", 3) in found
    assert ("license-not-allowed", "licenses.json", None) in found  # WTFPL; "MIT OR GPL" is fine
    assert ("license-not-allowed", "node_modules/copyleft/package.json", None) in found
    assert not any(f[1] == "node_modules/react/package.json" for f in found)
    assert len([f for f in found if f[1] == "licenses.json"]) == 1


def test_allow_list_is_an_input(tmp_path: Path) -> None:
    write(tmp_path, {"LICENSE": "x", "requirements.txt": "bad==2  # license: GPL-3.0\n"})
    assert checker.check(tmp_path, {"allowed_licenses": ["GPL-3.0"]})["passed"] is True


def test_spdx_expressions() -> None:
    allowed = ["MIT", "Apache-2.0"]
    assert checker.licence_allowed("MIT OR GPL-3.0", allowed)
    assert checker.licence_allowed("(MIT AND Apache-2.0)", allowed)
    assert not checker.licence_allowed("MIT AND GPL-3.0", allowed)
    assert checker.licence_allowed("Apache 2.0", allowed)  # a common alias


def test_security_headers_in_web_server_configs(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "nginx/site.conf": "server {\n  listen 80;\n  add_header X-Frame-Options DENY;\n}\n",
            "nginx/safe.conf": (
                "server {\n listen 443;\n add_header Content-Security-Policy \"default-src 'self'\";\n"
                " add_header X-Frame-Options DENY;\n add_header Strict-Transport-Security max-age=63072000;\n"
                " add_header X-Content-Type-Options nosniff;\n}\n"
            ),
            "notes.conf": "just = some settings\n",  # not a web server config
        },
    )
    found = rules(checker.check(tmp_path, {"checks": ["headers"]}))
    assert sorted(r for r, f, _ in found if f == "nginx/site.conf") == [
        "header-csp",
        "header-hsts",
        "header-x-content-type-options",
    ]
    assert not any(f in ("nginx/safe.conf", "notes.conf") for _, f, _ in found)


def test_secrets_are_found_and_masked(tmp_path: Path) -> None:
    key = "AKIA" + "Q" * 16
    password = "h7Gk2pQz9Lm4Xw8R"
    write(
        tmp_path,
        {
            "app.py": f'KEY = "{key}"\npassword = "{password}"\ntoken = "changeme"\napi_key = "aaaaaaaaaaaa"\n',
            "id_rsa": "-----BEGIN RSA PRIVATE KEY-----\nabc\n",
        },
    )
    result = checker.check(tmp_path, {"checks": ["secrets"]})
    found = rules(result)
    assert ("secret-aws-access-key", "app.py", 1) in found
    assert ("secret-high-entropy", "app.py", 2) in found
    assert ("secret-private-key", "id_rsa", 1) in found
    assert len(found) == 3  # placeholders and low-entropy values are not secrets
    text = json.dumps(result)
    assert key not in text and password not in text  # the report never carries the value


@pytest.mark.parametrize(("fail_on", "passed"), [("critical", True), ("warning", False)])
def test_fail_on_sets_the_bar(tmp_path: Path, fail_on: str, passed: bool) -> None:
    write(tmp_path, {"main.py": "x = 1\n"})  # no LICENSE: a warning only
    assert checker.check(tmp_path, {"fail_on": fail_on})["passed"] is passed


def test_main_reads_stdin_and_the_workspace(tmp_path: Path, monkeypatch, capsys) -> None:
    import io

    write(tmp_path, {"LICENSE": "MIT", "sub/x.py": 'secret = "Zq8xW3vN7bK2mP5t"\n'})
    monkeypatch.setenv("FLOWYARD_WORKSPACE", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"path": "sub"})))
    assert checker.main() == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False and out["violations"][0]["file"] == "x.py"
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"path": "../.."})))
    assert checker.main() == 2
    assert "outside the workspace" in capsys.readouterr().err


def test_the_summary_has_a_line_a_finding_worst_first(tmp_path: Path) -> None:
    write(tmp_path, {"main.py": 'KEY = "AKIAIOSFODNN7EXAMPLE"\n'})
    result = checker.check(tmp_path, {})
    assert len(result["summary"]) == len(result["violations"])
    assert result["summary"][0].startswith("critical main.py:1 ") and "AKIAIOSFODNN7EXAMPLE" not in result["summary"][0]
    assert result["summary"][-1].startswith("warning  (repository)  no LICENSE")
