"""Typed settings: a YAML file, overridden by `LINEINSPECT__SECTION__KEY` environment variables.

Unknown keys are rejected, and every error names where the bad value came from: the file and
line, or the environment variable. The environment is passed in, never read at import time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.config_sections import (
    DEFAULT_MODEL,
    ApiConfig,
    AuditConfig,
    BatchConfig,
    BufferConfig,
    CameraConfig,
    DriftConfig,
    HistoryConfig,
    LineConfig,
    LoggingConfig,
    ModelConfig,
    MqttConfig,
    OutboxConfig,
    ReviewConfig,
    RuntimeConfig,
    ShadowConfig,
    TlsConfig,
)
from service.recipes import RecipeConfig, check

__all__ = [
    "DEFAULT_MODEL", "ENV_PREFIX", "ApiConfig", "AuditConfig", "BatchConfig", "BufferConfig",
    "CameraConfig", "ConfigError", "DriftConfig", "HistoryConfig", "LineConfig", "LoggingConfig",
    "ModelConfig", "MqttConfig", "OutboxConfig", "ReviewConfig", "RuntimeConfig", "Settings",
    "ShadowConfig", "TlsConfig", "json_schema", "load_settings",
]  # fmt: skip

ENV_PREFIX = "LINEINSPECT__"


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message says where and why."""


class Settings(BaseSettings):
    """lineinspect configuration. Load with `load_settings`, not by instantiating directly."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True)

    models: list[ModelConfig] = Field(
        default_factory=lambda: [ModelConfig()],
        min_length=1,
        description="Models to serve; the first is the default for requests that name none.",
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="ONNX Runtime.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    line: LineConfig = Field(default_factory=LineConfig, description="The inspection line.")
    cameras: list[CameraConfig] = Field(
        default_factory=list,
        description="Cameras of the line; none: the service only answers HTTP.",
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Verdicts to the PLCs.")
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="Durable verdict outbox."
    )
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Active-learning queue.")
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Drift monitoring per camera."
    )
    shadow: ShadowConfig = Field(
        default_factory=ShadowConfig,
        description="Candidate models judging the live models' frames off the PLC path.",
    )
    history: HistoryConfig = Field(
        default_factory=HistoryConfig, description="Copies of the models that have served."
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig, description="The audit trail of changes."
    )
    recipes: list[RecipeConfig] = Field(
        default_factory=list,
        description="Named sets of (model, thresholds) per camera that a PLC selects over MQTT "
        "(`<prefix>/<line>/recipe`) or HTTP (`PUT /v1/recipe`) at a product changeover.",
    )

    @model_validator(mode="after")
    def _recipes_fit(self) -> Settings:
        problems = check(self.recipes, [c.name for c in self.cameras])
        names = {r.name for r in self.recipes}
        if self.line.recipe is not None and self.line.recipe not in names:
            problems.append(f"line.recipe {self.line.recipe!r} is not a recipe: {sorted(names)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("models")
    @classmethod
    def _unique_paths(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        paths = [str(m.path) for m in models]
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        if dupes:
            raise ValueError(f"model listed twice: {dupes}")
        return models

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        names = [c.name.lower() for c in cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique (case-insensitive): {dupes}")
        return cameras

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Sources are merged explicitly by load_settings (YAML, then the injected environment).
        return (init_settings,)


Loc = tuple[str | int, ...]


def _yaml_lines(node: yaml.Node | None, loc: Loc, out: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            out[child] = key.start_mark.line + 1
            _yaml_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[(*loc, i)] = value.start_mark.line + 1
            _yaml_lines(value, (*loc, i), out)


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, seg in enumerate(path):
        last = i == len(path) - 1
        key: str | int = int(seg) if seg.isdigit() and isinstance(node, list) else seg
        if isinstance(node, list):
            if not isinstance(key, int) or key > len(node):
                raise ConfigError(f"list index {seg!r} out of range in {'__'.join(path)}")
            if key == len(node):
                node.append({})
        if last:
            node[key] = value
            return
        if isinstance(node, dict) and not isinstance(node.get(key), dict | list):
            node[key] = [] if path[i + 1].isdigit() else {}
        node = node[key]


def _env_value(raw: str) -> Any:
    # JSON for structures; scalars stay strings and are coerced by the field's type.
    if raw.strip()[:1] in ("[", "{"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """YAML file (optional) + `LINEINSPECT__...` overrides from `environ` -> validated Settings."""
    data: dict[str, Any] = {}
    origin: dict[Loc, str] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
        lines: dict[Loc, int] = {}
        _yaml_lines(node, (), lines)
        origin = {loc: f"{path}:{line}" for loc, line in lines.items()}
    for name, raw in sorted((environ or {}).items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        segments = [s.lower() for s in name[len(ENV_PREFIX) :].split("__") if s]
        if not segments:
            continue
        _set(data, segments, _env_value(raw))
        origin[tuple(int(s) if s.isdigit() else s for s in segments)] = (
            f"environment variable {name}"
        )
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin, source)) from None


def _explain(exc: ValidationError, origin: Mapping[Loc, str], source: str) -> str:
    problems = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        where = source
        for n in range(len(loc), 0, -1):  # the deepest location we know a line for
            if loc[:n] in origin:
                where = origin[loc[:n]]
                break
        dotted = ".".join(str(p) for p in loc) or "<top level>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"{where}: {dotted}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(problems)


def json_schema() -> dict[str, Any]:
    return Settings.model_json_schema()
