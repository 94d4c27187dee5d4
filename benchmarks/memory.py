"""Peak memory of the CLI classifying a 500-image PDF (target: under 2 GB).

    python benchmarks/memory.py --images 500 --scale 5

The images are corpus images scaled up (about 1,300-1,600 px a side) so that
holding them all decoded at once would need several GB; the CLI runs in a
child process and its peak resident set size is read from the kernel.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

from PIL import Image

from common import ROOT, corpus_sample, upscaled_jpeg, write_pdf


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--scale", type=int, default=5, help="upscale factor of the corpus images")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "500.pdf")
        sizes = []

        def jpegs():
            for source in corpus_sample(args.images):
                data, size = upscaled_jpeg(source, args.scale, quality=80)
                sizes.append(size)
                yield data

        write_pdf(path, jpegs())
        full_bytes = sum(w * h * 3 for w, h in sizes)
        size = os.path.getsize(path)
        one = os.path.join(folder, "one.png")
        Image.open(corpus_sample(1)[0]).save(one)
        baseline, _ = peak_memory([one], folder)
        peak, elapsed = peak_memory(["--max-images", str(args.images), path], folder)
    print(
        f"PDF of {args.images} images, {size / 1e6:.0f} MB on disk, {full_bytes / 1e9:.2f} GB if all were held decoded"
    )
    print(f"  CLI peak resident memory, 1 small image (torch, model): {baseline / 1e9:.2f} GB")
    print(f"  CLI peak resident memory, the {args.images}-image PDF:        {peak / 1e9:.2f} GB  ({elapsed:.0f} s)")
    print(
        f"  added by the PDF: {(peak - baseline) / 1e9:.2f} GB, {(peak - baseline) / full_bytes:.2f} of holding every image decoded"
    )


def peak_memory(cli_args: list, folder: str) -> tuple[int, float]:
    """Peak RSS in bytes of one CLI run in a child process (a fresh child: ru_maxrss is per process)."""
    code = (
        "import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(json.dumps([r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            sys.executable,
            str(ROOT / "final_classification_script.py"),
            "--quiet",
            "--json",
            "-o",
            os.path.join(folder, "out.json"),
        ]
        + cli_args,
        capture_output=True,
        text=True,
        check=True,
    )
    returncode, max_rss_kb = __import__("json").loads(out.stdout)
    assert returncode == 0
    return max_rss_kb * 1024, time.perf_counter() - start


if __name__ == "__main__":
    main()
