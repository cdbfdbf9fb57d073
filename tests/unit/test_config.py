"""Configuration: YAML + injected environment, unknown keys named with their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ConfigError, json_schema, load_settings

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file() -> None:
    s = load_settings(None, {})
    assert s.api.port == 8080 and s.models[0].path == Path("models/neu-cls-demo.onnx")
    assert s.runtime.providers[-1] == "CPUExecutionProvider"


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, "api:\n  port: 9000\n  bogus: 1\nruntime:\n  warmup_runs: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert f"{path}:3: api.bogus: unknown key" in str(err.value)


def test_unknown_section_and_nested_list_item(tmp_path: Path) -> None:
    text = "models:\n  - path: a.onnx\n  - path: b.onnx\n    colour: red\nextras: {}\n"
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), {})
    message = str(err.value)
    assert ":4: models.1.colour: unknown key" in message
    assert ":5: extras: unknown key" in message


def test_bad_value_names_line(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r":2: api.port: Input should be less than or equal to 65535"
    ):
        load_settings(write(tmp_path, "api:\n  port: 70000\n"), {})


def test_environment_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "api:\n  port: 9000\n  host: 0.0.0.0\n")
    env = {
        "LINEINSPECT__API__PORT": "9100",
        "LINEINSPECT__API__TOKEN": "s3cret",
        "LINEINSPECT__API__BATCH__MAX_SIZE": "4",
        "LINEINSPECT__RUNTIME__PROVIDERS": '["CPUExecutionProvider"]',
        "LINEINSPECT__MODELS__0__PATH": "other.onnx",
        "UNRELATED": "x",
    }
    s = load_settings(path, env)
    assert (s.api.port, s.api.host, s.api.batch.max_size) == (9100, "0.0.0.0", 4)
    assert s.api.token is not None and s.api.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s), "secrets never appear in reprs or logs"
    assert s.runtime.providers == ["CPUExecutionProvider"]
    assert s.models[0].path == Path("other.onnx")


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(
        ConfigError, match="environment variable LINEINSPECT__API__PORTT: api.portt: unknown key"
    ):
        load_settings(None, {"LINEINSPECT__API__PORTT": "1"})
    with pytest.raises(ConfigError, match="environment variable LINEINSPECT__API__PORT: api.port"):
        load_settings(None, {"LINEINSPECT__API__PORT": "many"})


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "api: [\n"), {})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- 1\n"), {})
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "missing.yaml", {})


def test_every_field_is_described() -> None:
    schema = json_schema()
    missing = []
    for name, definition in [("Settings", schema), *schema.get("$defs", {}).items()]:
        for field, prop in definition.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{name}.{field}")
    assert not missing, f"fields without a description: {missing}"


def test_shipped_example_configs_validate() -> None:
    configs = sorted((REPO / "deploy").glob("*.yaml"))
    assert configs, "deploy/ should ship an annotated example config"
    for path in configs:
        load_settings(path, {})
