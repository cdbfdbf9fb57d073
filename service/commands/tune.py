"""`lineinspect models tune`: re-tune a classifier's thresholds on its validation split and
write them into its card.

    lineinspect models tune models/neu-cls-int8.onnx --manifest models/neu-cls-split.json \\
        [--critical crack,hole --max-miss 0.05 --review-share 0.05]

Runs the served model (the service's own loader and preprocessing) over the validation images,
so the thresholds fit the exact file that will be deployed (e.g. after quantisation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.commands import fail


def add_parser(models: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = models.add_parser(
        "tune",
        help="re-tune a classifier's thresholds on its validation split (writes its card)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="ONNX classifier with its card")
    p.add_argument("--manifest", type=Path, required=True, help="the split it was trained on")
    p.add_argument("--critical", default="", help="comma-separated critical defect classes")
    p.add_argument("--max-miss", type=float, default=0.05)
    p.add_argument("--review-share", type=float, default=0.05)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from service.inference.card import card_path_for, load_card
    from service.inference.model import load_model
    from training import cards, thresholds
    from training.dataset import Manifest, read_image

    try:
        model = load_model(args.model)
        card = load_card(card_path_for(args.model))
        val = Manifest.load(args.manifest).samples("val")
    except (FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    classes = list(model.spec.classes)
    images = []
    for sample in val:
        image = read_image(sample.path)
        if image is None:
            return fail(f"cannot decode {sample.path}")
        images.append(image)
    rows = []
    for result in model.predict(images):
        if result.prediction.probabilities is None:
            return fail(f"{args.model} is not a classifier (no class probabilities)")
        rows.append(result.prediction.probabilities)
    probs = np.stack(rows)
    y = [classes.index(s.label) for s in val]
    critical = [c for c in args.critical.split(",") if c]
    tuned = thresholds.tune_classifier(
        y, probs, classes, card.good_classes, critical, args.max_miss, args.review_share
    )
    fields = card.model_dump(mode="json", exclude_none=True)
    fields.pop("sha256", None)
    fields["thresholds"] = tuned["thresholds"]
    fields.setdefault("training", {})["threshold_tuning"] = {
        k: v for k, v in tuned.items() if k != "thresholds"
    }
    cards.write_card(args.model, **fields)
    print(tuned["thresholds"])
    for key, why in tuned["rationale"].items():
        print(f"  {key}: {why}")
    return 0
