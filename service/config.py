"""Typed settings: a YAML file, overridden by `LINEINSPECT__SECTION__KEY` environment variables.

Unknown keys are rejected, and every error names where the bad value came from: the file and
line, or the environment variable. The environment is passed in, never read at import time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.inference.card import ThresholdSpec
from service.inference.runtime import DEFAULT_PREFERENCE

ENV_PREFIX = "LINEINSPECT__"
DEFAULT_MODEL = Path("models/neu-cls-demo.onnx")


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(_Section):
    path: Path = Field(
        DEFAULT_MODEL, description="ONNX model file (relative to the working directory)."
    )
    card: Path | None = Field(
        None, description="Model card; default: `<model stem>.card.yaml` next to the model."
    )
    thresholds: ThresholdSpec | None = Field(
        None, description="Thresholds that replace the card's at start-up (optional)."
    )


class RuntimeConfig(_Section):
    providers: list[str] = Field(
        list(DEFAULT_PREFERENCE),
        description="Execution providers in order of preference; those this ONNX Runtime build "
        "lacks are skipped, CPU is always the last resort.",
    )
    parallel_runs: int = Field(
        0,
        ge=0,
        le=64,
        description="Inferences one model runs at once: the line's inference workers and the "
        "HTTP batcher's each. 0 = auto: on the CPU one per core (at most 4), on a GPU 1. Several "
        "single-threaded runs give more frames per second than one run over all cores.",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="Threads inside one inference; 0 = auto: on the CPU cores / parallel_runs, on "
        "a GPU ONNX Runtime's default. For the lowest single-image latency at low load set it to "
        "the core count and parallel_runs to 1.",
    )
    inter_op_threads: int = Field(0, ge=0, description="Threads across operators; 0 = default.")
    device_id: int = Field(0, ge=0, description="GPU index for CUDA / TensorRT.")
    tensorrt_cache_dir: Path | None = Field(
        Path("var/trt-cache"),
        description="Where TensorRT keeps built engines, so a restart does not rebuild them.",
    )
    tensorrt_fp16: bool = Field(True, description="Let TensorRT use FP16 kernels.")
    warmup_runs: int = Field(
        3, ge=0, description="Inferences on a blank image before the service reports ready."
    )


class BatchConfig(_Section):
    max_size: int = Field(
        8, ge=1, le=256, description="Most HTTP requests merged into one inference batch."
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="How long the first request of a batch waits for others to join.",
    )


class ApiConfig(_Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    token: SecretStr | None = Field(
        None, description="Bearer token; when set, mutating routes require it."
    )
    require_token_for_predict: bool = Field(
        False, description="Also require the token on /v1/predict."
    )
    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Images whose header declares more pixels are refused before decoding (413).",
    )
    docs: bool = Field(True, description="Serve OpenAPI docs at /docs and /openapi.json.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Micro-batching.")


class BufferConfig(_Section):
    size: int = Field(4, ge=1, le=10_000, description="Frames held between capture and inference.")
    policy: Literal["drop_oldest", "drop_newest", "block"] = Field(
        "drop_oldest",
        description="When full: drop_oldest (live cameras: judge the newest frame), drop_newest, "
        "or block (files, folders: never drop, capture waits). Every drop is counted.",
    )


class CameraConfig(_Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Camera name (MQTT topic segment, metric label).",
    )
    source: str = Field(
        description="rtsp://..., http(s)://..., device:0 (USB), file:PATH or a video path, "
        "folder:PATH (images in name order)."
    )
    model: str | None = Field(
        None, description="Model name (card `name`); default: the first model."
    )
    fps: float | None = Field(
        None,
        ge=0.0,
        description="Pace for files and folders; default: the file's own rate; "
        "0 = as fast as possible.",
    )
    loop: bool = Field(True, description="Files and folders start again at the end.")
    pattern: str = Field(
        "*",
        description="Folder sources: which files to play (glob relative to the folder, e.g. "
        "*.jpg or */Imgs/*.jpg).",
    )
    order: Literal["name", "shuffle"] = Field(
        "name",
        description="Folder sources: name order, or a seeded shuffle on every pass (a demo "
        "that mixes good and defective parts from class folders).",
    )
    mode: Literal["free", "trigger"] = Field(
        "free", description="free: judge every frame; trigger: one verdict per part on a trigger."
    )
    trigger_timeout_s: float = Field(
        2.0,
        gt=0,
        description="Trigger mode: answer UNCERTAIN if no frame arrives within this time.",
    )
    buffer: BufferConfig = Field(
        default_factory=BufferConfig, description="Capture -> inference buffer."
    )
    read_timeout_s: float = Field(5.0, gt=0, description="Open/read timeout of a stream or device.")
    reconnect_initial_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(
        30.0, gt=0, description="Reconnect delays double up to this cap."
    )
    stall_timeout_s: float = Field(
        10.0, gt=0, description="No frame for this long: the camera is stalled."
    )


class LineConfig(_Section):
    name: str = Field("line1", description="Production line name (MQTT topic segment).")
    max_batch: int = Field(
        8, ge=1, le=256, description="Frames of all cameras of a model per inference."
    )
    max_wait_ms: float = Field(
        0.0, ge=0.0, le=1000.0, description="Wait for a fuller batch; 0 = greedy (lowest latency)."
    )
    preprocess_threads: int = Field(2, ge=1, le=64, description="Threads decoding/resizing frames.")


class TlsConfig(_Section):
    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: str | None = Field(None, description="CA bundle that signed the broker's certificate.")
    cert_file: str | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: str | None = Field(None, description="Client key (mutual TLS).")
    insecure: bool = Field(False, description="Skip host-name checks (testing only).")


class MqttConfig(_Section):
    enabled: bool = Field(True, description="Publish verdicts and review items over MQTT.")
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    client_id: str | None = Field(
        None, description="Client id; default lineinspect-<line>. Keep it stable."
    )
    username: str | None = Field(None, description="Broker user.")
    password: SecretStr | None = Field(None, description="Broker password (use the environment).")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    topic_prefix: str = Field(
        "lineinspect", description="First topic segment: <prefix>/<line>/<camera>/<kind>."
    )
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive.")
    inflight: int = Field(32, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once.")
    drain_timeout_s: float = Field(
        5.0, ge=0, description="On stop, time given to empty the outbox."
    )


class OutboxConfig(_Section):
    path: Path = Field(
        Path("var/outbox.sqlite"), description="SQLite file holding unsent verdicts."
    )
    max_messages: int = Field(
        1_000_000, ge=100, description="Oldest messages beyond this are evicted (counted)."
    )
    max_age_s: float = Field(
        7 * 24 * 3600, gt=0, description="Messages older than this are evicted (counted)."
    )
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="normal survives a killed process; full also survives power loss (slower).",
    )


class ReviewConfig(_Section):
    enabled: bool = Field(True, description="Keep uncertain frames for human review.")
    path: Path = Field(
        Path("var/review"), description="Where review images and predictions are kept."
    )
    sample_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="Also keep this share of confident frames (random audit)."
    )
    budget_per_hour: int = Field(120, ge=0, description="Most frames kept per camera per hour.")


class DriftConfig(_Section):
    enabled: bool = Field(
        True, description="Compare each camera's recent frames with the model card's reference."
    )
    window: int = Field(300, ge=10, description="Frames per camera in the sliding window.")
    min_frames: int = Field(
        100, ge=1, description="Frames needed before the drift state leaves 'warming_up'."
    )
    sample_every: int = Field(
        1, ge=1, description="Add every Nth judged frame (raise it for many HD cameras)."
    )
    psi_bins: int = Field(
        10, ge=2, le=20, description="Equal-reference-mass bins for PSI (fewer: less noise)."
    )
    psi_watch: float = Field(0.1, gt=0, description="PSI above this: state 'watch'.")
    psi_alert: float = Field(0.25, gt=0, description="PSI above this: state 'alert'.")
    queue_size: int = Field(
        16, ge=1, description="Frames waiting for the drift worker; when full, new ones are "
        "skipped and counted (lineinspect_drift_samples_skipped_total).",
    )  # fmt: skip


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


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
