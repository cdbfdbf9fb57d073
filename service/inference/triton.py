"""Remote inference on a Triton Inference Server (KServe v2, gRPC or HTTP) through NVIDIA's own
`tritonclient`: a session with the few methods the service asks of an ONNX Runtime one.

The model file and its card stay at the line: they are resolved there (one local probe, so the
line starts even while the server is away) and name what the server must serve. The server's
model is checked against them (input and output names, data types, dims, and the file's sha256
where the repository records it) when first reached and again after every outage: a server that
was restarted with another repository is refused, not trusted.

A server that is gone, or slower than `timeout_s`, raises `ServerUnavailableError`: the caller gives
each frame of that batch an error verdict. After a failure no request is sent for a back-off
(`retry_initial_s`, doubling up to `retry_max_s`): frames keep getting their error verdicts at
once instead of each waiting out a timeout, and the next attempt opens a fresh connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.inference.errors import ModelError

log = logging.getLogger(__name__)

UNAVAILABLE = "inference server unavailable"
SHA_PARAMETER = "lineinspect_sha256"  # written into config.pbtxt by `models export-triton`
# KServe v2 data types of the tensors lineinspect models take and give.
DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
}
# Statuses with which the server refuses this request rather than being unable to serve.
REFUSALS = {"400", "StatusCode.INVALID_ARGUMENT"}


class ServerUnavailableError(RuntimeError):
    """The inference server cannot be reached or did not answer in time."""


@dataclass(frozen=True)
class TritonOptions:
    url: str = "127.0.0.1:8001"
    protocol: Literal["grpc", "http"] = "grpc"
    model_name: str | None = None  # None: the served model's name
    model_version: str = ""  # "": the server's latest
    timeout_s: float = 2.0
    max_batch: int = 8
    retry_initial_s: float = 0.5
    retry_max_s: float = 5.0


@dataclass(frozen=True)
class Arg:
    """What ONNX Runtime's NodeArg tells: name, shape (str or None for a free axis), type."""

    name: str
    shape: list[int | str | None]
    type: str


@dataclass(frozen=True)
class _Meta:
    custom_metadata_map: dict[str, str]


