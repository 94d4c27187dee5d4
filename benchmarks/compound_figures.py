"""Compound figures read panel by panel (panels.py), measured on mosaics built from source-held-out test images only.

Three kinds of mosaic, as papers lay them out (grids and strips, white or black gutters of varying width, panel
letters, a caption band): one medical panel among non-medical ones (medical), all non-medical (must stay
non-medical), all medical. Each is reduced to the CLI's working size first, as extraction does. Rules compared:
the whole image alone, a panel by the model's threshold as it is, a panel's 1 - p times the number of panels
(Bonferroni), and the shipped rule (times its square root). Then the test split's single images (split or not, accuracy with and without panels), and the
cost on a 200-image PDF through the whole CLI (`--whole-images` against the default, alternated).

    python benchmarks/compound_figures.py [--model best_model.pth] [--mosaics 60]
"""

import argparse
import random
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from common import ROOT, cli_seconds, corpus_sample, upscaled_jpeg, write_pdf

import dataset
import engine
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
    width, height = cols * cell + (cols + 1) * gutter, rows * cell + (rows + 1) * gutter + (60 if caption else 0)
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for n, path in enumerate(paths):
        with Image.open(path) as image:
            panel = engine.to_rgb(image).copy()
        panel.thumbnail((cell, cell))
        r, c = divmod(n, cols)
        x, y = gutter + c * (cell + gutter), gutter + r * (cell + gutter)
        canvas.paste(panel, (x + (cell - panel.width) // 2, y + (cell - panel.height) // 2))
        if rng.random() < 0.5:
            draw.text((x + 4, y + 2), "ABCDEFGHI"[n], fill=(255, 255, 0))
    if caption:
        text = (0, 0, 0) if background == (255, 255, 255) else (255, 255, 255)
        draw.text((gutter, height - 50), "Figure 2. Representative cases; arrows mark the findings.", fill=text)
        draw.text((gutter, height - 30), "(A-C) axial views; scale bars 10 mm.", fill=text)
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
    return {
        "whole image": p_whole >= threshold,
        "panel at the threshold": max([p_whole] + panel_ps) >= threshold,
        "panel, 1 - p times panels (Bonferroni)": max([p_whole] + [1 - len(panel_ps) * (1 - q) for q in panel_ps])
        >= threshold,
        "panel, 1 - p times sqrt(panels) (shipped)": panels.combine(p_whole, panel_ps) >= threshold,
    }


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
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--runs", type=int, default=3, help="CLI runs of each kind on the PDF (default: %(default)s)")
    args = p.parse_args(argv)
    model = engine.open_engine(args.model, "onnx", "cpu")
    t = model.threshold
    test, _ = test_split(str(ROOT.parent / "shared" / "corpus"), args.seed)
    built = build(test, args.mosaics, args.seed)
    base = max(model.preprocess["resize"], model.preprocess["crop"])
    for working_size in (base, 2 * base):
        results = classify(model, [m for m, *_ in built], working_size)
        print(f"mosaics at working size {working_size} (threshold {t:.3f}):")
        for what, label in (("one medical among non-medical", 1), ("all non-medical", 0), ("all medical", 1)):
            chosen = [(r, b) for r, b in zip(results, built) if b[2] == what]
            right_count = np.mean([r[2] == b[3] for r, b in chosen])
            line = [f"  {what} (n={len(chosen)}): split into the laid-out panels {right_count:.2f}"]
            for rule in rules(0.5, [], t):
                called = np.mean([rules(r[0], r[1], t)[rule] for r, _ in chosen])
                line.append(
                    f"{rule}: called {'medical' if label else 'non-medical'} {called if label else 1 - called:.3f}"
                )
            print("; ".join(line))
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
