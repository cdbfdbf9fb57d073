"""Re-tune a classifier's thresholds on its validation split and write them into its card.

    python scripts/tune_thresholds.py models/neu-cls-int8.onnx --manifest models/neu-cls-split.json \
        [--critical crack,hole --max-miss 0.05 --review-share 0.05]

Runs the served model (the service's own loader and preprocessing) over the validation images,
so the thresholds fit the exact file that will be deployed (e.g. after quantisation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.inference.card import card_path_for, load_card
from service.inference.model import load_model
from training import cards, thresholds
from training.dataset import Manifest, read_image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", type=Path)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--critical", default="", help="comma-separated critical defect classes")
    p.add_argument("--max-miss", type=float, default=0.05)
    p.add_argument("--review-share", type=float, default=0.05)
    args = p.parse_args(argv)
    try:
        model = load_model(args.model)
        card = load_card(card_path_for(args.model))
        val = Manifest.load(args.manifest).samples("val")
    except (FileNotFoundError, ValueError) as exc:
        print(f"tune_thresholds: error: {exc}", file=sys.stderr)
        return 2
    classes = list(model.spec.classes)
    results = model.predict([read_image(s.path) for s in val])  # type: ignore[misc]
    import numpy as np

    probs = np.stack([r.prediction.probabilities for r in results])
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


if __name__ == "__main__":
    raise SystemExit(main())
