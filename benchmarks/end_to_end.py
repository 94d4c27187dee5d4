"""End-to-end classification of a 200-image PDF and a 200-image page (127.0.0.1, 50 ms per response),
against the same work done the way the reference did it: images fetched one after another and
classified one at a time on torch. Also the classification stage alone (decode + prepare + model over
the same 200 images) on each engine. Side by side in one run.

    python benchmarks/end_to_end.py --images 200 --latency 0.05
"""

import argparse
import io
import os
import sys
import tempfile

import pymupdf
import requests
from PIL import Image

from common import DEFAULT_MODEL, corpus_sample, serve, timed, upscaled_jpeg, write_pdf

import engine
import extract
import final_classification_script as cli
import pipeline


def reference_page(url: str, net) -> list[float]:
    """Fetch the page, then each <img> in turn, and classify each image alone."""
    from bs4 import BeautifulSoup

    html = requests.get(url, timeout=20).text
    out = []
    for img in BeautifulSoup(html, "html.parser").find_all("img"):
        data = requests.get(requests.compat.urljoin(url, img["src"]), timeout=20).content
        out += net.predict([Image.open(io.BytesIO(data)).convert("RGB")], batch_size=1)
    return out


def reference_pdf(path: str, net) -> list[float]:
    """Each page's images extracted in turn and classified alone."""
    doc = pymupdf.open(path)
    out = []
    for page in doc:
        for item in page.get_images(full=True):
            data = doc.extract_image(item[0])["image"]
            out += net.predict([Image.open(io.BytesIO(data)).convert("RGB")], batch_size=1)
    return out


def ours(text: str, net, args) -> list[float]:
    """The CLI's own run for one input: extraction overlapping the model thread, batched."""
    run = pipeline.Run(net, cli.extract_options(args, net), jobs=1, batch_size=args.batch_size)
    events = list(run.results([text]))
    run.close()
    assert events[-1][1].error is None, events[-1][1].error
    return [event[3] for event in events if event[0] == "image"]


def classification_stage(jpegs: list, net, args, working_size: int | None = None) -> list[float]:
    """Decode + prepare + model over encoded images already in memory, as the CLI decodes them.

    working_size 1024 decodes as the CLI did before the engines issue (JPEG draft to 1024 px, not to the model's size).
    """
    options = cli.extract_options(args, net)
    options.working_size = working_size or options.working_size
    found = [next(extract.decode_images(data, f"{i}.jpg", options)) for i, data in enumerate(jpegs)]
    return net.predict([f.image for f in found], batch_size=args.batch_size)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every HTTP response")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=8, help="download workers (the CLI's default)")
    args = p.parse_args()
    # every other extraction setting is the CLI's own default, read from its parser
    cli_args = cli.parse_args(["INPUT", "--workers", str(args.workers)])
    args.__dict__.update({k: v for k, v in vars(cli_args).items() if k not in vars(args)})
    nets = {name: engine.open_engine(args.model, name, "cpu") for name in ("onnx", "torch")}
    images = [upscaled_jpeg(x)[0] for x in corpus_sample(args.images)]
    files = {f"/img/{i}.jpg": (data, "image/jpeg") for i, data in enumerate(images)}
    files["/page.html"] = (
        "".join(f'<p>figure {i}</p><img src="img/{i}.jpg">' for i in range(len(images))).encode(),
        "text/html",
    )
    httpd, base = serve(files, args.latency)
    times, p = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        pdf_path = os.path.join(folder, "200.pdf")
        write_pdf(pdf_path, images)
        for net in nets.values():
            net.predict([Image.open(io.BytesIO(images[0]))])  # warm-up, kept out of every figure
        with timed(times, "stage_before"):
            p["stage_before"] = classification_stage(images, nets["torch"], args, working_size=1024)
        for name, net in nets.items():
            with timed(times, f"stage_{name}"):
                p[f"stage_{name}"] = classification_stage(images, net, args)
        with timed(times, "pdf_reference"):
            p["pdf_reference"] = reference_pdf(pdf_path, nets["torch"])
        for name, net in nets.items():
            with timed(times, f"pdf_{name}"):
                p[f"pdf_{name}"] = ours(pdf_path, net, args)
        with timed(times, "page_reference"):
            p["page_reference"] = reference_page(base + "/page.html", nets["torch"])
        for name, net in nets.items():
            with timed(times, f"page_{name}"):
                p[f"page_{name}"] = ours(base + "/page.html", net, args)
    httpd.shutdown()
    assert all(len(v) == len(images) for v in p.values()), {k: len(v) for k, v in p.items()}
    threshold = nets["onnx"].threshold
    agree = sum((a >= threshold) == (b >= threshold) for a, b in zip(p["page_reference"], p["page_onnx"]))
    print(
        f"{len(images)} upscaled corpus JPEGs, CPU ({os.cpu_count()} cores), latency {args.latency * 1000:.0f} ms "
        f"per response, batch {args.batch_size or 'default'}, {args.workers} download workers"
    )
    n = len(images)
    size = cli.extract_options(
        args, nets["onnx"]
    ).working_size  # the CLI's: twice the model's input unless --whole-images
    print("  classification stage (decode + prepare + model):")
    for key, what in (
        ("before", "torch, decoded at 1024 px as before"),
        ("torch", f"torch, decoded at {size} px"),
        ("onnx", f"onnx, decoded at {size} px"),
    ):
        print(
            f"    {what:36s} {times[f'stage_{key}']:5.1f} s ({n / times[f'stage_{key}']:6.1f} img/s)   "
            f"{times['stage_before'] / times[f'stage_{key}']:.2f}x the path before"
        )
    for what in ("pdf", "page"):
        ref = times[f"{what}_reference"]
        print(
            f"  {what:4s}: reference (one at a time, torch) {ref:5.1f} s ({n / ref:5.1f} img/s)   "
            + "   ".join(
                f"ours {name} {times[f'{what}_{name}']:5.1f} s ({n / times[f'{what}_{name}']:5.1f} img/s, "
                f"{ref / times[f'{what}_{name}']:.2f}x)"
                for name in nets
            )
        )
    print(
        f"  labels agree between the reference and ours (onnx) on {agree / n:.1%} of the page images; "
        f"max |p difference| {max(abs(a - b) for a, b in zip(p['page_reference'], p['page_onnx'])):.2e}"
    )


if __name__ == "__main__":
    sys.exit(main())
