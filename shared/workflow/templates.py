"""``{{ inputs.NAME }}``, ``{{ nodes.ID.output.FIELD... }}``, ``{{ nodes.ID.status }}``, ``{{ trigger... }}``
and, in a foreach node, ``{{ item... }}`` and ``{{ index }}`` — templates, evaluated without eval.

A string that is exactly one template keeps the JSON type of the value (list, object, number,
bool); otherwise each value is interpolated into the string (strings as they are, anything else as
compact JSON). References are checked before a run starts; at run time a missing field fails the
node with a message that says which field and what was there instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(r"\s*(?:\.?\s*([A-Za-z_][A-Za-z0-9_-]*)|\[\s*(\d+)\s*\]|\[\s*\"([^\"]*)\"\s*\]|\.(\d+))")

ROOTS = ("inputs", "nodes", "trigger", "item", "index")
FOREACH_ROOTS = ("item", "index")  # only inside a node with `foreach`


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Ref:
    text: str  # as written, e.g. "{{ nodes.a.output.items[0] }}"
    root: str
    path: tuple[str | int, ...]

    @property
    def node(self) -> str | None:
        return str(self.path[0]) if self.root == "nodes" and self.path else None


def parse_ref(expr: str, text: str) -> Ref:
    body = expr.strip()
    if not body:
        raise TemplateError(f"{text}: empty template; write e.g. {{{{ inputs.name }}}}")
    parts: list[str | int] = []
    pos = 0
    while pos < len(body):
        m = _SEGMENT.match(body, pos)
        if not m or m.end() == pos or (pos == 0 and body[0] in ".["):
            raise TemplateError(
                f"{text}: cannot read {body[pos:]!r}; templates are paths like inputs.name or "
                "nodes.ID.output.field[0] (no expressions or calls)"
            )
        ident, index, quoted, dotted_index = m.groups()
        if ident is not None:
            parts.append(ident)
        elif quoted is not None:
            parts.append(quoted)
        else:
            parts.append(int(index if index is not None else dotted_index))
        pos = m.end()
    root = parts[0]
    if root not in ROOTS:
        raise TemplateError(f"{text}: unknown root {root!r}; a template starts with one of: {', '.join(ROOTS)}")
    return Ref(text=text, root=str(root), path=tuple(parts[1:]))


def find_refs(value: Any) -> Iterator[Ref]:
    """Every template reference inside a value (strings, lists and mappings, any depth)."""
    if isinstance(value, str):
        if "{{" not in value and "}}" not in value:
            return
        for m in _TEMPLATE.finditer(value):
            yield parse_ref(m.group(1), m.group(0))
        rest = _TEMPLATE.sub("", value)
        if "{{" in rest or "}}" in rest:
            raise TemplateError(f"{value!r}: unbalanced '{{{{' or '}}}}'; close every {{{{ with }}}}")
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from find_refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from find_refs(v)


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Resolve every template in ``value`` against ``context`` (keys: inputs, nodes, trigger)."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole and value.strip() == value:
            return lookup(parse_ref(whole.group(1), whole.group(0)), context)
        return _TEMPLATE.sub(lambda m: _as_text(lookup(parse_ref(m.group(1), m.group(0)), context)), value)
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def lookup(ref: Ref, context: Mapping[str, Any]) -> Any:
    current: Any = context.get(ref.root)
    walked = ref.root
    for part in ref.path:
        if isinstance(part, int):
            if not isinstance(current, list):
                raise TemplateError(f"{ref.text}: {walked} is {_kind(current)}, not a list, so [{part}] does not apply")
            if part >= len(current):
                raise TemplateError(f"{ref.text}: {walked} has {len(current)} items, so [{part}] is out of range")
            current = current[part]
            walked += f"[{part}]"
        else:
            if not isinstance(current, Mapping):
                raise TemplateError(
                    f"{ref.text}: {walked} is {_kind(current)}, not an object, so .{part} does not apply"
                )
            if part not in current:
                have = ", ".join(sorted(map(str, current))) or "nothing"
                raise TemplateError(f"{ref.text}: {walked} has no field {part!r} (it has: {have})")
            current = current[part]
            walked += f".{part}"
    return current


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), "a number")
