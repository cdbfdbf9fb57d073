"""A Triton Inference Server for the tests and benchmarks on a machine without NVIDIA's Triton
container: pytriton's own `tritonserver` binary (KServe v2 over HTTP and gRPC, dynamic batching)
serving every model of a repository written by `lineinspect models export-triton`.

That binary carries only Triton's Python backend, so each model's `1/model.onnx` runs in ONNX
Runtime inside it; names, dims, data types and `max_batch_size` are read from the model's
`config.pbtxt`, exactly as Triton's onnxruntime backend would take them, so a repository whose
config disagrees with its model is served as written (the tests rely on that). Run it in its own
virtualenv (pytriton pins numpy<2):

    python -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime
    .venv-triton/bin/python -m scripts.dev.triton_server --repository REPO \\
        --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

log = logging.getLogger("triton_server")

DTYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64",
          "TYPE_INT32": "int32", "TYPE_UINT8": "uint8", "TYPE_BOOL": "bool"}  # fmt: skip


def _libpython_first() -> None:
    """The Python backend's stub links `libpython3.x.so` by name; where the system has its own
    (Debian's, an older patch release) it loads that one against this interpreter's standard
    library and fails (`'_thread.RLock' object has no attribute '_recursion_count'`). Putting
    this interpreter's own lib/ first makes the stub load the matching library."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{rest}" if rest else libdir


def read_config(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def make_infer(model_file: Path, config: Any) -> Any:
    import numpy as np
    import onnxruntime as ort
    from pytriton.decorators import batch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    names_in = [i.name for i in config.input]
    names_out = [o.name for o in config.output]

    def run(feeds: dict[str, Any]) -> dict[str, Any]:
        # Config inputs map to the model's by position, as do outputs: a config that renames
        # them is served under its own names (a mis-built repository, as a real one would be).
        ort_feeds = {o: feeds[n] for o, n in zip(onnx_inputs, names_in, strict=False)}
        outs = [np.asarray(v) for v in session.run(None, ort_feeds)]
        # A batch-only output is configured as dims [1] (Triton's reshape, which pytriton lacks).
        outs = [v.reshape(-1, 1) if v.ndim == 1 else v for v in outs]
        return dict(zip(names_out, outs, strict=False))

    if config.max_batch_size > 0:

        @batch  # type: ignore[misc]
        def infer_batched(**feeds: Any) -> dict[str, Any]:
            return run(feeds)

        return infer_batched

    def infer_each(requests: list[Any]) -> list[dict[str, Any]]:
        return [run(dict(r)) for r in requests]

    return infer_each


def _keep_parameters(parameters: dict[str, dict[str, str]]) -> None:
    """pytriton writes each model's config itself, with only its own backend parameters; the
    repository's `parameters` (the sha256 the line checks) are added to them, so the server
    reports them as Triton reports a config.pbtxt's. A private pytriton method: a dev tool's
    patch, pinned with the pytriton version in scripts/dev/bootstrap.sh."""
    from pytriton.models.model import Model

    original = Model._get_triton_model_config

    def with_parameters(self: Any) -> Any:
        config = original(self)
        config.backend_parameters.update(parameters.get(self.model_name, {}))
        return config

    Model._get_triton_model_config = with_parameters


def serve(repository: Path, http_port: int, grpc_port: int, metrics_port: int) -> None:
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig
    from tritonclient.grpc import model_config_pb2

    config = TritonConfig(
        http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
        grpc_port=grpc_port, metrics_address="127.0.0.1", metrics_port=metrics_port,
        exit_on_error=True,
    )  # fmt: skip
    configs = [read_config(f) for f in sorted(repository.glob("*/config.pbtxt"))]
    _keep_parameters(
        {c.name: {k: v.string_value for k, v in c.parameters.items()} for c in configs}
    )
    with Triton(config=config) as triton:
        for cfg in configs:
            cfg_file = repository / cfg.name / "config.pbtxt"
            model_file = cfg_file.parent / "1" / (cfg.default_model_filename or "model.onnx")
            log.info("serving %s from %s", cfg.name, model_file)

            def tensors(specs: Any) -> list[Any]:
                return [
                    Tensor(
                        name=t.name,
                        dtype=np.dtype(DTYPES[model_config_pb2.DataType.Name(t.data_type)]).type,
                        shape=tuple(t.dims),
                    )
                    for t in specs
                ]

            delay = cfg.dynamic_batching.max_queue_delay_microseconds
            triton.bind(
                model_name=cfg.name,
                infer_func=make_infer(model_file, cfg),
                inputs=tensors(cfg.input),
                outputs=tensors(cfg.output),
                config=ModelConfig(
                    batching=cfg.max_batch_size > 0,
                    max_batch_size=max(cfg.max_batch_size, 1),
                    batcher=DynamicBatcher(max_queue_delay_microseconds=delay),
                ),
                strict=False,
            )
        print("READY", flush=True)  # the tests wait for this line
        triton.serve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _libpython_first()
    serve(args.repository, args.http_port, args.grpc_port, args.metrics_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
