from pathlib import Path

import pytest

from shared.config.settings import load_config
from shared.contract.errors import ConfigurationError
from shared.formats.durations import parse_duration


def test_defaults_file_and_environment_layer(tmp_path: Path) -> None:
    path = tmp_path / "fy.yaml"
    path.write_text("nats:\n  url: nats://file:4222\nexecutor:\n  concurrency: 2\n")
    cfg = load_config(path, env={"FLOWYARD_NATS_URL": "nats://env:4222", "FLOWYARD_LOG_FORMAT": "json"})
    assert cfg.nats.url == "nats://env:4222"  # the environment wins over the file
    assert cfg.executor.concurrency == 2
    assert cfg.log.format == "json"
    assert cfg.bus.max_deliver == 5


def test_config_file_from_flowyard_config(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("executor: {pool: gpu}\n")
    assert load_config(env={"FLOWYARD_CONFIG": str(path)}).executor.pool == "gpu"


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_config(
            env={
                "FLOWYARD_EXECUTOR_CONCURRENCY": "many",
                "FLOWYARD_BUS_ACK_WAIT": "3 parsecs",
                "FLOWYARD_LOG_LEVEL": "loud",
                "FLOWYARD_EXECUTOR_CONCURENCY": "3",
                "FLOWYARD_NATS_URL": "http://x",
            }
        )
    text = str(info.value)
    assert "FLOWYARD_EXECUTOR_CONCURRENCY: executor.concurrency" in text
    assert "FLOWYARD_BUS_ACK_WAIT: bus.ack_wait: invalid duration '3 parsecs'" in text
    assert "FLOWYARD_LOG_LEVEL: log.level" in text
    assert "Did you mean FLOWYARD_EXECUTOR_CONCURRENCY?" in text
    assert "must start with nats://" in text


def test_unknown_keys_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("natz: {}\nexecutor:\n  concurency: 3\n")
    with pytest.raises(ConfigurationError) as info:
        load_config(path, env={})
    text = str(info.value)
    assert "unknown section 'natz'" in text and "Did you mean 'nats'" in text
    assert "unknown setting 'concurency'" in text and "Did you mean 'concurrency'" in text


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nats: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_config(bad, env={})


def test_credentials_never_in_repr() -> None:
    cfg = load_config(env={"FLOWYARD_NATS_PASSWORD": "hunter22", "FLOWYARD_NATS_USER": "svc"})
    assert cfg.nats.password == "hunter22"
    assert "hunter22" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("2", 2), (3, 3)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1", "", "1x", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]
