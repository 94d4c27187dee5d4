"""The GPU figures of the engine work, each on one line, for one run on a lent GPU machine.

    python benchmarks/gpu_check.py                         # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --images 16 --recipe-scale 0.002   # a CPU smoke test

1. |p_cuda - p_cpu| over corpus images (torch on the GPU against ONNX Runtime on the CPU; target <= 0.01).
2. The CLI on a 200-image PDF, whole process, --device cuda and auto against --device cpu (auto: target >= 1x).
3. Steady classification on the GPU: the model alone on prepared batches, and predict() with
   preparation included (target >= 2,000 img/s).
4. The reference recipe's feature pass against a bare ResNet50 forward in the same run
   (benchmarks/reference_recipe.py; target >= 85%).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import DEFAULT_MODEL, cli_seconds, corpus_sample, upscaled_jpeg, write_pdf

import engine

HERE = Path(__file__).resolve().parent  # reference_recipe.py lies beside this script, also in a copy run elsewhere


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--steady-seconds", type=float, default=5.0)
    p.add_argument("--recipe-scale", type=float, default=1.0, help="passed to reference_recipe.py as --scale")
    args = p.parse_args()
    import torch

    print(
        f"device {args.device}: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores",
        flush=True,
    )
    images = [Image.open(x).copy() for x in corpus_sample(args.images)]
    cpu = engine.open_engine(DEFAULT_MODEL, "onnx", "cpu")
    gpu = engine.open_engine(DEFAULT_MODEL, "torch", args.device)
    start = time.perf_counter()
    p_gpu = np.array(gpu.predict(images))
    first = time.perf_counter() - start
    p_cpu = np.array(cpu.predict(images))
    difference = np.abs(p_gpu - p_cpu)
    flips = int(((p_gpu >= cpu.threshold) != (p_cpu >= cpu.threshold)).sum())
    print(
        f"1. max |p_gpu - p_cpu| over {len(images)} corpus images: {difference.max():.2e} "
        f"(mean {difference.mean():.2e}, labels that differ: {flips}); first predict incl. warm-up {first:.2f} s",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as folder:
        pdf = os.path.join(folder, "200.pdf")
        write_pdf(pdf, [upscaled_jpeg(x)[0] for x in corpus_sample(200)])
        seconds = {
            device: cli_seconds("--json", "--device", device, pdf)
            for device in dict.fromkeys((args.device, "auto", "cpu"))
        }
    print(
        f"2. CLI on a 200-image PDF, whole process: --device {args.device} {seconds[args.device]:.1f} s, "
        f"--device auto {seconds['auto']:.1f} s (ONNX Runtime while the GPU starts), --device cpu "
        f"{seconds['cpu']:.1f} s; cpu/{args.device} {seconds['cpu'] / seconds[args.device]:.2f}x, cpu/auto "
        f"{seconds['cpu'] / seconds['auto']:.2f}x (target >= 1: auto no slower than cpu)",
        flush=True,
    )

    batch = np.stack([engine.prepare(im, gpu.preprocess) for im in images[: gpu.default_batch_size]])
    batch = np.concatenate([batch] * (gpu.default_batch_size // len(batch) + 1))[: gpu.default_batch_size]
    gpu.run(batch)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < args.steady_seconds:
        gpu.run(batch)
        n += len(batch)
    model_only = n / (time.perf_counter() - start)
    many = images * max(1, 2000 // len(images))
    start = time.perf_counter()
    gpu.predict(many)
    with_preparation = len(many) / (time.perf_counter() - start)
    print(
        f"3. steady classification on {args.device}, batch {gpu.default_batch_size}: model alone "
        f"{model_only:.0f} img/s; predict() with preparation {with_preparation:.0f} img/s",
        flush=True,
    )

    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "reference_recipe.py"),
            "--scale",
            str(args.recipe_scale),
            "--device",
            args.device,
            "--epochs",
            "2",
            "--bare-seconds",
            "5",
        ],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(("feature pass", "bare ResNet50"))]
    rates = [float(line.rsplit(":", 1)[1].split()[0]) for line in lines]
    if done.returncode == 0 and len(rates) >= 2:
        print(
            f"4. reference recipe feature pass {rates[0]:.0f} img/s; bare ResNet50 forward fp32 {rates[1]:.0f} img/s "
            f"({rates[0] / rates[1]:.0%})"
            + (f", bf16 + channels_last {rates[2]:.0f} img/s ({rates[0] / rates[2]:.0%})" if len(rates) > 2 else "")
        )
    else:
        print(f"4. reference recipe failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
