"""End-to-end classification of a 200-image PDF and a 200-image page (127.0.0.1, 50 ms per response),
against the same work done the way the reference did it: images fetched one after another and
classified one at a time. Same model, same images, side by side in one run.

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

import extract
import final_classification_script as cli
import model


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
    options = extract.Options(workers=args.workers)
    cli_args = argparse.Namespace(batch_size=args.batch_size, save_dir=None, report=None)

    class NoBar:
        def update(self, n):
            pass

    result = cli.classify_input(text, 0, net, options, cli_args, NoBar())
    assert result.error is None, result.error
    return [im["p_medical"] for im in result.images]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every HTTP response")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    args = p.parse_args()
    net = model.load_model(args.model, "cpu")
    images = [upscaled_jpeg(x)[0] for x in corpus_sample(args.images)]
    files = {f"/img/{i}.jpg": (data, "image/jpeg") for i, data in enumerate(images)}
    files["/page.html"] = ("".join(f'<p>figure {i}</p><img src="img/{i}.jpg">' for i in range(len(images)))
                           .encode(), "text/html")
    httpd, base = serve(files, args.latency)
    times = {}
    with tempfile.TemporaryDirectory() as folder:
        pdf_path = os.path.join(folder, "200.pdf")
        write_pdf(pdf_path, images)
        net.predict([Image.open(io.BytesIO(images[0]))])  # warm-up, kept out of both
        with timed(times, "pdf_reference"):
            ref_pdf = reference_pdf(pdf_path, net)
        with timed(times, "pdf_ours"):
            our_pdf = ours(pdf_path, net, args)
        with timed(times, "page_reference"):
            ref_page = reference_page(base + "/page.html", net)
        with timed(times, "page_ours"):
            our_page = ours(base + "/page.html", net, args)
    httpd.shutdown()
    assert len(ref_pdf) == len(our_pdf) == len(ref_page) == len(our_page) == len(images)
    agree = sum((a >= net.threshold) == (b >= net.threshold) for a, b in zip(ref_page, our_page)) / len(images)
    print(f"{len(images)} images, model {net.arch} on CPU ({__import__('torch').get_num_threads()} threads), "
          f"latency {args.latency * 1000:.0f} ms per response, batch {args.batch_size}, {args.workers} download workers")
    for what in ("pdf", "page"):
        ref, our = times[f"{what}_reference"], times[f"{what}_ours"]
        print(f"  {what:4s}: reference {ref:6.1f} s ({len(images) / ref:5.1f} img/s)   ours {our:6.1f} s "
              f"({len(images) / our:5.1f} img/s)   ratio {ref / our:.2f}x")
    print(f"  labels agree between the two ways on {agree:.1%} of the page images")


if __name__ == "__main__":
    sys.exit(main())
