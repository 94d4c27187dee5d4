"""Classify every image in web pages, PDFs, image files or folders as medical or non-medical.

    python final_classification_script.py https://example.org/article paper.pdf scans/

Results go to stdout (a table, --json or --csv), progress to stderr. Exit status:
0 when every input was processed, 1 when any input failed, 2 for bad arguments.
"""
import argparse
import json
import os
import re
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

import engine
import extract
import report

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "best_model.pth")


@dataclass
class InputResult:
    input: str
    kind: str | None = None
    error: str | None = None
    images: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    thumbnails: list = field(default_factory=list)  # for --report only, never in JSON


def _page_ranges(text: str):
    import pdfs

    try:
        return pdfs.parse_pages(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_extraction_arguments(p: argparse.ArgumentParser):
    """How inputs are read; sweep_ray.py takes the same options."""
    p.add_argument("--min-size", type=int, default=32, help="skip images with a side under this (default: %(default)s px)")
    p.add_argument("--max-images", type=int, default=500, help="at most this many images per input (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds allowed for each download (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="concurrent image downloads per page (default: %(default)s)")
    p.add_argument("--pages", type=_page_ranges, metavar="RANGES",
                   help="PDF pages to read, 1-based: 3-10, 1,4,7- (default: all)")
    p.add_argument("--password", help="tried on an encrypted PDF the empty password does not open (never printed)")
    p.add_argument("--all-frames", action="store_true",
                   help="classify every frame of a multi-frame DICOM (default: its middle frame)")


def check_arguments(p: argparse.ArgumentParser, args):
    """The ranges argparse cannot check, for this CLI and sweep_ray.py."""
    if getattr(args, "threshold", None) is not None and not 0.0 <= args.threshold <= 1.0:
        p.error("--threshold must be between 0 and 1")
    for name in ("min_size", "max_images", "batch_size", "workers"):
        if getattr(args, name, None) is not None and getattr(args, name) < (0 if name == "min_size" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.timeout <= 0:
        p.error("--timeout must be positive")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="http(s) URL of a page, PDF or image; a PDF or image path; or a folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint to use (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--csv", action="store_true", help="print CSV, one row per image or skipped image")
    p.add_argument("-o", "--output", help="write the results to this file instead of stdout")
    p.add_argument("--save-dir", help="write every extracted image into this folder")
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML page of thumbnails")
    p.add_argument("--threshold", type=float, help="p_medical at or above which an image is medical "
                                                   "(default: the model's, chosen on validation data)")
    add_extraction_arguments(p)
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                   help="auto: ONNX Runtime on the CPU, torch on CUDA/MPS (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per model batch (default: 16 on the CPU, 128 on CUDA)")
    p.add_argument("--backbone-weights", help="local file of the backbone's ImageNet weights, for offline machines")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    check_arguments(p, args)
    return args


# ---------------------------------------------------------------- classification

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.split("?")[0].rstrip("/").split("/")[-1])[-60:] or "input"


def save_name(found: extract.Found) -> str:
    """The input's stem, then page, image index and frame where they apply: paper_p003_i02, scan_f004."""
    stem = os.path.splitext(_slug(found.source.split("#")[0]))[0] or "image"
    if "#data-uri-" in found.source:
        stem += "_data" + found.source.rsplit("-", 1)[1]
    parts = [stem] + [f"{tag}{value:0{width}d}" for tag, value, width in
                      (("p", found.page, 3), ("i", found.index, 2), ("f", found.frame, 3)) if value is not None]
    return "_".join(parts)


def _save(found: extract.Found, save_dir: str) -> str:
    os.makedirs(save_dir, exist_ok=True)
    name, ext, n = save_name(found), found.ext if found.encoded is not None else "png", 1
    path = os.path.join(save_dir, f"{name}.{ext}")
    while os.path.exists(path):  # the same name from another input or folder
        n += 1
        path = os.path.join(save_dir, f"{name}-{n}.{ext}")
    if found.encoded is not None:
        with open(path, "wb") as f:
            f.write(found.encoded)
    else:
        found.image.save(path)
    return os.path.abspath(path)


def extract_options(args, model: engine.Engine) -> extract.Options:
    """Decoded images are kept only as large as the model needs (its resize), never at full resolution."""
    return extract.Options(min_size=args.min_size, max_images=args.max_images, timeout=args.timeout,
                           workers=args.workers, keep_encoded=bool(args.save_dir), pages=args.pages,
                           password=args.password, all_frames=args.all_frames,
                           working_size=max(model.preprocess["resize"], model.preprocess["crop"]))


def classify_input(text: str, model: engine.Engine, options: extract.Options, args, bar,
                   model_thread: ThreadPoolExecutor) -> InputResult:
    """Extract and classify one input in batches, so full-size images never pile up.

    Each batch goes to the model thread while extraction of the next goes on here; at most
    two batches wait, and results are recorded in the order the images were found.
    """
    result = InputResult(text)
    batch: list[extract.Found] = []
    pending: deque = deque()

    def record(found: extract.Found, p: float):
        saved = None
        if args.save_dir:
            saved = _save(found, args.save_dir)
        result.images.append(report.image_record(found, p, model.label(p), saved))
        if args.report:
            result.thumbnails.append(report.thumbnail(found.image))

    def collect(keep: int):
        while len(pending) > keep:
            found, future = pending.popleft()
            for item, p in zip(found, future.result()):
                record(item, p)
            bar.update(len(found))

    def submit():
        if batch:
            pending.append((list(batch), model_thread.submit(model.predict, [f.image for f in batch],
                                                             args.batch_size)))
            batch.clear()
        collect(keep=2)

    try:
        result.kind, items = extract.open_input(text, options)
        for item in items:
            if isinstance(item, extract.Skipped):
                result.skipped.append(report.skipped_record(item))
                continue
            batch.append(item)
            if len(batch) >= (args.batch_size or model.default_batch_size):
                submit()
        submit()
        collect(keep=0)
    except extract.InputError as exc:
        submit()
        collect(keep=0)
        result.error = str(exc)
    except Exception as exc:  # never lose the other inputs' results to one bad file
        batch.clear()
        try:
            collect(keep=0)
        except Exception:
            pending.clear()
        result.error = f"unexpected {type(exc).__name__}: {extract.first_line(exc)}"
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    note = lambda message: print(f"note: {message}", file=sys.stderr)
    try:
        model = engine.open_engine(args.model, args.engine, args.device, args.backbone_weights, note)
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threshold is not None:
        model.threshold = args.threshold
    options = extract_options(args, model)
    results = []
    with tqdm(desc="images", unit="img", file=sys.stderr, disable=args.quiet) as bar, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as model_thread:
        for text in args.inputs:
            bar.set_postfix_str(report.shorten(text, 40))
            result = classify_input(text, model, options, args, bar, model_thread)
            if result.error and not args.quiet:
                tqdm.write(f"error: {text}: {result.error}", file=sys.stderr)
            results.append(result)
    entries = [report.input_record(r.input, r.kind, r.error, r.images, r.skipped) for r in results]
    document = report.to_json(entries, report.model_record(model, os.path.abspath(args.model)))
    text = (json.dumps(document, indent=2) + "\n" if args.json else report.to_csv(document) if args.csv
            else report.to_table(document))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(report.to_html(document, [r.thumbnails for r in results]))
    return 1 if document["summary"]["failed_inputs"] else 0


if __name__ == "__main__":
    sys.exit(main())
