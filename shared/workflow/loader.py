"""Loading YAML documents with line numbers, and turning them into model objects.

Every problem is reported as ``FILE:LINE: WHERE: WHAT. FIX`` so a person can jump to the line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from shared.contract.errors import MalformedDocument, ValidationFailed
from shared.formats import yamlio
from shared.workflow.model import API_VERSION, KNOWN_KEYS, AgentDoc, InputDef, NodeDef, WorkflowDoc

MAX_FILE_BYTES = 1024 * 1024


class Located(dict[Any, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int = 0
    lines: dict[Any, int]


class LocatedList(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yamlio.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Located:
    loader.flatten_mapping(node)
    out = Located()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, dict | list):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping or a list cannot be a key: write the key as plain text", key_node.start_mark
            )
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {out.lines[key]})", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    out = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def line_of(obj: Any, key: Any = None) -> int:
    if key is not None:
        if isinstance(obj, Located) and key in obj.lines:
            return obj.lines[key]
        if isinstance(obj, LocatedList) and isinstance(key, int) and key < len(obj.lines):
            return obj.lines[key]
    return getattr(obj, "line", 0)


@dataclass
class Bundle:
    """The documents of one or more files: agents by name, and workflows."""

    agents: dict[str, AgentDoc] = field(default_factory=dict)
    workflows: list[WorkflowDoc] = field(default_factory=list)
    # The raw, line-aware mapping of each workflow, for validation messages.
    raw: dict[str, Located] = field(default_factory=dict)
    file: str = "<input>"
    texts: dict[str, str] = field(default_factory=dict)

    def workflow(self, name: str | None = None) -> WorkflowDoc:
        if not self.workflows:
            raise ValidationFailed([f"{self.file}: holds no `kind: Workflow` document; add one to run it"])
        if name is None:
            if len(self.workflows) > 1:
                names = ", ".join(w.metadata.name for w in self.workflows)
                raise ValidationFailed(
                    [f"{self.file}: holds {len(self.workflows)} workflows ({names}); name one with --workflow"]
                )
            return self.workflows[0]
        for wf in self.workflows:
            if wf.metadata.name == name:
                return wf
        names = ", ".join(w.metadata.name for w in self.workflows)
        raise ValidationFailed([f"{self.file}: no workflow named {name!r}; it holds: {names}"])


def load_file(path: str | Path) -> Bundle:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValidationFailed([f"{p}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit for a workflow file"])
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationFailed([f"{p}: no such file; check the path"]) from None
    except IsADirectoryError:
        raise ValidationFailed([f"{p}: is a directory; give the path of a .yaml file"]) from None
    except UnicodeDecodeError:
        raise ValidationFailed([f"{p}: is not UTF-8 text; save it as UTF-8 YAML"]) from None
    return load_bundle(text, str(p))


def load_bundle(text: str, file: str = "<input>") -> Bundle:
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise MalformedDocument([f"{where}: malformed YAML: {detail}; fix the indentation or quoting there"]) from None
    bundle = Bundle(file=file)
    problems: list[str] = []
    for index, doc in enumerate(docs):
        where = f"{file}:{line_of(doc) or 1}"
        if not isinstance(doc, dict):
            problems.append(
                f"{where}: document {index + 1} is a {type(doc).__name__}, not a mapping; "
                "a document needs apiVersion, kind, metadata and spec"
            )
            continue
        version = doc.get("apiVersion")
        if version != API_VERSION:
            problems.append(
                f"{file}:{line_of(doc, 'apiVersion') or line_of(doc)}: document {index + 1}: "
                f"apiVersion is {version!r}; write `apiVersion: {API_VERSION}`"
            )
            continue
        kind = doc.get("kind")
        if kind == "Agent":
            agent = _convert(doc, AgentDoc, file, problems)
            if agent is not None:
                if agent.metadata.name in bundle.agents:
                    problems.append(f"{where}: agent {agent.metadata.name!r} is defined twice in this file")
                bundle.agents[agent.metadata.name] = agent
        elif kind == "Workflow":
            workflow = _convert_workflow(doc, file, problems)
            if workflow is not None:
                bundle.workflows.append(workflow)
                bundle.raw[workflow.metadata.name] = doc
        else:
            hint = difflib.get_close_matches(str(kind), ["Agent", "Workflow"], n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(
                f"{file}:{line_of(doc, 'kind') or line_of(doc)}: document {index + 1}: kind is "
                f"{kind!r}{did}; use `kind: Agent` or `kind: Workflow`"
            )
    if problems:
        raise ValidationFailed(problems)
    return bundle


def parse_workflow(raw: Any, file: str) -> WorkflowDoc:
    """A workflow document that arrived as data (e.g. in a run request) rather than as a file."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ValidationFailed([f"{file}: the workflow must be a mapping, got {type(raw).__name__}"])
    if raw.get("apiVersion") != API_VERSION:
        raise ValidationFailed([f"{file}: apiVersion is {raw.get('apiVersion')!r}; write `apiVersion: {API_VERSION}`"])
    workflow = _convert_workflow(raw, file, problems)
    if workflow is None:
        raise ValidationFailed(problems)
    return workflow


