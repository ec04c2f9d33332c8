"""code-reviewer: complexity, long functions, TODO/FIXME, debug prints and dangerous calls.

Python is read with ``ast`` (exact); JavaScript and TypeScript with a brace-matching heuristic
that is good enough to point at the functions worth a look. Prints ``score`` (0-100),
``issues`` (category, severity, file, line, message, suggestion) and ``metrics``. Standard
library only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PY = {".py"}
JS = {".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx"}
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv", "venv", "dist", "build", ".tox", "vendor"}
MAX_FILE = 512 * 1024
PENALTY = {"critical": 15, "warning": 5, "info": 1}

DEFAULTS = {"max_complexity": 10, "max_function_lines": 50}

JS_DANGER = [
    (re.compile(r"\beval\s*\("), "eval() runs arbitrary code", "parse the data (JSON.parse) instead of evaluating it"),
    (re.compile(r"\bnew\s+Function\s*\("), "new Function() runs arbitrary code", "avoid building code from strings"),
    (
        re.compile(r"\.innerHTML\s*=(?!=)"),
        "assigning innerHTML can inject script (XSS)",
        "use textContent, or sanitise the HTML",
    ),
    (re.compile(r"document\.write\s*\("), "document.write can inject script", "build DOM nodes instead"),
]
SQL = re.compile(r"(?i)\b(select\s.+\sfrom|insert\s+into|update\s+\w+\s+set|delete\s+from)\b")
JS_DEBUG = re.compile(r"\bconsole\.(log|debug|trace)\s*\(|\bdebugger\s*;")
TODO = re.compile(r"\b(TODO|FIXME|XXX|HACK)\b[:\s]?(.*)")


def issue(category: str, severity: str, file: str, line: int, message: str, suggestion: str) -> dict[str, Any]:
    return {
        "category": category,
        "severity": severity,
        "file": file,
        "line": line,
        "message": message,
        "suggestion": suggestion,
    }


# --- Python -------------------------------------------------------------------------------------


class _Complexity(ast.NodeVisitor):
    """McCabe-style: 1 + one per branch point, not descending into nested functions."""

    def __init__(self) -> None:
        self.value = 1

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler, ast.Assert)):
            self.value += 1
        elif isinstance(node, ast.BoolOp):
            self.value += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            self.value += 1 + len(node.ifs)
        elif isinstance(node, ast.match_case):
            self.value += 1
        super().generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # nested: counted on its own
        return

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]


def complexity(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    counter = _Complexity()
    for stmt in func.body:
        counter.visit(stmt)
    return counter.value


def _call_name(node: ast.Call) -> str:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        base = f.value.id if isinstance(f.value, ast.Name) else ""
        return f"{base}.{f.attr}" if base else f.attr
    return ""


def _string_built(node: ast.AST) -> bool:
    """An f-string, a % or + of a string literal, or a .format() call: SQL built from pieces."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return any(isinstance(s, ast.Constant) and isinstance(s.value, str) for s in (node.left, node.right)) or (
            _string_built(node.left) or _string_built(node.right)
        )
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def _literal_text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def review_python(source: str, rel: str, limits: dict[str, int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(issues, functions) of one Python file."""
    issues: list[dict[str, Any]] = []
    functions: list[dict[str, Any]] = []
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as exc:
        issues.append(
            issue("syntax", "critical", rel, exc.lineno or 1, f"does not parse: {exc.msg}", "fix the syntax error")
        )
        return issues, functions
    # `query = f"..."; cursor.execute(query)`: follow a name to what was assigned to it.
    assigned = {
        n.targets[0].id: n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            cc = complexity(node)
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            functions.append({"file": rel, "name": node.name, "line": node.lineno, "complexity": cc, "lines": length})
            if cc > limits["max_complexity"]:
                issues.append(
                    issue(
                        "complexity",
                        "critical" if cc > 2 * limits["max_complexity"] else "warning",
                        rel,
                        node.lineno,
                        f"function {node.name!r} has cyclomatic complexity {cc} (limit {limits['max_complexity']})",
                        "split it into smaller functions or replace branches with a lookup table",
                    )
                )
            if length > limits["max_function_lines"]:
                issues.append(
                    issue(
                        "long-function",
                        "warning",
                        rel,
                        node.lineno,
                        f"function {node.name!r} is {length} lines long (limit {limits['max_function_lines']})",
                        "extract the steps into named helpers",
                    )
                )
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec"):
                issues.append(
                    issue(
                        "dangerous-call",
                        "critical",
                        rel,
                        node.lineno,
                        f"{name}() runs arbitrary code",
                        "parse the data (json, ast.literal_eval) instead of executing it",
                    )
                )
            elif (
                "shell" in keywords and isinstance(keywords["shell"], ast.Constant) and keywords["shell"].value is True
            ):
                issues.append(
                    issue(
                        "dangerous-call",
                        "critical",
                        rel,
                        node.lineno,
                        f"{name or 'call'}(..., shell=True) lets input reach a shell",
                        "pass the command as a list without shell=True",
                    )
                )
            elif name in ("os.system", "os.popen"):
                issues.append(
                    issue(
                        "dangerous-call",
                        "warning",
                        rel,
                        node.lineno,
                        f"{name}() runs its argument through a shell",
                        "use subprocess.run([...]) with a list",
                    )
                )
            elif name in ("pickle.loads", "pickle.load", "yaml.load") and not (
                name == "yaml.load" and "Loader" in keywords
            ):
                issues.append(
                    issue(
                        "dangerous-call",
                        "warning",
                        rel,
                        node.lineno,
                        f"{name}() can run code from its input",
                        "use json, or yaml.safe_load",
                    )
                )
            elif name == "print":
                issues.append(
                    issue(
                        "debug-print",
                        "info",
                        rel,
                        node.lineno,
                        "print() left in the code",
                        "use logging, or remove it",
                    )
                )
            elif name in ("pdb.set_trace", "breakpoint"):
                issues.append(
                    issue("debug-print", "warning", rel, node.lineno, f"{name}() left in the code", "remove it")
                )
            if name.endswith(("execute", "executemany", "raw")) and node.args:
                query = node.args[0]
                if isinstance(query, ast.Name):
                    query = assigned.get(query.id, query)
                if _string_built(query) and SQL.search(_literal_text(query)):
                    issues.append(
                        issue(
                            "sql-injection",
                            "critical",
                            rel,
                            node.lineno,
                            "SQL built from strings: input can change the query",
                            "use query parameters (cursor.execute(sql, params))",
                        )
                    )
    return issues, functions


# --- JavaScript / TypeScript (heuristic) ---------------------------------------------------------

JS_FUNC = re.compile(
    r"(?:function\s*\*?\s*([A-Za-z_$][\w$]*)?\s*\([^)]*\)\s*(?::\s*[^{]+)?\{"  # function f(...) {
    r"|([A-Za-z_$][\w$]*)\s*=\s*(?:async\s*)?\([^)]*\)\s*(?::\s*[^=]+)?=>\s*\{"  # f = (...) => {
    # a method: name(...) { at the start of a line, not a control statement
    r"|^\s*(?:async\s+)?(?!if\b|for\b|while\b|switch\b|catch\b)([A-Za-z_$][\w$]*)\s*\([^)]*\)\s*(?::\s*[^{]+)?\{)",
    re.MULTILINE,
)
JS_BRANCH = re.compile(r"\b(if|for|while|case|catch)\b|\?(?!\.)|&&|\|\|")


def _strip_js(text: str) -> str:
    """Comments and string contents blanked (lengths kept) so braces and keywords are real code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'`":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1 : j - 1]) + (c if j <= n else ""))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)[:n]


def review_js(source: str, rel: str, limits: dict[str, int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    issues: list[dict[str, Any]] = []
    functions: list[dict[str, Any]] = []
    code = _strip_js(source)
    line_of = _line_index(source)
    for m in JS_FUNC.finditer(code):
        name = m.group(1) or m.group(2) or m.group(3) or "<anonymous>"
        start = m.end() - 1
        end = _match_brace(code, start)
        if end is None:
            continue
        body = code[start:end]
        cc = 1 + len(JS_BRANCH.findall(body))
        line = line_of(m.start())
        length = line_of(end) - line + 1
        functions.append({"file": rel, "name": name, "line": line, "complexity": cc, "lines": length})
        if cc > limits["max_complexity"]:
            issues.append(
                issue(
                    "complexity",
                    "critical" if cc > 2 * limits["max_complexity"] else "warning",
                    rel,
                    line,
                    f"function {name!r} has cyclomatic complexity about {cc} (limit {limits['max_complexity']})",
                    "split it into smaller functions",
                )
            )
        if length > limits["max_function_lines"]:
            issues.append(
                issue(
                    "long-function",
                    "warning",
                    rel,
                    line,
                    f"function {name!r} is {length} lines long (limit {limits['max_function_lines']})",
                    "extract the steps into named helpers",
                )
            )
    lines = source.splitlines()
    code_lines = code.splitlines()
    for no, (raw, stripped) in enumerate(zip(lines, code_lines, strict=False), 1):
        for pattern, message, suggestion in JS_DANGER:
            if pattern.search(stripped):
                issues.append(issue("dangerous-call", "critical", rel, no, message, suggestion))
        if JS_DEBUG.search(stripped):
            issues.append(issue("debug-print", "info", rel, no, "console.log/debugger left in the code", "remove it"))
        if re.search(r"\.(query|execute|raw)\s*\(", stripped) and SQL.search(raw) and ("${" in raw or "+" in raw):
            issues.append(
                issue(
                    "sql-injection",
                    "critical",
                    rel,
                    no,
                    "SQL built from strings: input can change the query",
                    "use placeholders and pass the values separately",
                )
            )
    return issues, functions


def _match_brace(code: str, start: int) -> int | None:
    depth = 0
    for i in range(start, len(code)):
        if code[i] == "{":
            depth += 1
        elif code[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _line_index(text: str):  # type: ignore[no-untyped-def]
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]

    def line_of(pos: int) -> int:
        lo, hi = 0, len(starts)
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if starts[mid] <= pos:
                lo = mid
            else:
                hi = mid
        return lo + 1

    return line_of


# --- any text file ------------------------------------------------------------------------------


def review_comments(source: str, rel: str) -> list[dict[str, Any]]:
    found = []
    for no, line in enumerate(source.splitlines(), 1):
        m = TODO.search(line)
        if m and (
            "#" in line[: m.start()]
            or "//" in line[: m.start()]
            or "/*" in line[: m.start()]
            or "*" in line[: m.start()]
        ):
            tag = m.group(1)
            text = m.group(2).strip()
            found.append(
                issue(
                    "todo",
                    "info",
                    rel,
                    no,
                    f"{tag}: {text}" if text else f"{tag} left in the code",
                    "do it, or turn it into a tracked issue",
                )
            )
    return found


# --- the agent --------------------------------------------------------------------------------


def walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix in PY | JS and path.is_file() and not path.is_symlink():
                yield path


def review(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    limits = {k: int(params.get(k, v)) for k, v in DEFAULTS.items()}
    issues: list[dict[str, Any]] = []
    functions: list[dict[str, Any]] = []
    files = 0
    lines = 0
    for path in walk(root):
        try:
            if path.stat().st_size > MAX_FILE:
                continue
            source = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        rel = str(path.relative_to(root))
        files += 1
        lines += source.count("\n") + (0 if source.endswith("\n") or not source else 1)
        found, funcs = (review_python if path.suffix in PY else review_js)(source, rel, limits)
        issues += found + review_comments(source, rel)
        functions += funcs
    issues.sort(key=lambda i: (i["file"], i["line"], i["category"]))
    penalty = sum(PENALTY[i["severity"]] for i in issues)
    # Per thousand lines, so a big repository is not punished for being big (floor of 1k lines).
    score = max(0, round(100 - penalty * 1000 / max(lines, 1000)))
    complexities = [f["complexity"] for f in functions]
    by_severity = {s: sum(1 for i in issues if i["severity"] == s) for s in PENALTY}
    return {
        "score": score,
        "issues": issues,
        # One line an issue, worst first, for people reading a run's outputs.
        "summary": [
            f"{i['severity']:<8} {i['file']}:{i['line']}  {i['message']}"
            for i in sorted(issues, key=lambda i: list(PENALTY).index(i["severity"]))
        ],
        "metrics": {
            "files": files,
            "lines": lines,
            "functions": len(functions),
            "max_complexity": max(complexities, default=0),
            "mean_complexity": round(sum(complexities) / len(complexities), 2) if complexities else 0,
            "issues_by_severity": by_severity,
            "most_complex": sorted(functions, key=lambda f: -f["complexity"])[:5],
        },
    }


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
        print(f"nothing to review: {root} is not a directory (run with --workspace DIR)", file=sys.stderr)
        return 2
    result = review(root, params)
    m = result["metrics"]
    print(f"reviewed {m['files']} file(s), {m['lines']} lines: score {result['score']}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
