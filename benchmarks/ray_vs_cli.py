"""The Ray sweep against the CLI on the same inputs: small PDFs and pages served on 127.0.0.1, corpus images.

Prints both throughputs (inputs/s and images/s), their ratio, inputs in and out, and whether every image got
the same label and p_medical (within 1e-4). Each runs as its own process, as a user runs it (Ray's
start-up included), while this process serves the pages; Ray's start-up alone is timed too.

    python benchmarks/ray_vs_cli.py --inputs 200
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DEFAULT_MODEL, ROOT, corpus_sample, serve, upscaled_jpeg, write_pdf


def build_inputs(folder: Path, n: int, per_input: int) -> tuple[list[str], object]:
    """n inputs, half PDFs on disk and half pages on a local server, `per_input` corpus images each."""
    images = [upscaled_jpeg(path)[0] for path in corpus_sample(n * per_input)]
    files, inputs = {}, []
    for i in range(n):
        chunk = [images[(i * per_input + k) % len(images)] for k in range(per_input)]
        if i % 2 == 0:
            path = folder / f"doc{i:03d}.pdf"
            write_pdf(str(path), chunk)
            inputs.append(str(path))
        else:
            tags = "".join(f'<img src="/img{i:03d}_{k}.jpg">' for k in range(per_input))
            files[f"/page{i:03d}.html"] = (f"<html><body>{tags}</body></html>".encode(), "text/html")
            files.update({f"/img{i:03d}_{k}.jpg": (data, "image/jpeg") for k, data in enumerate(chunk)})
            inputs.append(f"/page{i:03d}.html")
    httpd, url = serve(files)
    return [url + text if text.startswith("/page") else text for text in inputs], httpd


def read_lines(out: Path) -> dict:
    """JSON lines (the CLI's --jsonl or the Ray sweep's) -> inputs finished and (input, source) -> (label, p)."""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    images = {(x["input"], x["source"]): (x["label"], x["p_medical"]) for x in lines if x["type"] == "image"}
    return {"inputs": sum(x["type"] == "input" for x in lines), "images": images}


def cli_results(listing: Path, out: Path, model: str) -> tuple[float, dict]:
    """One CLI process over the input file, streaming JSON lines."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "final_classification_script.py"),
            "--input-file",
            str(listing),
            "--jsonl",
            "-o",
            str(out),
            "--quiet",
            "--model",
            model,
        ],
        check=False,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, read_lines(out)


def ray_startup() -> float:
    """A process that starts Ray on this machine and stops it: the fixed cost of every sweep_ray.py run."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import ray; ray.init(include_dashboard=False, log_to_driver=False); ray.shutdown()"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def ray_results(listing: Path, out: Path, model: str, actors: int, batch_size: int | None) -> tuple[float, dict]:
    """sweep_ray.py as a user runs it: its own process, Ray started in it on this machine."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "sweep_ray.py"),
            str(listing),
            "-o",
            str(out),
            "--quiet",
            "--model",
            model,
            "--actors",
            str(actors),
        ]
        + (["--batch-size", str(batch_size)] if batch_size else []),
        check=False,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, read_lines(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=200, help="default: %(default)s")
    p.add_argument("--images-per-input", type=int, default=3, help="default: %(default)s")
    p.add_argument("--actors", type=int, default=1, help="Ray model actors (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help="images per model batch (default: sweep_ray's)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        inputs, httpd = build_inputs(folder, args.inputs, args.images_per_input)
        listing = folder / "inputs.txt"
        listing.write_text("\n".join(inputs) + "\n")
        cli_time, cli = cli_results(listing, folder / "cli.jsonl", args.model)
        ray_total, swept = ray_results(listing, folder / "ray.jsonl", args.model, args.actors, args.batch_size)
        httpd.shutdown()
    n_images = len(cli["images"])
    mismatched = [
        key
        for key, (label, p) in cli["images"].items()
        if key not in swept["images"] or swept["images"][key][0] != label or abs(swept["images"][key][1] - p) > 1e-4
    ]
    startup = ray_startup()
    print(f"Ray start-up alone (a process that starts and stops it): {startup:.1f} s")
    print(f"inputs in: {len(inputs)}; out: CLI {cli['inputs']}, Ray {swept['inputs']}")
    print(
        f"images: CLI {n_images}, Ray {len(swept['images'])}; mismatched (label, or p by more than 1e-4): "
        f"{len(mismatched) + len(set(swept['images']) - set(cli['images']))}"
    )
    for name, seconds in (("CLI --input-file", cli_time), ("sweep_ray.py (Ray started in it)", ray_total)):
        print(
            f"{name:32s} {seconds:6.1f} s  {len(inputs) / seconds:6.1f} inputs/s  {n_images / seconds:6.1f} img/s"
            f"  ({seconds / cli_time:.2f}x the CLI's time)"
        )


if __name__ == "__main__":
    main()
