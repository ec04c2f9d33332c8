"""code-reviewer's measures on snippets of Python and JavaScript."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from .loader import agent_module

reviewer = agent_module("code-reviewer", "reviewer")
LIMITS = {"max_complexity": 10, "max_function_lines": 50}


def cats(issues: list[dict]) -> list[tuple[str, int]]:
    return sorted((i["category"], i["line"]) for i in issues)


def test_python_complexity_is_mccabe() -> None:
    source = textwrap.dedent(
        """
        def f(a, b):
            if a and b:
                return 1
            for x in range(3):
                while x:
                    x -= 1
            try:
                pass
            except ValueError:
                pass
            return [y for y in range(3) if y]
        """
    )
    func = ast.parse(source).body[0]
    # 1 + if + and + for + while + except + comprehension + its if
    assert reviewer.complexity(func) == 8


def test_python_findings() -> None:
    source = textwrap.dedent(
        """
        import subprocess
        def handler(conn, name, expr):
            # TODO: validate name
            print("debug", name)
            q = "SELECT * FROM users WHERE name = '%s'" % name
            conn.execute(q)
            conn.execute("SELECT * FROM users WHERE name = ?", (name,))
            subprocess.run(f"echo {name}", shell=True)
            subprocess.run(["echo", name])
            return eval(expr)
        """
    )
    issues, functions = reviewer.review_python(source, "h.py", LIMITS)
    assert cats(issues) == [
        ("dangerous-call", 9),
        ("dangerous-call", 11),
        ("debug-print", 5),
        ("sql-injection", 7),
    ]
    assert functions[0]["name"] == "handler"
    assert cats(reviewer.review_comments(source, "h.py")) == [("todo", 4)]


def test_long_and_complex_python_functions() -> None:
    body = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(25))
    issues, _ = reviewer.review_python(f"def big(x):\n{body}\n", "big.py", LIMITS)
    assert [(i["category"], i["severity"]) for i in issues] == [
        ("complexity", "critical"),
        ("long-function", "warning"),
    ]


def test_a_syntax_error_is_reported_not_raised() -> None:
    issues, _ = reviewer.review_python("def broken(:\n", "b.py", LIMITS)
    assert issues[0]["category"] == "syntax" and issues[0]["severity"] == "critical"


def test_javascript_heuristics() -> None:
    source = textwrap.dedent(
        """
        // eval( in a comment is not a call; neither is "innerHTML = " in a string
        const s = "el.innerHTML = x";
        function render(el, html) {
          el.innerHTML = html;
          console.log("x");
          if (a && b || c) { return 1 }
        }
        const q = (db, n) => {
          return db.query(`SELECT * FROM t WHERE n = ${n}`);
        };
        """
    )
    issues, functions = reviewer.review_js(source, "a.js", LIMITS)
    assert cats(issues) == [("dangerous-call", 5), ("debug-print", 6), ("sql-injection", 10)]
    names = {f["name"]: f["complexity"] for f in functions}
    assert names["render"] == 4 and "q" in names


def test_score_and_metrics(tmp_path: Path) -> None:
    (tmp_path / "clean.py").write_text("def f(x):\n    return x + 1\n")
    clean = reviewer.review(tmp_path, {})
    assert clean["score"] == 100 and clean["issues"] == []
    assert clean["metrics"]["functions"] == 1 and clean["metrics"]["files"] == 1
    (tmp_path / "bad.py").write_text("def g(e):\n    return eval(e)\n")
    worse = reviewer.review(tmp_path, {})
    assert 0 <= worse["score"] < 100
    assert worse["metrics"]["issues_by_severity"]["critical"] == 1
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "lib.js").write_text("eval(x)\n")  # dependencies are not reviewed
    assert reviewer.review(tmp_path, {})["metrics"]["files"] == 2


def test_the_summary_has_a_line_an_issue_worst_first(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("# TODO: later\ndef g(e):\n    return eval(e)\n")
    result = reviewer.review(tmp_path, {})
    assert len(result["summary"]) == len(result["issues"]) == 2
    assert result["summary"][0].startswith("critical a.py:3 ") and result["summary"][1].startswith("info     a.py:1 ")
