"""Peak memory of the CLI classifying a 500-image PDF (target: under 2 GB).

    python benchmarks/memory.py --images 500 --scale 5

The images are corpus images scaled up (about 1,300-1,600 px a side) so that
holding them all decoded at once would need several GB; the CLI runs in a
child process and its peak resident set size is read from the kernel.
"""
import argparse
import io
import os
import subprocess
import sys
import tempfile
import time

import pymupdf
from PIL import Image

from common import ROOT, corpus_sample


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--scale", type=int, default=5, help="upscale factor of the corpus images")
    args = p.parse_args()
    full_bytes = 0
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "500.pdf")
        doc = pymupdf.open()
        for i, source in enumerate(corpus_sample(args.images)):
            with Image.open(source) as im:
                im = im.convert("RGB").resize((im.width * args.scale, im.height * args.scale))
                full_bytes += im.width * im.height * 3
                buffer = io.BytesIO()
                im.save(buffer, "JPEG", quality=80)
            if i % 4 == 0:
                page = doc.new_page()
            page.insert_image(pymupdf.Rect(40, 40 + 180 * (i % 4), 400, 210 + 180 * (i % 4)),
                              stream=buffer.getvalue())
        doc.save(path)
        size = os.path.getsize(path)
        doc.close()
        one = os.path.join(folder, "one.png")
        Image.open(corpus_sample(1)[0]).save(one)
        baseline, _ = peak_memory([one], folder)
        peak, elapsed = peak_memory(["--max-images", str(args.images), path], folder)
    print(f"PDF of {args.images} images, {size / 1e6:.0f} MB on disk, {full_bytes / 1e9:.2f} GB if all were held decoded")
    print(f"  CLI peak resident memory, 1 small image (torch, model): {baseline / 1e9:.2f} GB")
    print(f"  CLI peak resident memory, the {args.images}-image PDF:        {peak / 1e9:.2f} GB  ({elapsed:.0f} s)")
    print(f"  added by the PDF: {(peak - baseline) / 1e9:.2f} GB, {(peak - baseline) / full_bytes:.2f} of holding every image decoded")


def peak_memory(cli_args: list, folder: str) -> tuple[int, float]:
    """Peak RSS in bytes of one CLI run in a child process (a fresh child: ru_maxrss is per process)."""
    code = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True); "
            "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, sys.executable, str(ROOT / "final_classification_script.py"),
                          "--quiet", "--json", "-o", os.path.join(folder, "out.json")] + cli_args,
                         capture_output=True, text=True, check=True)
    returncode, max_rss_kb = __import__("json").loads(out.stdout)
    assert returncode == 0
    return max_rss_kb * 1024, time.perf_counter() - start


if __name__ == "__main__":
    main()
