"""Compound figures read panel by panel (panels.py), measured on mosaics built from source-held-out test images only.

Three kinds of mosaic, as papers lay them out (grids and strips, white or black gutters of varying width, panel
letters, a caption band): one medical panel among non-medical ones (medical), all non-medical (must stay
non-medical), all medical. Each is reduced to the CLI's working size first, as extraction does. Rules compared:
the whole image alone, any view by the model's threshold as it is, and three corrections for the number of
views (1 - p times its square root): panels only (shipped), the whole view apart at the plain threshold, and every
view corrected alike (the rule before). `--cv runs/cv` measures them on validation mosaics instead, each fold's
model on its own held-out sources: the rule is chosen there, and the test split is looked at once. Then the test
split's single images (split or not, accuracy with and without panels), and the cost on a 200-image PDF through
the whole CLI (`--whole-images` against the default, alternated).

    python benchmarks/compound_figures.py [--model best_model.pth] [--mosaics 60]
    python benchmarks/compound_figures.py --cv runs/cv --mosaics 100
"""

import argparse
import os
import random
import re
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from common import CORPUS, ROOT, cli_seconds, corpus_sample, upscaled_jpeg, write_pdf

import dataset
import engine
import final_classification_script as cli
import images
import panels
import train
from heldout_eval import test_split

LAYOUTS = [(2, 2), (3, 3), (1, 3), (1, 6), (2, 3), (3, 2), (1, 2), (2, 1)]


def mosaic(paths: list, rows: int, cols: int, rng: random.Random) -> Image.Image:
    cell = rng.choice([160, 200, 256])
    gutter = rng.choice([4, 6, 10, 16])
    background = (0, 0, 0) if rng.random() < 0.2 else (255, 255, 255)
    caption = rng.random() < 0.3
    pictures = []
    for path in paths:
        with Image.open(path) as image:
            pictures.append(engine.to_rgb(image).copy())
    grid, boxes = train.lay_out(pictures, rows, cols, cell, gutter, background)
    canvas = Image.new("RGB", (grid.width, grid.height + (60 if caption else 0)), background)
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, (x, y, _, _) in enumerate(boxes):
        if rng.random() < 0.5:
            draw.text((x + 4, y + 2), "ABCDEFGHI"[n], fill=(255, 255, 0))
    if caption:
        text = (0, 0, 0) if background == (255, 255, 255) else (255, 255, 255)
        draw.text((gutter, canvas.height - 50), "Figure 2. Representative cases; arrows mark the findings.", fill=text)
        draw.text((gutter, canvas.height - 30), "(A-C) axial views; scale bars 10 mm.", fill=text)
    return canvas


def build(test, n: int, seed: int) -> list[tuple[Image.Image, int, str, int]]:
    """(mosaic, label, what, panels laid out) for n mosaics of each kind."""
    rng = random.Random(seed)
    medical = [p for p, y in zip(test.images, test.labels) if y == dataset.MEDICAL]
    non_medical = [p for p, y in zip(test.images, test.labels) if y == dataset.NON_MEDICAL]
    out = []
    for what, label in (("one medical among non-medical", 1), ("all non-medical", 0), ("all medical", 1)):
        for _ in range(n):
            rows, cols = rng.choice(LAYOUTS)
            k = rows * cols
            if what == "all medical":
                chosen = rng.sample(medical, k)
            elif what == "all non-medical":
                chosen = rng.sample(non_medical, k)
            else:
                chosen = rng.sample(non_medical, k - 1)
                chosen.insert(rng.randrange(k), rng.choice(medical))
            out.append((mosaic(chosen, rows, cols, rng), label, what, k))
    return out


def rules(p_whole: float, panel_ps: list[float], threshold: float) -> dict:
    sqrt_panels = [1 - len(panel_ps) ** 0.5 * (1 - q) for q in panel_ps]
    return {
        "whole image": p_whole >= threshold,
        "any view at the threshold": max([p_whole] + panel_ps) >= threshold,
        "panels only, 1 - p times sqrt(panels) (shipped)": panels.combine(p_whole, panel_ps) >= threshold,
        "whole apart, panels 1 - p times sqrt(panels)": max([p_whole] + sqrt_panels) >= threshold,
        "every view 1 - p times sqrt(views) (before)": (
            1 - (len(panel_ps) + 1) ** 0.5 * (1 - max([p_whole] + panel_ps)) if panel_ps else p_whole
        )
        >= threshold,
    }


KINDS = (("one medical among non-medical", 1), ("all non-medical", 0), ("all medical", 1))
AMONG_4_TO_9 = "  of them, among 4-9 panels (the issue's measure)"
REPORTED = KINDS[:1] + ((AMONG_4_TO_9, 1),) + KINDS[1:]


def mosaic_rates(model, part, n: int, seed: int, working_size: int) -> tuple[dict, dict]:
    """{(kind, rule): share of mosaics called right} and {kind: share split into the laid-out panels}; one medical
    panel is also reported among 4 to 9 panels alone (2 and 3 are easier: their bar is lower)."""
    built = build(part, n, seed)
    results = classify(model, [m for m, *_ in built], working_size)
    rates, split = {}, {}
    for what, label in REPORTED:
        chosen = [
            (r, b)
            for r, b in zip(results, built)
            if b[2] == what or (what == AMONG_4_TO_9 and b[2] == KINDS[0][0] and 4 <= b[3] <= 9)
        ]
        if not chosen:  # no mosaic of 4-9 panels among a few
            continue
        split[what] = (float(np.mean([r[2] == b[3] for r, b in chosen])), len(chosen))
        for rule in rules(0.5, [], model.threshold):
            called = np.mean([rules(r[0], r[1], model.threshold)[rule] for r, _ in chosen])
            rates[what, rule] = float(called if label else 1 - called)
    return rates, split