def triton_dims(shape: Sequence[int | str | None]) -> list[int]:
    """An ONNX Runtime shape as Triton writes dims: -1 for every free axis."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


def _fits(want: Sequence[int], have: Sequence[int]) -> bool:
    return len(want) == len(have) and all(
        w in (-1, h) or h == -1 for w, h in zip(want, have, strict=True)
    )


class TritonSession:
    """`run`, `get_inputs`, `get_outputs`, `get_modelmeta`, `get_providers` as ONNX Runtime's
    InferenceSession has them; `run` is a KServe v2 infer on the server."""

    def __init__(self, local: Any, sha256: str, model_name: str, options: TritonOptions) -> None:
        self.options = options
        self.model = options.model_name or model_name
        self.sha256 = sha256
        self._inputs = [Arg(i.name, list(i.shape), i.type) for i in local.get_inputs()]
        self._outputs = [Arg(o.name, list(o.shape), o.type) for o in local.get_outputs()]
        self._meta = _Meta(dict(local.get_modelmeta().custom_metadata_map or {}))
        self._batched = not isinstance(self._inputs[0].shape[0], int)
        self._local = threading.local()  # one client per thread: the HTTP client is not shareable
        self._lock = threading.Lock()
        self._verified = False
        self._retry_at = 0.0
        self._delay = 0.0
        self._last_error = ""
        self.up = False  # read by the lineinspect_inference_server_up gauge

    # -- what ONNX Runtime's session answers
    def get_inputs(self) -> list[Arg]:
        return self._inputs

    def get_outputs(self) -> list[Arg]:
        return self._outputs

    def get_modelmeta(self) -> _Meta:
        return self._meta

    def get_providers(self) -> list[str]:
        return [f"Triton({self.options.protocol}://{self.options.url}/{self.model})"]

    @property
    def max_batch(self) -> int | None:
        """Largest batch one request may carry: the configured one (the server's
        `max_batch_size` is checked against it)."""
        return self.options.max_batch if self._batched else None

    # -- the connection
    def _tritonclient(self) -> Any:
        """NVIDIA's client module for the configured protocol (imported on first use)."""
        if self.options.protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        return tc

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            o, tc = self.options, self._tritonclient()
            if o.protocol == "grpc":
                # gRPC's own reconnect back-off grows to 120 s; ours is shorter and opens a
                # fresh channel after an outage anyway.
                client = tc.InferenceServerClient(
                    o.url,
                    channel_args=[
                        ("grpc.initial_reconnect_backoff_ms", 200),
                        ("grpc.max_reconnect_backoff_ms", int(o.retry_max_s * 1000)),
                    ],
                )
            else:  # its timeouts are the connection's; gRPC's are given per call (_per_call)
                client = tc.InferenceServerClient(
                    o.url, connection_timeout=o.timeout_s, network_timeout=o.timeout_s
                )
            self._local.client = client
        return client

    def _per_call(self) -> dict[str, Any]:
        """Keyword arguments every gRPC call takes: its deadline."""
        return {"client_timeout": self.options.timeout_s} if self.options.protocol == "grpc" else {}

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close: gone
                client.close()

    def connect(self) -> bool:
        """Check the server's model against the local one; False (logged) while the server is
        away. Raises ModelError when it serves something else."""
        try:
            self._verify()
        except ServerUnavailableError as exc:
            self._failed(exc)
            log.warning("model %s: %s; frames get error verdicts until it answers", self.model, exc)
            return False
        return True

    def _call(self, what: str, fn: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn()
        except InferenceServerException as exc:
            # A model still loading (a restarting server) is "unknown", with HTTP's 400 too.
            if exc.status() in REFUSALS and "unknown model" not in (exc.message() or ""):
                raise ModelError(
                    f"Triton model '{self.model}' refused the {what}: {exc.message()}"
                ) from exc
            raise ServerUnavailableError(
                f"{UNAVAILABLE} ({self._where()}): {exc.message()}"
            ) from exc
        except Exception as exc:  # refused connections, resets and timeouts of the transport
            raise ServerUnavailableError(
                f"{UNAVAILABLE} ({self._where()}): {type(exc).__name__}: {exc}"
            ) from exc

    def _where(self) -> str:
        return f"{self.options.protocol}://{self.options.url}"

    def _verify(self) -> None:
        client, o = self._client(), self.options
        # gRPC answers protobuf unless asked for JSON, and wraps the config in {"config": ...}
        ask = self._per_call() | ({"as_json": True} if o.protocol == "grpc" else {})
        name, version = self.model, o.model_version
        meta = self._call(
            "metadata request", lambda: client.get_model_metadata(name, version, **ask)
        )
        config = self._call("config request", lambda: client.get_model_config(name, version, **ask))
        if o.protocol == "grpc":
            config = config.get("config", {})
        check_served(self, meta, config)
        if not self.up:
            log.info("model %s: inference server %s answers; its model checked", self.model,
                     self._where())  # fmt: skip
        self._verified, self.up = True, True

    # -- inference
    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[Any]:
        now = time.monotonic()
        if now < self._retry_at:
            raise ServerUnavailableError(
                f"{self._last_error} (next try in {self._retry_at - now:.1f} s)"
            )
        try:
            if not self._verified:
                self._verify()
            outputs = self._infer(feeds)
        except ServerUnavailableError as exc:
            self._failed(exc)
            raise
        self.up, self._delay = True, 0.0
        return outputs

    def _infer(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        o, tc = self.options, self._tritonclient()
        inputs = []
        for name, array in feeds.items():
            tensor = tc.InferInput(name, list(array.shape), DATATYPES[self._type_of(name)])
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        wanted = [tc.InferRequestedOutput(a.name) for a in self._outputs]
        client, extra = self._client(), self._per_call()
        result = self._call(
            "inference request",
            lambda: client.infer(
                self.model, inputs, model_version=o.model_version, outputs=wanted, **extra
            ),
        )
        outs = []
        for arg in self._outputs:
            array = result.as_numpy(arg.name)
            if array is None:
                raise ModelError(
                    f"Triton model '{self.model}' answered without output '{arg.name}'"
                )
            if len(arg.shape) == 1 and array.ndim == 2 and array.shape[1] == 1:
                array = array.reshape(-1)  # a batch-only output, served as dims [1]
            outs.append(array)
        return outs

    def _type_of(self, name: str) -> str:
        return next(a.type for a in self._inputs if a.name == name)

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self._delay = min(
                max(self._delay * 2, self.options.retry_initial_s), self.options.retry_max_s
            )
            self._retry_at = time.monotonic() + self._delay
            self._last_error = str(exc).split(" (next try")[0]
            was_up, self.up, self._verified = self.up, False, False
        self._drop_client()
        if was_up:
            log.error("model %s: %s", self.model, exc)


def check_served(session: TritonSession, meta: dict[str, Any], config: dict[str, Any]) -> None:
    """Raise ModelError unless the server's model takes and gives what the local one does."""
    name = session.model
    batch = int(config.get("max_batch_size", 0) or 0)
    lead = [-1] if batch > 0 else []

    def described(items: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
        return {t["name"]: (t["datatype"], [int(d) for d in t.get("shape", [])]) for t in items}

    for kind, local, served in (
        ("input", session.get_inputs(), described(meta.get("inputs", []))),
        ("output", session.get_outputs(), described(meta.get("outputs", []))),
    ):
        want = {a.name for a in local}
        if set(served) != want:
            raise ModelError(
                f"Triton model '{name}' has {kind}s {sorted(served)} but the model file has "
                f"{sorted(want)}: the repository does not hold this model (re-export it with "
                "`lineinspect models export-triton`)"
            )
        for arg in local:
            datatype, dims = served[arg.name]
            if datatype != DATATYPES.get(arg.type, arg.type):
                raise ModelError(
                    f"Triton model '{name}' {kind} '{arg.name}' is {datatype}, "
                    f"the model file's is {arg.type}"
                )
            ours = triton_dims(arg.shape)
            if kind == "output" and len(ours) == 1 and dims == [*lead, 1]:
                continue  # a batch-only output, served as dims [1]
            if not _fits(ours, dims):
                raise ModelError(
                    f"Triton model '{name}' {kind} '{arg.name}' has shape {dims} but the model "
                    f"file (and its card) expect {ours} (-1: any)"
                )
    if session.max_batch is not None and 0 < batch < session.max_batch:
        raise ModelError(
            f"Triton model '{name}' takes batches of at most {batch} but runtime.triton.max_batch "
            f"is {session.max_batch}; lower it or re-export with --max-batch"
        )
    served_sha = (config.get("parameters", {}).get(SHA_PARAMETER) or {}).get("string_value")
    if served_sha and served_sha != session.sha256:
        raise ModelError(
            f"Triton model '{name}' was exported from a file with sha256 {served_sha[:12]}…, "
            f"the line's model file is {session.sha256[:12]}…: they are different models"
        )
    if not served_sha:
        log.info(
            "model %s: the server does not record which file it serves (no %s parameter); "
            "checked by names, types and shapes only",
            name,
            SHA_PARAMETER,
        )
