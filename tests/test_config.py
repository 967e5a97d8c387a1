"""Config validation: good files load, every kind of error names file, line and path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import (
    AgentConfig,
    check_secrets,
    load_config,
    parse_config,
    parse_duration,
    redacted_dict,
)
from agent.errors import ConfigError, SecretError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
identity:
  city: hangzhou
  school_id: s-001
  box_id: box-01
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="agent.yaml")
    return info.value.problems


def test_minimal_config_gets_every_default() -> None:
    """Only identity is required; every other field has a default."""
    cfg = parse_config(MINIMAL)
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.mqtt.protocol == "5"
    assert cfg.cameras == {}
    assert set(cfg.rules) == {"no_hat", "no_mask", "food_uncovered"}
    assert cfg.rules["food_uncovered"].min_duration == 300.0  # serving uncovers for a moment
    assert cfg.heartbeat.interval == 60.0
    assert cfg.client_id == "hangzhou-s-001-box-01"
    assert cfg.topic_root == "mclz/hangzhou/s-001/box-01"


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    """The shipped example and demo configs pass validation."""
    cfg = load_config(REPO / "configs" / name)
    assert cfg.identity.box_id == "box-01"


def test_example_documents_every_field() -> None:
    """configs/example.yaml mentions every key of every section, so it stays the full reference."""
    text = (REPO / "configs" / "example.yaml").read_text()

    def keys(model: type[object], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            out.append(name)
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                out.extend(keys(annotation, f"{prefix}{name}."))
        return out

    missing = [k for k in keys(AgentConfig) if f"{k}:" not in text]
    assert not missing, f"example.yaml lacks: {missing}"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """model.path and storage.state_dir resolve against the config file's directory."""
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "agent.yaml").write_text(
        MINIMAL + "model:\n  path: models/m\nstorage:\n  state_dir: state\n"
    )
    cfg = load_config(sub / "agent.yaml")
    assert cfg.model.path == sub / "models/m"
    assert cfg.storage.state_dir == sub / "state"


def test_unknown_key_is_named_with_its_line() -> None:
    """An unknown key is rejected with file, line and full path."""
    problems = problems_of(MINIMAL + "mqtt:\n  url: mqtt://h\n  keepalve: 30\n")
    assert problems == ["agent.yaml:7 mqtt.keepalve: unknown key"]


def test_wrong_type_and_limits_are_reported_together() -> None:
    """Every problem in the file is listed, not just the first."""
    text = MINIMAL + (
        "mqtt:\n  keepalive: two\n"
        "cameras:\n  kitchen-1:\n    url: rtsp://cam/x\n    detect_interval: 0\n"
    )
    problems = problems_of(text)
    assert len(problems) == 2
    assert problems[0].startswith("agent.yaml:6 mqtt.keepalive:")
    assert "integer" in problems[0]
    assert problems[1].startswith("agent.yaml:10 cameras.kitchen-1.detect_interval:")
    assert "greater than or equal to 0.1" in problems[1]


def test_missing_identity_is_an_error() -> None:
    """Identity has no defaults: a box must never publish under a made-up id."""
    problems = problems_of("mqtt:\n  url: mqtt://h\n")
    assert problems == ["agent.yaml:1 identity: required key is missing"]


def test_bad_camera_id_is_explained() -> None:
    """Camera ids go into topics, so '/', '+', '#' and upper case are rejected."""
    problems = problems_of(MINIMAL + "cameras:\n  Kitchen/1:\n    url: rtsp://h/x\n")
    assert len(problems) == 1
    assert problems[0].startswith("agent.yaml:6 cameras.Kitchen/1:")
    assert "lower-case" in problems[0]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://cam/x", "must be rtsp://, rtsps:// or a file path"),
        ("rtsp:///x", "has no host"),
        ("rtsp://admin:hunter2@cam/x", "contains a password"),
        ("rtsp://cam:99999/x", "bad port"),
    ],
)
def test_bad_camera_urls(url: str, expected: str) -> None:
    """A camera URL that is not RTSP or a file, or carries a password, is rejected."""
    problems = problems_of(MINIMAL + f"cameras:\n  k1:\n    url: {url}\n")
    assert len(problems) == 1
    assert "cameras.k1.url" in problems[0]
    assert expected in problems[0]
    assert "hunter2" not in problems[0]


@pytest.mark.parametrize("value", ["0", "17", "-1", "true", "two", "2.5", "AUTO", "''", "[1]"])
def test_bad_decoder_threads_are_rejected_naming_the_field(value: str) -> None:
    """decoder_threads is 'auto' or a whole number 1-16; anything else fails with one message
    naming the file, the line and the field (not pydantic's union branches)."""
    problems = problems_of(
        MINIMAL + f"cameras:\n  k1:\n    url: rtsp://h/x\n    decoder_threads: {value}\n"
    )
    assert len(problems) == 1, problems
    assert problems[0].startswith("agent.yaml:8 cameras.k1.decoder_threads: must be 'auto' or")


