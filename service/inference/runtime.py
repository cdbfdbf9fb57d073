"""ONNX Runtime sessions: one clean install, providers by preference, the truth about them.

`onnxruntime-gpu` lists CUDA among the available providers even where CUDA cannot load; the
session then silently falls back to CPU. So the providers reported are always the ones
`session.get_providers()` returns after creation, and a fallback is logged as a warning.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.inference.triton import TritonOptions

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_PREFERENCE = (TENSORRT, CUDA, CPU)
# Wheels that all install the same top-level `onnxruntime` package and overwrite each other.
ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-silicon",
)


class RuntimeSetupError(RuntimeError):
    """The ONNX Runtime installation or session options cannot work."""


# Auto parallelism on a CPU: up to this many runs at once, each with cores // runs threads.
# One run per core beats one run over all cores: YOLOv8n on 2 cores, two concurrent
# single-threaded runs spend 7.1 ms of CPU per 320x192 frame and 27.2 ms per 384x640, one run on
# both cores 8.5 and 38.7 ms (docs/BENCHMARKS.md, issue 6 round 2). More runs than this would
# each hold their activations in the arena (~50 MB per 640-px image).
MAX_AUTO_RUNS = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallelism(runs: int, intra_op_threads: int, on_cpu: bool, cores: int) -> tuple[int, int]:
    """(concurrent `session.run` calls per model, intra-op threads per run; 0 = ORT's default)
    from the configured values, where 0 means auto."""
    if not on_cpu:  # a GPU does the work; CPU threads only feed it
        return runs or 1, intra_op_threads
    runs = runs or max(1, min(cores, MAX_AUTO_RUNS))
    return runs, intra_op_threads or max(1, cores // runs)


def cpu_only(preference: Sequence[str]) -> bool:
    """Whether sessions created with this preference will run on the CPU provider."""
    available = import_onnxruntime().get_available_providers()
    return choose_providers(preference, available) == [CPU]


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...] = DEFAULT_PREFERENCE
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_threads: int = 0
    device_id: int = 0
    tensorrt_cache_dir: Path | None = None
    tensorrt_fp16: bool = True
    warmup_runs: int = 2
    parallel_runs: int = 1  # concurrent runs per model (line workers, HTTP batcher workers)
    triton: TritonOptions | None = None  # set: inference runs on this Triton server


def installed_ort_distributions() -> list[str]:
    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def import_onnxruntime() -> Any:
    """Import onnxruntime, refusing an install where two wheels overwrote each other."""
    found = installed_ort_distributions()
    if len(found) > 1:
        raise RuntimeSetupError(
            f"several ONNX Runtime packages are installed ({', '.join(found)}); they write the "
            "same `onnxruntime` package and break each other. Keep exactly one: "
            "`pip uninstall -y " + " ".join(f.split("==")[0] for f in found) + "` then "
            "`pip install 'lineinspect[cpu]'` or `pip install 'lineinspect[gpu]'`."
        )
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeSetupError(
            "ONNX Runtime is not installed: `pip install 'lineinspect[cpu]'` "
            "(or `[gpu]` for CUDA/TensorRT)"
        ) from exc
    return ort


def choose_providers(preference: Sequence[str], available: Sequence[str]) -> list[str]:
    """The preferred providers this build offers, in preference order; CPU always last."""
    chosen = [p for p in preference if p in available and p != CPU]
    chosen.append(CPU)
    return chosen


def provider_options(name: str, options: RuntimeOptions) -> dict[str, Any]:
    if name == TENSORRT:
        opts: dict[str, Any] = {
            "device_id": options.device_id,
            "trt_fp16_enable": options.tensorrt_fp16,
        }
        if options.tensorrt_cache_dir is not None:
            options.tensorrt_cache_dir.mkdir(parents=True, exist_ok=True)
            opts |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(options.tensorrt_cache_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(options.tensorrt_cache_dir),
            }
        return opts
    if name == CUDA:
        return {"device_id": options.device_id}
    return {}


def create_session(model_path: Path, options: RuntimeOptions) -> Any:
    """An InferenceSession on the best available providers; raises with a precise reason."""
    ort = import_onnxruntime()
    if not model_path.is_file():
        raise FileNotFoundError(f"model file not found: {model_path}")
    unknown = [p for p in options.providers if p not in ort.get_all_providers()]
    if unknown:
        raise RuntimeSetupError(
            f"unknown execution providers {unknown}; known: {ort.get_all_providers()}"
        )
    available = ort.get_available_providers()
    providers = choose_providers(options.providers, available)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3  # errors only; ORT's own warnings are noise on the line
    # No busy-waiting between parallel sections: capture, decoding, preprocessing and HTTP share
    # the cores with inference, and ORT's default spinning burned the CPU they need (line, 320 px,
    # 2 busy cores: 2.4x the frames/s, 26 -> 16 ms CPU per frame; quiet: the same frames/s for
    # 15 % less CPU; docs/BENCHMARKS.md, issue 6).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(model_path),
            sess_options=so,
            providers=[(p, provider_options(p, options)) for p in providers],
        )
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise RuntimeSetupError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
    in_use = session.get_providers()
    if in_use[0] != providers[0]:
        log.warning(
            "model %s: asked for %s but ONNX Runtime runs it on %s (the provider could not load)",
            model_path.name,
            providers[0],
            in_use,
        )
    log.info("model %s: providers in use %s", model_path.name, in_use)
    return session
