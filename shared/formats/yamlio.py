"""YAML as people expect it today (1.2 booleans): `on`, `off`, `yes`, `no` stay strings.

PyYAML implements YAML 1.1, where `on:` is the boolean True — which turns the notifier's
`rules: [{on: [...]}]` into a key nobody wrote. Only `true` and `false` are booleans here.
"""

from __future__ import annotations

import re

import yaml

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class SafeLoader(yaml.SafeLoader):
    pass


SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SafeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def safe_load(text: str) -> object:
    return yaml.load(text, Loader=SafeLoader)
