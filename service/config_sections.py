"""The sections of the configuration (`service.config.Settings` holds one of each): every key
with its type, bounds, default and description (`lineinspect config schema` prints them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from service.inference.card import ThresholdSpec
from service.inference.runtime import DEFAULT_PREFERENCE

DEFAULT_MODEL = Path("models/neu-cls-demo.onnx")


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
    candidate: Path | None = Field(
        None,
        description="An ONNX model to run beside this one from start-up as its candidate: it "
        "judges the same frames off the PLC path (its verdicts are never published), compared "
        "in the metrics and GET /v1/models/{name}/candidate. It must have the same task and name.",
    )
    candidate_card: Path | None = Field(
        None, description="The candidate's card; default: `<stem>.card.yaml` next to it."
    )


class TritonConfig(_Section):
    url: str = Field(
        "127.0.0.1:8001",
        description="host:port of the Triton Inference Server (8001 gRPC, 8000 HTTP by default).",
    )
    protocol: Literal["grpc", "http"] = Field("grpc", description="KServe v2 over gRPC or HTTP.")
    model_version: str = Field("", description="Version to ask for; empty: the server's latest.")
    timeout_s: float = Field(
        2.0, gt=0, le=60, description="A request not answered in this time fails its frames."
    )
    max_batch: int = Field(
        8, ge=1, le=1024,
        description="Most images in one request; the server's max_batch_size must allow it.",
    )  # fmt: skip
    retry_initial_s: float = Field(
        0.5, gt=0, description="After a failure, no request for this long (frames get error "
        "verdicts at once); doubles on each further failure.",
    )  # fmt: skip
    retry_max_s: float = Field(5.0, gt=0, description="Longest pause between tries.")


class RuntimeConfig(_Section):
    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime",
        description="Where models run: in this process (ONNX Runtime), or on the Triton server "
        "of `triton` (the models stay configured here: their files and cards name what the "
        "server must serve; `lineinspect models export-triton` writes its repository).",
    )
    triton: TritonConfig = Field(
        default_factory=TritonConfig, description="The inference server, for backend triton."
    )
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


# Values a deploy template ships in place of a secret: refused as tokens.
_PLACEHOLDER = re.compile(r"^\s*(change[-_]?me|replace[-_]?me|<[^>]*>|\$\{[^}]*\}).*$", re.I)


def _no_placeholder(secret: SecretStr) -> SecretStr:
    if _PLACEHOLDER.match(secret.get_secret_value()) or not secret.get_secret_value().strip():
        raise ValueError("the token is a placeholder: set a real secret, e.g. openssl rand -hex 32")
    return secret


Token = Annotated[SecretStr, AfterValidator(_no_placeholder)]


class TokenConfig(_Section):
    id: str = Field(
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="Who holds it (recorded in the audit trail and the model history as "
        "`<role>:<id>`; the secret never is).",
    )
    role: Literal["operator", "admin"] = Field(
        description="operator: label review frames, trigger cameras; admin: also thresholds, "
        "model reload / candidate / promote / discard / rollback, recipes, the audit trail."
    )
    secret: Token = Field(description="The bearer token (e.g. openssl rand -hex 32).")


class ApiConfig(_Section):
    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP server binds; a non-loopback one needs a token (or "
        "allow_unauthenticated).",
    )
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    token: Token | None = Field(
        None,
        description="An admin bearer token with the id `default` (the one token of earlier "
        "versions; more tokens and roles: `tokens`).",
    )
    tokens: list[TokenConfig] = Field(
        default_factory=list, description="Bearer tokens with an id and a role each."
    )
    allow_unauthenticated: bool = Field(
        False,
        description="Serve on a non-loopback host without any token (every route open to the "
        "network; a WARNING on every start). Without it such a start is refused.",
    )
    require_token_for_predict: bool = Field(
        False, description="Also require a token (any role) on /v1/predict."
    )
    model_dirs: list[Path] | None = Field(
        None,
        description="Folders whose files reload and candidate requests may name (symlinks and "
        "`..` resolved first); default: the folders of the configured models and candidates.",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain): the API serves HTTPS (with tls_key_file)."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    max_body_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Larger request bodies get 413."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Images whose header declares more pixels are refused before decoding (413).",
    )
    reduced_decode: bool = Field(
        False,
        description="Decode a JPEG at 1/2, 1/4 or 1/8 scale in libjpeg's DCT when the model "
        "input is at most that fraction of the image (cheaper than decoding in full and "
        "resizing); boxes and image size stay in original pixels. Off by default: the "
        "reduced pixels differ from a full decode + resize, so scores and boxes shift "
        "(measured in docs/BENCHMARKS.md, 'Issue 15: reduced-scale decoding').",
    )
    docs: bool = Field(True, description="Serve OpenAPI docs at /docs and /openapi.json.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Micro-batching.")

    @model_validator(mode="after")
    def _tokens_fit(self) -> ApiConfig:
        ids = [t.id for t in self.tokens] + (["default"] if self.token is not None else [])
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"token ids must be unique (api.token is id 'default'): {dupes}")
        secrets = [t.secret.get_secret_value() for t in self.tokens]
        if self.token is not None:
            secrets.append(self.token.get_secret_value())
        if len(set(secrets)) != len(secrets):
            raise ValueError("two tokens share a secret: each holder needs their own")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("api.tls_cert_file and api.tls_key_file go together")
        return self


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
    recipe: str | None = Field(
        None,
        description="The recipe selected at start (see `recipes`); none: each camera's own "
        "`model` and each model's thresholds.",
    )


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
    max_age_days: float | None = Field(
        None,
        gt=0,
        description="Delete unlabelled items older than this (checked every 10 minutes); "
        "labelled items are never deleted; null: kept until exported and cleared.",
    )
    max_bytes: int | None = Field(
        None,
        ge=1_000_000,
        description="Delete the oldest unlabelled items while the queue holds more than this.",
    )


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


class ShadowConfig(_Section):
    queue_size: int = Field(
        16,
        ge=1,
        le=1024,
        description="Frames waiting for a candidate's worker; when full, new ones are skipped "
        "for the candidate and counted (lineinspect_candidate_frames_dropped_total). The live "
        "path never waits.",
    )
    idle: bool = Field(
        True,
        description="Run the candidate's worker under Linux's SCHED_IDLE policy: it only gets "
        "CPU time nothing else wants, so it never takes a core from the live path (on a "
        "saturated machine it judges nothing and skips frames, counted). false: `nice`.",
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="With idle: false, how much lower the candidate worker's CPU priority is "
        "(Linux nice increment of that thread): the live path gets the cores first.",
    )
    review: bool = Field(
        True,
        description="Keep the frames a candidate and the live model disagree on in the review "
        "queue (reason candidate_disagrees), within review.budget_per_hour.",
    )


class HistoryConfig(_Section):
    enabled: bool = Field(
        True, description="Keep a copy of every model that serves, for POST .../rollback."
    )
    path: Path = Field(
        Path("var/models"),
        description="Where the copies are kept: <path>/<model>/<entry>/ (ONNX file, card, "
        "entry.json with sha256, when and who).",
    )
    keep: int = Field(
        10, ge=2, le=1000, description="Most models kept per model name; the oldest go first."
    )


class AuditConfig(_Section):
    enabled: bool = Field(
        True,
        description="Record every operator and admin change (who, when, route, before and "
        "after) and every thresholds version, append-only, for GET /v1/audit and "
        "`lineinspect audit`.",
    )
    path: Path | None = Field(
        None,
        description="SQLite file of the audit trail (WAL, synchronous FULL; never pruned by the "
        "service); default: audit.sqlite beside the outbox.",
    )
