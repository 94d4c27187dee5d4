"""Source-held-out cross-validation of a training recipe: train.py once per fold, then the figures' mean and spread.

    python benchmarks/source_cv.py --folds 3 --out runs/cv-last2 -- \\
        --data folder:../shared/corpus --arch efficientnet_lite0 --finetune last-2 --head-hidden 256 --views 3 \\
        --epochs 3 --schedule onecycle --label-smoothing 0.1 --kind-weight-power 0.5

Each fold validates on sources (packages, GitHub owners) that its training never saw; the test split's sources
are left out of every fold, so they stay unseen until the chosen model is tested once. A fold already done
(its checkpoint exists) is read, not retrained, so the script can be stopped and started again; a stopped fold
carries on from its last whole epoch. Writes OUT/cv.json, which `train.py --cv-summary` stores in a checkpoint
(and whose median threshold the final model, `--train-on train+val`, takes).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from common import ROOT

from atomic import replace_file  # noqa: E402 (common puts the repository on the path)

FIGURES = (
    "val_balanced_accuracy",
    "val_accuracy",
    "val_auroc",
    "val_kind_macro_accuracy",
    "val_recall_medical",
    "val_recall_non_medical",
)


def fold_figures(checkpoint: str) -> dict:
    import torch

    raw = torch.load(checkpoint, weights_only=True)
    metrics = raw["training"]["metrics"]
    return {k: metrics[k] for k in FIGURES if k in metrics} | {
        "val_per_kind": metrics.get("val_per_kind", {}),
        "threshold": raw["threshold"],
        "best_epoch": metrics.get("best_epoch"),
    }


def summarize(folds: list[dict]) -> dict:
    """Mean and spread (population std) of every figure over the folds, and the worst fold; the median of the
    folds' thresholds, each chosen on sources its fold never trained on, is the one `train.py --train-on train+val
    --cv-summary` gives the final model."""
    out = {"folds": folds}
    thresholds = [f["threshold"] for f in folds if "threshold" in f]
    if thresholds:
        out["threshold_median"] = float(np.median(thresholds))
    for key in FIGURES:
        values = np.array([f[key] for f in folds if key in f], dtype=float)
        if len(values):
            out[f"{key}_mean"], out[f"{key}_std"], out[f"{key}_min"] = (
                float(np.nanmean(values)),
                float(np.nanstd(values)),
                float(np.nanmin(values)),
            )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=3, help="source-held-out folds (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for the folds' checkpoints and cv.json")
    p.add_argument("recipe", nargs=argparse.REMAINDER, help="train.py's options, after --")
    args = p.parse_args()
    recipe = [a for a in args.recipe if a != "--"] if args.recipe[:1] == ["--"] else args.recipe
    folds = []
    for fold in range(args.folds):
        folder = os.path.join(args.out, f"fold-{fold}")
        checkpoint, state = os.path.join(folder, "best_model.pth"), os.path.join(folder, "training_state.pt")
        if not os.path.isfile(checkpoint):
            command = [
                sys.executable,
                str(ROOT / "train.py"),
                *recipe,
                "--split-by",
                "source",
                "--folds",
                str(args.folds),
                "--fold",
                str(fold),
                "--output",
                checkpoint,
            ]
            if os.path.isfile(state):
                command += ["--resume-training", state]
            print("fold", fold, ":", " ".join(command), flush=True)
            code = subprocess.call(command)
            if code:
                sys.exit(f"fold {fold}: train.py ended with exit status {code}")
        folds.append({"fold": fold, **fold_figures(checkpoint)})
        print(f"fold {fold}: " + ", ".join(f"{k} {folds[-1][k]:.4f}" for k in FIGURES if k in folds[-1]), flush=True)
    summary = summarize(folds)
    summary["recipe"] = recipe
    replace_file(os.path.join(args.out, "cv.json"), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    for key in FIGURES:
        if f"{key}_mean" in summary:
            print(
                f"{key}: mean {summary[key + '_mean']:.4f}, std {summary[key + '_std']:.4f}, "
                f"worst fold {summary[key + '_min']:.4f}"
            )
    if "threshold_median" in summary:
        print(
            f"threshold: median {summary['threshold_median']:.3f} of the folds' "
            + ", ".join(f"{f['threshold']:.3f}" for f in folds)
        )
    print(f"wrote {os.path.join(args.out, 'cv.json')}")


if __name__ == "__main__":
    main()
