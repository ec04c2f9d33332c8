"""JSON Schema helpers with the compiled validators cached: agents reuse the same few schemas."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
import msgspec

_key = msgspec.json.Encoder(order="sorted")


@functools.lru_cache(maxsize=512)
def _compiled(key: bytes) -> tuple[Any, str | None]:
    schema = msgspec.json.decode(key)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return None, exc.message
    return cls(schema), None


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or None."""
    return _compiled(_key.encode(schema))[1]


def first_error(schema: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """(where, message) of the most relevant violation of ``schema`` by ``value``, or None."""
    validator, problem = _compiled(_key.encode(schema))
    if validator is None:
        return "the schema", f"the agent's schema is invalid: {problem}"
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    message = error.message
    if error.validator in ("anyOf", "oneOf") and error.context:
        # jsonschema only says "is not valid under any of the given schemas": name what each wanted.
        message = "it fits none of the accepted forms: " + "; or ".join(dict.fromkeys(e.message for e in error.context))
    return "/".join(str(p) for p in error.absolute_path), message
