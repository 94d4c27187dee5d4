"""Every installed CPU engine side by side on the shipped model: speed, where the time goes, and agreement.

    python benchmarks/engines.py                       # onnx, openvino (if installed), torch (if installed)
    python benchmarks/engines.py --engines onnx,openvino --repeats 3

For each engine: model-only images/s at batch 1, 16 and 32 (prepared arrays, after a warm-up); predict() with
preparation over corpus images; the whole CLI on a 200-image PDF and on one image (median of alternated runs,
start-up, import and compilation included); and against ONNX Runtime fp32, over the whole source-held-out test
split: the share of labels that agree and max |dp|. The CLI's stages on the PDF are timed one by one too, to
show what the model overlaps with.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from common import CORPUS, DEFAULT_MODEL, cli_seconds, corpus_sample, timed, upscaled_jpeg, write_pdf

import engine
import extract
import final_classification_script as cli
import panels
import pipeline
from heldout_eval import test_split


def model_speed(net: engine.Engine, arrays: np.ndarray, batch: int, repeats: int) -> float:
    """Images/s of net.run alone at one batch size, best of `repeats` passes (the first shape compiled first)."""
    net.run(arrays[:batch])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(arrays) - batch + 1, batch):
            net.run(arrays[i : i + batch])
        best = max(best, (len(arrays) // batch * batch) / (time.perf_counter() - start))
    return best


def where_time_goes(pdf: str, net: engine.Engine) -> None:
    """The CLI's stages on the 200-image PDF one after another, each alone on the machine: what the model overlaps
    with, and what is left when it is faster."""
    seconds = {}
    with timed(seconds, "extraction and decoding"):
        found = [
            i
            for i in extract.open_input(pdf, extract.Options(working_size=cli.working_size(net)))[1]
            if isinstance(i, extract.Found)
        ]
    with timed(seconds, "panel search"):
        boxes = [panels.find_panels(f.image, 32, f.width) for f in found]
    with timed(seconds, "image keys"):
        for f in found:
            pipeline.image_key(f.image)
    crops = [f.image.crop(box) for f, bs in zip(found, boxes) for box in bs]
    with timed(seconds, "preparation"):
        arrays = np.stack([engine.prepare(image, net.preprocess) for image in [f.image for f in found] + crops])
    with timed(seconds, "model (onnx)"):
        for i in range(0, len(arrays), 16):
            net.run(arrays[i : i + 16])
    total = sum(seconds.values())
    print(f"\nwhere the time goes, the 200-image PDF's stages one after another ({len(arrays)} model inputs):")
    for stage, s in seconds.items():
        print(f"  {stage:24s} {s:5.2f} s  {s / total:4.0%}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint with its ONNX twin (default: the shipped one)")
    p.add_argument("--engines", default="onnx,openvino,torch", help="those not installed are left out")
    p.add_argument("--images", type=int, default=200, help="corpus images for speed (default: 200)")
    p.add_argument("--repeats", type=int, default=3, help="passes per speed figure, and CLI runs (default: 3)")
    p.add_argument("--no-agreement", action="store_true", help="skip the test-split agreement (1,049 images)")
    args = p.parse_args(argv)
    names = [n for n in args.engines.split(",") if engine.installed({"onnx": "onnxruntime"}.get(n, n))]
    nets = {n: engine.open_engine(args.model, n, "cpu") for n in names}
    print(f"CPU: {os.cpu_count()} cores; engines: {', '.join(names)}")
    if "openvino" in nets:
        print(f"  openvino runs in {nets['openvino'].precision}")
    reference = nets.get("onnx") or engine.open_engine(args.model, "onnx", "cpu")
    images = [Image.open(path).convert("RGB") for path in corpus_sample(args.images)]
    arrays = np.stack([engine.prepare(image, reference.preprocess) for image in images])

    print(f"\nmodel alone, images/s (prepared arrays, best of {args.repeats}):")
    speed = {n: {b: model_speed(net, arrays, b, args.repeats) for b in (1, 16, 32)} for n, net in nets.items()}
    for n in names:
        print(f"  {n:9s} " + "  ".join(f"batch {b} {speed[n][b]:7.1f}" for b in (1, 16, 32)))

    print("\npredict() with preparation over the corpus images, images/s:")
    predict_rate = {}
    for n, net in nets.items():
        net.predict(images[:16])
        start = time.perf_counter()
        net.predict(images)
        predict_rate[n] = len(images) / (time.perf_counter() - start)
        print(f"  {n:9s} {predict_rate[n]:7.1f}")

    with tempfile.TemporaryDirectory() as folder:
        pdf = os.path.join(folder, "200.pdf")
        write_pdf(pdf, [upscaled_jpeg(path)[0] for path in corpus_sample(200)])
        one = os.path.join(folder, "one.png")
        images[0].save(one)
        where_time_goes(pdf, reference)
        runs = {n: {"pdf": [], "one": []} for n in names}
        for _ in range(args.repeats):  # alternated, so the machine's noise falls on every engine alike
            for n in names:
                runs[n]["pdf"].append(cli_seconds("--engine", n, "--model", args.model, pdf))
                runs[n]["one"].append(cli_seconds("--engine", n, "--model", args.model, one))
    print(f"\nthe whole CLI, median of {args.repeats} alternated runs:")
    base = {k: statistics.median(runs[names[0]][k]) for k in ("pdf", "one")}
    for n in names:
        pdf_s, one_s = (statistics.median(runs[n][k]) for k in ("pdf", "one"))
        print(
            f"  {n:9s} 200-image PDF {pdf_s:5.2f} s ({base['pdf'] / pdf_s:.2f}x {names[0]}'s speed)   "
            f"one image {one_s:5.2f} s ({one_s / base['one']:.2f}x {names[0]}'s time)"
        )

    if args.no_agreement:
        return
    test, _ = test_split(str(CORPUS), 0)
    prepared = []
    for path in test.images:
        with Image.open(path) as image:
            prepared.append(engine.prepare(engine.to_rgb(image), reference.preprocess))
    prepared = np.stack(prepared)
    p_ref = np.concatenate(
        [reference.run(prepared[i : i + 16])[:, engine.MEDICAL] for i in range(0, len(prepared), 16)]
    )
    print(f"\nagreement with ONNX Runtime fp32 over the source-held-out test split ({len(prepared)} images):")
    for n, net in nets.items():
        p = np.array([q for i in range(0, len(prepared), 16) for q in net._run_batch(list(prepared[i : i + 16]), 16)])
        dp = np.abs(p - p_ref)
        same = np.mean((p >= reference.threshold) == (p_ref >= reference.threshold))
        print(
            f"  {n:9s} labels agree {same:.4f}; max |dp| {dp.max():.4f}, 99th percentile {np.percentile(dp, 99):.4f}, "
            f"over 0.02: {int((dp > 0.02).sum())}"
        )


if __name__ == "__main__":
    main()