def test_decoder_threads_default_to_one_and_take_auto() -> None:
    """Many cameras on few cores: one decoder thread each unless the config says otherwise."""
    cfg = parse_config(
        MINIMAL + "cameras:\n  a:\n    url: rtsp://h/a\n  b:\n    url: rtsp://h/b\n"
        "    decoder_threads: auto\n  c:\n    url: rtsp://h/c\n    decoder_threads: 4\n"
        "    main_url: rtsp://h/c-main\n"
    )
    assert cfg.cameras["a"].decoder_threads == 1
    assert cfg.cameras["b"].decoder_threads == "auto"
    assert cfg.cameras["c"].decoder_threads == 4
    main = cfg.cameras["c"].main_stream()
    assert main is not None
    assert main.decoder_threads == 4  # the main stream's reader decodes the same way


def test_password_in_mqtt_url_is_rejected() -> None:
    """Secrets never live in the YAML, not even inside a URL."""
    problems = problems_of(MINIMAL + "mqtt:\n  url: mqtt://box:s3cret@broker\n")
    assert "contains a password" in problems[0]
    assert "s3cret" not in problems[0]


def test_invalid_yaml_names_the_line() -> None:
    """A syntax error gives the file and line, without a traceback."""
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "cameras: [\n", source="agent.yaml")
    assert str(info.value).startswith("agent.yaml:")
    assert "invalid YAML" in str(info.value)


def test_duplicate_keys_are_rejected() -> None:
    """YAML silently keeps the last duplicate; the agent refuses it."""
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "mqtt:\n  url: mqtt://a\n  url: mqtt://b\n", source="a.yaml")
    assert "duplicate key 'url'" in str(info.value)
    assert "a.yaml:7" in str(info.value)


def test_top_level_must_be_a_mapping() -> None:
    """A file that is a list or a scalar is rejected with a clear message."""
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config("- a\n- b\n")


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    """Unreadable files give one clear message naming the path."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"identity:\n  city: \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1.5", 1.5), (5, 5)],
)
def test_durations(text: str | int, seconds: float) -> None:
    """Durations accept numbers and unit strings."""
    assert parse_duration(text) == pytest.approx(seconds)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_duration_seconds_round_trip(value: float) -> None:
    """A number of seconds, written with the 's' unit, parses back to itself."""
    assert parse_duration(f"{value:.6f}s") == pytest.approx(value, abs=1e-6)


def test_secret_from_env_and_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets resolve from an environment variable or a systemd credential file."""
    text = MINIMAL + (
        "mqtt:\n  username: box\n  password: {credential: mqtt-password}\n"
        "cameras:\n  k1:\n    url: rtsp://admin@cam/x\n    password: {env: CAM_PW}\n"
    )
    cfg = parse_config(text)
    assert len(check_secrets(cfg)) == 2
    monkeypatch.setenv("CAM_PW", "p@ss:w/rd")
    (tmp_path / "mqtt-password").write_text("hunter22\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert check_secrets(cfg) == []
    assert cfg.cameras["k1"].source_url("k1") == "rtsp://admin:p%40ss%3Aw%2Frd@cam/x"
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.resolve("mqtt.password") == "hunter22"


def test_secret_must_name_exactly_one_source() -> None:
    """A secret reference with two sources is ambiguous and rejected."""
    problems = problems_of(MINIMAL + "mqtt:\n  password: {env: A, file: /x}\n")
    assert "exactly one of env, credential, file" in problems[0]


def test_missing_secret_error_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable is reported with the config path that needs it."""
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = parse_config(
        MINIMAL + "cameras:\n  k1:\n    url: rtsp://u@c/x\n    password: {env: NOT_SET_ANYWHERE}\n"
    )
    with pytest.raises(
        SecretError, match=r"cameras\.k1\.password: environment variable NOT_SET_ANYWHERE"
    ):
        cfg.cameras["k1"].source_url("k1")


def test_redacted_dict_hides_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """config show prints where a secret comes from, never its value."""
    monkeypatch.setenv("CAM_PW", "topsecret")
    cfg = parse_config(
        MINIMAL + "cameras:\n  k1:\n    url: rtsp://u@c/x\n    password: {env: CAM_PW}\n"
    )
    data = redacted_dict(cfg)
    assert data["cameras"]["k1"]["password"] == "<secret from env:CAM_PW>"
    assert "topsecret" not in repr(data)
    assert os.environ["CAM_PW"] == "topsecret"


def test_camera_view_is_validated_where_it_is_written() -> None:
    """A camera's view: crop corners in order and with area, 1-4 tiles each way."""
    camera = MINIMAL + "cameras:\n  kitchen-1:\n    url: rtsp://cam/x\n    view:\n"
    cfg = parse_config(camera + "      crop: [0.5, 0.2, 1, 1]\n      tiles: [2, 1]\n")
    view = cfg.cameras["kitchen-1"].view
    assert (view.crop, view.tiles, view.overlap) == ((0.5, 0.2, 1.0, 1.0), (2, 1), 0.15)
    inverted = problems_of(camera + "      crop: [0.8, 0, 0.2, 1]\n")
    assert len(inverted) == 1
    assert inverted[0].startswith("agent.yaml:8 cameras.kitchen-1.view:")
    assert "x0 < x1" in inverted[0]
    tiny = problems_of(camera + "      crop: [0, 0, 0.05, 0.1]\n")
    assert "smaller than 1 %" in tiny[0]
    tiles = problems_of(camera + "      tiles: [5, 0]\n")
    assert [p.split(" ")[1] for p in tiles] == [
        "cameras.kitchen-1.view.tiles[0]:",
        "cameras.kitchen-1.view.tiles[1]:",
    ]