def print_rates(rates: dict, split: dict | None = None) -> None:
    for what, label in REPORTED:
        if not any(w == what for w, _ in rates):
            continue
        head = f"  {what}" + (
            f" (n={split[what][1]}): split into the laid-out panels {split[what][0]:.2f}" if split else ""
        )
        called = "medical" if label else "non-medical"
        print(head + "".join(f"; {rule}: called {called} {rates[what, rule]:.3f}" for w, rule in rates if w == what))


def cross_validated(cv_dir: str, n: int, split_seed: int) -> None:
    """The rules on validation mosaics: each fold's model (benchmarks/source_cv.py) on mosaics of its own
    validation sources, at its own threshold; where a rule is chosen, before the test split is looked at."""
    folds = sorted(int(d.split("-", 1)[1]) for d in os.listdir(cv_dir) if re.fullmatch(r"fold-\d+", d))
    per_fold = []
    for fold in folds:
        model = engine.open_engine(os.path.join(cv_dir, f"fold-{fold}", "best_model.pth"), "onnx", "cpu")
        part = dataset.folder_source(str(CORPUS), seed=split_seed, split_by="source", folds=len(folds), fold=fold)
        val = part.subset(np.flatnonzero(part.splits == "val"))
        rates, _ = mosaic_rates(model, val, n, fold, cli.working_size(model))
        per_fold.append(rates)
        print(f"fold {fold} (threshold {model.threshold:.3f}, {len(val.images)} validation images):")
        print_rates(rates)
    print(f"mean over the {len(folds)} folds:")
    keys = {key for rates in per_fold for key in rates}
    print_rates({key: float(np.mean([r[key] for r in per_fold if key in r])) for key in keys})


def classify(model, pictures: list, working_size: int, min_size: int = 32):
    reduced = [images.reduce(p, working_size) for p in pictures]
    boxes = [panels.find_panels(r, min_size, p.width) for r, p in zip(reduced, pictures)]
    return [
        (figure.whole, [q for _, q in figure.panels], len(b))
        for b, figure in zip(boxes, panels.predict_figures(model, reduced, boxes))
    ]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "best_model.pth"), help="checkpoint (default: %(default)s)")
    p.add_argument("--mosaics", type=int, default=60, help="mosaics of each kind (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="the mosaics' and the split's (train.py --seed) (default: %(default)s)"
    )
    p.add_argument("--runs", type=int, default=3, help="CLI runs of each kind on the PDF (default: %(default)s)")
    p.add_argument("--cv", help="source_cv.py's folder: measure the rules on each fold's validation mosaics instead")
    args = p.parse_args(argv)
    if args.cv:
        cross_validated(args.cv, args.mosaics, args.seed)
        return
    model = engine.open_engine(args.model, "onnx", "cpu")
    t = model.threshold
    test, _ = test_split(str(CORPUS), args.seed)
    base = cli.working_size(model, whole_images=True)
    for working_size in (base, cli.working_size(model)):
        print(f"mosaics at working size {working_size} (threshold {t:.3f}):")
        print_rates(*mosaic_rates(model, test, args.mosaics, args.seed, working_size))
    pictures = []
    for path in test.images:
        with Image.open(path) as image:
            pictures.append(engine.to_rgb(image).copy())
    singles = classify(model, pictures, base)
    split = np.array([n > 0 for _, _, n in singles])
    print(
        f"test split singles: {int(split.sum())} of {len(singles)} split "
        f"({int(split[test.labels == dataset.MEDICAL].sum())} medical, "
        f"{int(split[test.labels == dataset.NON_MEDICAL].sum())} non-medical)"
    )
    whole = np.array([p for p, _, _ in singles])
    combined = np.array([panels.combine(p, ps) for p, ps, _ in singles])
    for name, ps in (("whole image", whole), ("with panels", combined)):
        print(
            f"  {name}: balanced accuracy {train.balanced_accuracy(ps, test.labels, t):.4f}; "
            f"on the {int(split.sum())} split ones {train.balanced_accuracy(ps[split], test.labels[split], t):.4f}"
        )
    with tempfile.TemporaryDirectory() as folder:
        pdf = f"{folder}/200.pdf"  # the same PDF as end_to_end.py's
        write_pdf(pdf, [upscaled_jpeg(x)[0] for x in corpus_sample(200)])
        times = {"whole": [], "panels": []}
        for _ in range(args.runs):
            times["whole"].append(cli_seconds(pdf, "--json", "--model", args.model, "--whole-images"))
            times["panels"].append(cli_seconds(pdf, "--json", "--model", args.model))
        whole_s, panels_s = np.median(times["whole"]), np.median(times["panels"])
        print(
            f"200-image PDF through the CLI, median of {args.runs} alternated runs: --whole-images {whole_s:.1f} s, "
            f"panels {panels_s:.1f} s: {panels_s / whole_s:.2f}x"
        )


if __name__ == "__main__":
    main()
