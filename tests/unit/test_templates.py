import pytest

from shared.workflow.templates import TemplateError, find_refs, render

CTX = {
    "inputs": {"n": 3, "s": "x", "flag": False, "obj": {"a": [1, 2]}},
    "nodes": {"a": {"output": {"items": [{"v": 1}, {"v": 2}], "name": "alpha", "none": None}}},
    "trigger": {"alert": {"labels": {"severity": "page"}}},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ inputs.n }}", 3),
        ("{{inputs.flag}}", False),
        ("{{ inputs.obj }}", {"a": [1, 2]}),
        ("{{ nodes.a.output.items }}", [{"v": 1}, {"v": 2}]),
        ("{{ nodes.a.output.items[1].v }}", 2),
        ("{{ nodes.a.output.items.0.v }}", 1),
        ('{{ nodes.a.output["name"] }}', "alpha"),
        ("{{ nodes.a.output.none }}", None),
        ("{{ trigger.alert.labels.severity }}", "page"),
        ("n={{ inputs.n }}, s={{ inputs.s }}", "n=3, s=x"),
        ("obj: {{ inputs.obj }}", 'obj: {"a":[1,2]}'),
        ("flag {{ inputs.flag }}", "flag false"),
        ("plain text", "plain text"),
        (" {{ inputs.n }}", " 3"),
    ],
)
def test_render_keeps_type_of_whole_templates_and_interpolates_others(template: str, expected: object) -> None:
    assert render(template, CTX) == expected


def test_render_walks_lists_and_mappings() -> None:
    value = {"a": ["{{ inputs.n }}", {"b": "{{ inputs.s }}!"}], "c": 5}
    assert render(value, CTX) == {"a": [3, {"b": "x!"}], "c": 5}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ nodes.a.output.missing }}", "has no field 'missing' (it has: items, name, none)"),
        ("{{ nodes.a.output.items[7] }}", "has 2 items, so [7] is out of range"),
        ("{{ nodes.a.output.name.first }}", "is a string, not an object"),
        ("{{ inputs.n[0] }}", "not a list"),
    ],
)
def test_render_errors_say_what_was_there(template: str, message: str) -> None:
    with pytest.raises(
        TemplateError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        render(template, CTX)


@pytest.mark.parametrize(
    "bad",
    [
        "{{ inputs.n + 1 }}",
        "{{ __import__('os') }}",
        "{{ }}",
        "{{ env.HOME }}",
        "{{ inputs.n",
        "x }}",
        "{{ len(inputs) }}",
    ],
)
def test_no_expressions_or_unbalanced_braces(bad: str) -> None:
    with pytest.raises(TemplateError):
        list(find_refs(bad))


def test_find_refs_reports_roots_and_paths() -> None:
    refs = list(find_refs({"x": ["{{ inputs.a }} and {{ nodes.b.output.c[0] }}"]}))
    assert [(r.root, r.path) for r in refs] == [("inputs", ("a",)), ("nodes", ("b", "output", "c", 0))]
    assert refs[1].node == "b"
