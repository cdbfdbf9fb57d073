"""The command line: serve, predict, models inspect / tune / quantize (and candidate, promote,
discard, rollback, history on a running service), config validate / schema,
review export, drift check, demo-client, and the training companion's train classify / detect /
anomaly and dataset qa / export-yolo.

Startup errors exit non-zero with one clear line (no traceback): a user at a terminal on the
line needs the reason, not the stack.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from service import __version__
from service.commands import (
    audit,
    demo_client,
    drift,
    export_triton,
    lifecycle,
    quantize,
    tune,
)
from service.config import ConfigError, Settings, json_schema, load_settings

log = logging.getLogger("service")
EXIT_USAGE = 2
TRAIN_COMMANDS = ("classify", "detect", "anomaly")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> int:
    print(f"lineinspect: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config, os.environ)
    overrides: dict[str, object] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if overrides:
        settings = settings.model_copy(update={"api": settings.api.model_copy(update=overrides)})
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from service.api.server import create_app, uvicorn_config
    from service.app import LineInspect
    from service.security import exposure_problem, exposure_warning

    settings = _settings(args)
    setup_logging(settings.logging.level)
    api = settings.api
    problem = exposure_problem(api)
    if problem is not None:  # protected mode: nothing starts, nothing binds
        return _fail(f"refusing to start: {problem}")
    for tls_file in (api.tls_cert_file, api.tls_key_file):
        if tls_file is not None and not tls_file.is_file():
            return _fail(f"cannot start: no TLS file {tls_file} (api.tls_cert_file / tls_key_file)")
    if (warning := exposure_warning(api)) is not None:  # only reached when opted out
        log.warning("%s", warning)
    service = LineInspect(settings)
    t0 = time.perf_counter()
    try:
        service.start()
    except Exception as exc:
        return _fail(f"cannot start: {exc}")
    log.info(
        "models ready in %.1f s: %s", time.perf_counter() - t0, ", ".join(service.served.models)
    )
    import uvicorn

    server = uvicorn.Server(
        uvicorn_config(
            create_app(service.api()), api.host, api.port, api.tls_cert_file, api.tls_key_file
        )
    )
    base = f"{'https' if api.tls_cert_file else 'http'}://{api.host}:{api.port}"
    log.info(
        "serving on %s — POST %s/v1/predict, docs %s/docs, metrics %s/metrics",
        base, base, base, base,
    )  # fmt: skip
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: with the default one the process would die before the components stop in order.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        service.stop()
        log.info("stopped")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from service.core.wire import predict_response
    from service.imageio import ImageError, decode_image
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    options = RuntimeOptions(warmup_runs=1)
    try:
        model = load_model(args.model, options, args.card)
    except Exception as exc:
        return _fail(f"cannot load {args.model}: {exc}")
    failures = 0
    for path in args.images:
        try:
            image = decode_image(path.read_bytes(), args.max_pixels)
        except (OSError, ImageError) as exc:
            failures += 1
            print(json.dumps({"file": str(path), "error": str(exc)}), flush=True)
            continue
        result = model.predict([image])[0]
        body = predict_response(result, path.name).model_dump(mode="json")
        print(json.dumps({"file": str(path), **body}), flush=True)
    return 1 if failures else 0


def cmd_models_inspect(args: argparse.Namespace) -> int:
    from service.api.models import describe
    from service.inference.model import load_model
    from service.inference.runtime import RuntimeOptions

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        model = load_model(args.model, RuntimeOptions(warmup_runs=1), args.card)
    except Exception as exc:
        print(f"{args.model}: cannot be served: {exc}", file=sys.stderr)
        return EXIT_USAGE
    info = describe(model)
    if args.json:
        print(info.model_dump_json(indent=2))
        return 0
    s = model.spec
    rect = f" (rect, stride {info.rect_stride})" if info.rect_stride else ""
    rows = [
        ("model", f"{info.name} {info.version}"),
        ("file", f"{s.path} (sha256 {info.sha256})"),
        ("task", info.task),
        ("layout", info.layout or "-"),
        ("classes", f"{len(info.classes)}: {', '.join(info.classes)}"),
        ("good classes", ", ".join(info.good_classes) or "-"),
        ("input", f"{info.input_name} {info.input_size[0]}x{info.input_size[1]} {info.color}, "
                  f"{info.resize}{rect}, "
                  f"batch {info.batch or 'dynamic'}"),
        ("normalise", f"x*{s.preprocess.scale:.6g} - {s.preprocess.mean} / {s.preprocess.std}"),
        ("outputs", ", ".join(f"{k} {v}" for k, v in info.output_shapes.items())),
        ("providers", ", ".join(info.providers)),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("detected from:")
    for key, value in info.sources.items():
        print(f"  {key:<{width}}  {value}")
    for warning in info.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file, os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    missing = [str(m.path) for m in settings.models if not m.path.is_file()]
    missing += [str(m.card) for m in settings.models if m.card and not m.card.is_file()]
    missing += [
        str(m.candidate) for m in settings.models if m.candidate and not m.candidate.is_file()
    ]
    if missing:
        print(
            f"{args.file}: files not found (relative to {Path.cwd()}): {missing}", file=sys.stderr
        )
        return EXIT_USAGE
    api = settings.api
    print(f"{args.file}: OK ({len(settings.models)} model(s), api on {api.host}:{api.port})")
    from service.security import exposure_problem

    if (problem := exposure_problem(api)) is not None:  # the token may come at deploy time
        print(f"note: without a token in its environment, serve would refuse: {problem}",
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_review_export(args: argparse.Namespace) -> int:
    from service.review_store import export

    if not args.path.is_dir():
        return _fail(f"no review queue at {args.path}")
    try:
        n = export(args.path, args.out, args.format, args.labelled_only)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    print(f"exported {n} review items as {args.format} to {args.out}")
    return 0


def _command_module(name: str) -> ModuleType | None:
    """`training.commands.<name>`, or None where it is not there: a service-only install has no
    `training` package, and a command may not be written yet. Any other import error is a bug
    in that module and is raised. The modules import nothing heavy (see training/commands)."""
    module = f"training.commands.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in (module, "training", "training.commands"):
            return None
        raise


def _add_training(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train_modules = [m for m in map(_command_module, TRAIN_COMMANDS) if m is not None]
    if train_modules:
        train = sub.add_parser(
            "train",
            help="train a model on your labelled images (needs lineinspect[train])",
            description="Train a model on your labelled images and export it for lineinspect: "
            "ONNX + model card (+ report). `lineinspect train COMMAND --help` describes the "
            "data each one expects and what it writes.",
        )
        train_sub = train.add_subparsers(dest="train_cmd", required=True, metavar="COMMAND")
        for module in train_modules:
            module.add_parser(train_sub)
    dataset_module = _command_module("dataset")
    if dataset_module is not None:
        dataset = sub.add_parser(
            "dataset",
            help="check a labelled dataset, split it, export it for YOLO",
            description="Dataset import and QA: read a labelled folder, check it, split it, "
            "export it for Ultralytics.",
        )
        dataset_sub = dataset.add_subparsers(dest="dataset_cmd", required=True, metavar="COMMAND")
        dataset_module.add_parser(dataset_sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineinspect", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lineinspect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    serve.add_argument("--host", help="override api.host")
    serve.add_argument("--port", type=int, help="override api.port")
    serve.set_defaults(func=cmd_serve)

    predict = sub.add_parser("predict", help="judge image files, one JSON line each")
    predict.add_argument("--model", type=Path, required=True, help="ONNX model")
    predict.add_argument("--card", type=Path, help="model card (default: next to the model)")
    predict.add_argument("--max-pixels", type=int, default=100_000_000, help="largest image")
    predict.add_argument("images", type=Path, nargs="+")
    predict.set_defaults(func=cmd_predict)

    models = sub.add_parser("models", help="model tools").add_subparsers(
        dest="models_cmd", required=True
    )
    inspect = models.add_parser("inspect", help="show how a model would be served, or why not")
    inspect.add_argument("model", type=Path)
    inspect.add_argument("--card", type=Path, help="model card (default: next to the model)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=cmd_models_inspect)
    tune.add_parser(models)
    quantize.add_parser(models)
    export_triton.add_parser(models)
    lifecycle.add_parser(models)

    config = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_cmd", required=True
    )
    validate = config.add_parser(
        "validate", help="check a config file (and LINEINSPECT__* overrides)"
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(func=cmd_config_validate)
    schema = config.add_parser("schema", help="print the configuration's JSON schema")
    schema.set_defaults(func=cmd_config_schema)
    review = sub.add_parser("review", help="active-learning queue")
    review_sub = review.add_subparsers(dest="review_cmd", required=True)
    rexport = review_sub.add_parser("export", help="write the queue for labelling / retraining")
    rexport.add_argument(
        "--path", type=Path, default=Path("var/review"), help="review queue folder"
    )
    rexport.add_argument("--format", choices=["folders", "yolo", "labelstudio"], default="folders")
    rexport.add_argument("--out", type=Path, required=True)
    rexport.add_argument(
        "--labelled-only", action="store_true", help="only items an inspector labelled"
    )
    rexport.set_defaults(func=cmd_review_export)
    drift.add_parser(sub)
    demo_client.add_parser(sub)
    audit.add_parser(sub)
    _add_training(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The arguments as given, for the model cards' `training.command` (sys.argv is the test
    # runner's when main() is called in-process).
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code
