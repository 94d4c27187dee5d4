"""Checkpoints side by side on the corpus's source-held-out test split, through the CLI's one predict path.

The split is train.py's default (`--split-by source`, seed 0): every test image comes from a source (package,
repository, or one owner's pipeline) that the training and validation splits never saw. Figures are also given
for the test images of corpus batch 4 alone (manifest rows after the first 5,816): a model trained before batch 4
existed never saw any of them, whatever split it used, so that subset is fair to old and new models alike.

    python benchmarks/heldout_eval.py best_model.pth runs/ship-cand/best_model.pth
"""

import argparse
import csv
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from common import CORPUS

import dataset
import engine
import train

BATCH4_FIRST_ROW = 5816  # manifest rows before batch 4 (corpus README)


def test_split(corpus: str, seed: int) -> tuple[dataset.Part, np.ndarray]:
    """The test part and, per image, whether it came in batch 4."""
    part = dataset.folder_source(corpus, seed=seed, split_by="source")
    with open(f"{corpus}/manifest.csv", newline="") as f:
        rows = {r["path"]: n for n, r in enumerate(csv.DictReader(f))}
    test = part.subset(np.flatnonzero(part.splits == "test"))
    batch4 = np.array([rows.get(str(p).split(f"{corpus}/", 1)[-1], 0) >= BATCH4_FIRST_ROW for p in test.images])
    return test, batch4


def probabilities(model: engine.Engine, paths, grey: bool = False) -> np.ndarray:
    out = []
    for start in tqdm(range(0, len(paths), 64), desc="grey" if grey else "colour", unit="batch", leave=False):
        images = []
        for path in paths[start : start + 64]:
            with Image.open(path) as image:
                image = engine.to_rgb(image)
                images.append(image.convert("L").convert("RGB") if grey else image.copy())
        out += model.predict(images)
    return np.array(out)


def figures(p: np.ndarray, p_grey: np.ndarray, part: dataset.Part, threshold: float) -> dict:
    figures = train.evaluate(p, part.labels, part.kinds, threshold)
    figures.update(
        train.grey_flips(
            [part],
            p,
            threshold,
            lambda chosen: np.concatenate([p_grey[[part.images.index(x) for x in c.images]] for c in chosen]),
        )
    )
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoints (.pth) to compare")
    p.add_argument("--corpus", default=str(CORPUS), help="the corpus folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed, as train.py's (default: %(default)s)")
    p.add_argument("--wrong", action="store_true", help="list each model's misclassified test images by kind, with p")
    args = p.parse_args(argv)
    test, batch4 = test_split(args.corpus, args.seed)
    print(
        f"source-held-out test split: {len(test)} images ({int(batch4.sum())} of batch 4), "
        f"{len(set(test.sources))} sources"
    )
    keys = (
        "balanced_accuracy",
        "accuracy",
        "auroc",
        "kind_macro_accuracy",
        "recall_medical",
        "recall_non_medical",
        "grey_flip_non_medical",
        "grey_flip_medical",
    )
    for path in args.models:
        model = engine.open_engine(path, "onnx", "cpu")
        p_colour, p_grey = probabilities(model, test.images), probabilities(model, test.images, grey=True)
        for name, mask in (("all test", np.ones(len(test), bool)), ("batch 4", batch4)):
            sub = test.subset(np.flatnonzero(mask))
            result = figures(p_colour[mask], p_grey[mask], sub, model.threshold)
            print(
                f"{path} [{name}, n={len(sub)}, threshold {model.threshold:.3f}]: "
                + ", ".join(f"{k} {result[k]:.4f}" for k in keys if k in result)
            )
        if args.wrong:
            print_wrong(test, p_colour, model.threshold)


def print_wrong(test: dataset.Part, p: np.ndarray, threshold: float) -> None:
    """The misclassified test images, grouped by kind: what to look at (a wrong label, or a real weakness)."""
    wrong = np.flatnonzero((p >= threshold) != (np.asarray(test.labels) == dataset.MEDICAL))
    for kind in sorted({test.kinds[i] for i in wrong}):
        rows = [i for i in wrong if test.kinds[i] == kind]
        print(
            f"  {kind} ({len(rows)} wrong): "
            + ", ".join(f"{os.path.basename(test.images[i])} {p[i]:.2f}" for i in rows)
        )


if __name__ == "__main__":
    main()
