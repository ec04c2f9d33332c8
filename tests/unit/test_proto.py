from pathlib import Path

from shared.codegen import protogen


def test_proto_is_up_to_date_with_shared() -> None:
    stale = protogen.stale()
    assert not stale, f"proto/ is stale ({', '.join(stale)}): run `python -m shared.codegen.protogen`"


def test_staleness_is_detected(tmp_path: Path) -> None:
    protogen.write(tmp_path)
    assert protogen.stale(tmp_path) == []
    schema = tmp_path / "schemas" / "TaskFailed.json"
    schema.write_text(schema.read_text().replace('"error"', '"err"'))
    (tmp_path / "schemas" / "Old.json").write_text("{}")
    assert protogen.stale(tmp_path) == ["schemas/TaskFailed.json", "schemas/Old.json"]
