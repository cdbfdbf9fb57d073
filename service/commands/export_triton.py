"""`lineinspect models export-triton`: a Triton Inference Server model repository from served
models, for a central server the lines send inference to (`runtime.backend: triton`).

    lineinspect models export-triton models/neu-det-demo.onnx models/neu-cls-demo.onnx \\
        --out var/triton-repository

Each model becomes `<name>/config.pbtxt` (Triton's onnxruntime backend, dynamic batching up to
--max-batch, the model file's sha256 as a parameter the line checks), `<name>/1/model.onnx`
and its card beside the config. `<name>` is the name the line serves it under (the card's
`name`, else the file's stem), which is the name the line asks the server for. Every model is
first resolved as the service would serve it: one that cannot be served is refused here, not
on the server.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from service.commands import fail


def add_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = models.add_parser(
        "export-triton",
        help="write a Triton Inference Server model repository from served models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", type=Path, nargs="+", help="ONNX models, each with its card")
    p.add_argument("--out", type=Path, required=True, help="the repository folder")
    p.add_argument(
        "--max-batch", type=int, default=8, help="max_batch_size of a batched model (default 8)"
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=1000,
        help="how long the server's dynamic batcher may wait to fill a batch (default 1000 µs)",
    )
    p.add_argument(
        "--instances", type=int, default=1, help="model instances per device (default 1)"
    )
    p.add_argument(
        "--kind",
        choices=("KIND_AUTO", "KIND_GPU", "KIND_CPU"),
        default="KIND_AUTO",
        help="where the instances run (default: the GPU when the server has one)",
    )
    p.set_defaults(func=run)


def _tensor(arg: Any, dims: list[int]) -> str:
    from service.inference.triton import DATATYPES

    if arg.type not in DATATYPES:
        raise ValueError(f"tensor '{arg.name}' has type {arg.type}, which Triton is not sent")
    kind = f"TYPE_{DATATYPES[arg.type]}"  # the config's name of the KServe v2 data type
    reshape = ""
    if not dims:  # a batch-only tensor: Triton needs one dim, reshaped away on the wire
        dims, reshape = [1], "\n    reshape: { shape: [ ] }"
    return (
        f'  {{\n    name: "{arg.name}"\n    data_type: {kind}\n'
        f"    dims: [ {', '.join(str(d) for d in dims)} ]{reshape}\n  }}"
    )


def triton_config(
    name: str,
    inputs: list[Any],
    outputs: list[Any],
    sha256: str,
    max_batch: int,
    delay_us: int,
    instances: int = 1,
    kind: str = "KIND_AUTO",
) -> str:
    """config.pbtxt for Triton's onnxruntime backend. A model whose batch axis is free is
    batched by the server (its dims leave the batch out); one exported with a fixed batch is
    sent as it is (max_batch_size 0, every dim given)."""
    from service.inference.triton import triton_dims

    batched = not isinstance(inputs[0].shape[0], int)
    cut = 1 if batched else 0
    ins = ",\n".join(_tensor(a, triton_dims(a.shape)[cut:]) for a in inputs)
    outs = ",\n".join(_tensor(a, triton_dims(a.shape)[cut:]) for a in outputs)
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch if batched else 0}",
        f"input [\n{ins}\n]",
        f"output [\n{outs}\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}")
    lines += [
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]",
        f'parameters {{\n  key: "lineinspect_sha256"\n  value: {{ string_value: "{sha256}" }}\n}}',
    ]
    return "\n".join(lines) + "\n"


def export(model: Path, out: Path, max_batch: int, delay_us: int, instances: int, kind: str) -> str:
    """Write one model into the repository; its served name."""
    from service.inference.card import card_path_for, load_card
    from service.inference.registry import resolve
    from service.inference.runtime import CPU, RuntimeOptions, create_session

    card_file = card_path_for(model)
    card = load_card(card_file) if card_file.is_file() else None
    session = create_session(model, RuntimeOptions(providers=(CPU,)))
    spec = resolve(model, session, card)
    folder = out / spec.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / "1" / "model.onnx")
    if card is not None:
        shutil.copyfile(card_file, folder / card_file.name)
    config = triton_config(
        spec.name, session.get_inputs(), session.get_outputs(), spec.sha256,
        max_batch, delay_us, instances, kind,
    )  # fmt: skip
    (folder / "config.pbtxt").write_text(config)
    return spec.name


def run(args: argparse.Namespace) -> int:
    from service.inference.card import CardError
    from service.inference.errors import ModelError
    from service.inference.runtime import RuntimeSetupError

    if args.max_batch < 1 or args.instances < 1 or args.max_queue_delay_us < 0:
        return fail("--max-batch and --instances must be at least 1, --max-queue-delay-us >= 0")
    names: dict[str, Path] = {}
    for model in args.models:
        try:
            name = export(
                model, args.out, args.max_batch, args.max_queue_delay_us, args.instances, args.kind
            )
        except (FileNotFoundError, CardError, ModelError, RuntimeSetupError, ValueError) as exc:
            return fail(f"{model}: {exc}")
        if name in names:
            return fail(f"{model} and {names[name]} are both served as '{name}'")
        names[name] = model
        print(f"{args.out / name}: {model}")
    return 0