def parse_agent(raw: Any, file: str) -> AgentDoc:
    problems: list[str] = []
    agent = _convert(raw, AgentDoc, file, problems)
    if agent is None:
        raise ValidationFailed(problems)
    return agent


def _convert_workflow(doc: Located, file: str, problems: list[str]) -> WorkflowDoc | None:
    # Nodes and inputs are checked one by one first, so that every bad node is reported at once
    # and the message can name the node rather than an index.
    before = len(problems)
    spec = doc.get("spec")
    if isinstance(spec, dict):
        nodes = spec.get("nodes")
        if isinstance(nodes, list):
            for i, node in enumerate(nodes):
                label = f"node {node.get('id')!r}" if isinstance(node, dict) and node.get("id") else f"nodes[{i}]"
                _convert(node, NodeDef, file, problems, root=f"{label}", anchor=node, fallback=line_of(nodes, i))
        inputs = spec.get("inputs")
        if isinstance(inputs, dict):
            for name, value in inputs.items():
                if not isinstance(value, dict):
                    problems.append(
                        f"{file}:{line_of(inputs, name)}: input {name!r}: must be a mapping with "
                        "`type`, and optionally `default`, `description`, `required`"
                    )
                    continue
                _convert(value, InputDef, file, problems, root=f"input {name!r}", anchor=value)
    if len(problems) > before:
        return None
    return _convert(doc, WorkflowDoc, file, problems)


_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\.\.\.\]")


def _convert(
    raw: Any,
    typ: type[Any],
    file: str,
    problems: list[str],
    *,
    root: str = "",
    anchor: Any = None,
    fallback: int = 0,
) -> Any:
    anchor = raw if anchor is None else anchor
    try:
        return msgspec.convert(raw, typ, strict=True)
    except msgspec.ValidationError as exc:
        problems.append(_describe(str(exc), raw, typ, file, root, fallback))
        return None


def _describe(text: str, raw: Any, typ: type[Any], file: str, root: str, fallback: int) -> str:
    message, _, at = text.partition(" - at `")
    path = at.rstrip("`").removeprefix("$")
    # Walk the raw document along the path to find the line and the type we ended in.
    obj: Any = raw
    current_type: Any = typ
    names: list[str] = [root] if root else []
    line = line_of(raw) or fallback
    for m in _PATH_PART.finditer(path):
        key: Any = m.group(1) if m.group(1) is not None else (int(m.group(2)) if m.group(2) else None)
        if key is None:
            break
        if isinstance(obj, dict | list):
            line = line_of(obj, key) or line
            try:
                obj = obj[key]
            except (KeyError, IndexError, TypeError):
                obj = None
        if isinstance(key, int):
            names.append(f"[{key}]")
            if isinstance(obj, dict) and obj.get("id"):
                names[-1] = f"[{key}] (id {obj['id']!r})"
        else:
            names.append(("." if names else "") + key)
        current_type = _field_type(current_type, key)
    where = "".join(names) or typ.__name__.removesuffix("Doc").lower()
    if message.startswith("Object contains unknown field"):
        unknown = message.split("`")[1]
        line = line_of(obj, unknown) or line
        known = KNOWN_KEYS.get(getattr(current_type, "__name__", ""), [])
        hint = difflib.get_close_matches(unknown, known, n=1)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        return f"{file}:{line}: {where}: unknown key {unknown!r}.{did} Known keys: {', '.join(known)}"
    if message.startswith("Object missing required field"):
        missing = message.split("`")[1]
        return f"{file}:{line}: {where}: missing required key {missing!r}; add `{missing}: ...`"
    if message.startswith("Invalid enum value"):
        allowed = _literal_values(current_type)
        fix = f"; use one of: {', '.join(map(str, allowed))}" if allowed else ""
        return f"{file}:{line}: {where}: {message.lower()}{fix}"
    return f"{file}:{line}: {where}: {message[0].lower()}{message[1:]}"


def _field_type(typ: Any, key: Any) -> Any:
    """The model type found at ``key`` inside ``typ`` (struct field, list item or dict value)."""
    info = msgspec.inspect.type_info(typ) if isinstance(typ, type) else typ
    while isinstance(info, msgspec.inspect.UnionType):
        inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if not inner:
            return None
        info = inner[0]
    if isinstance(info, msgspec.inspect.StructType) and isinstance(key, str):
        for f in info.fields:
            if f.encode_name == key:
                return _unwrap(f.type)
    if isinstance(info, msgspec.inspect.ListType):
        return _unwrap(info.item_type)
    if isinstance(info, msgspec.inspect.DictType):
        return _unwrap(info.value_type)
    return info


def _unwrap(info: Any) -> Any:
    while isinstance(info, msgspec.inspect.UnionType):
        inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        info = inner[0] if inner else info
        if len(inner) <= 1:
            break
    if isinstance(info, msgspec.inspect.StructType):
        return info.cls
    return info


def _literal_values(info: Any) -> tuple[Any, ...]:
    if isinstance(info, msgspec.inspect.LiteralType):
        return info.values
    return ()
