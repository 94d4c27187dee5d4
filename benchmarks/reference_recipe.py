"""The reference recipe end to end on synthetic data in the real formats, sized like the real balanced set.

    python benchmarks/reference_recipe.py                 # on a GPU: about 60,000 images per class
    python benchmarks/reference_recipe.py --scale 0.005   # a CPU smoke test

Writes MedMNIST npz files and CIFAR-10 batches (random pixels, real formats and real
split sizes up to what balancing takes) and a randomly initialised ResNet50 state dict,
then runs `train.py` with its defaults offline and prints the wall time of each stage
and the feature pass in images/s, plus the bare ResNet50 forward speed on the device.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT

sys.path.insert(0, str(ROOT / "tests"))
import dataset  # noqa: E402
import model  # noqa: E402
import train  # noqa: E402
from fake_data import write_cifar10, write_medmnist  # noqa: E402


def bare_forward(device: torch.device, batch: int = 256, seconds: float = 10.0, fast: bool = False) -> float:
    """ResNet50 images/s on already-normalised 224 px tensors: the ceiling for the feature pass.

    fast: bf16 autocast + channels_last on CUDA (what the GPU does best); else fp32 as the feature pass runs.
    """
    from torchvision.models import resnet50

    net = resnet50().to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    fast = fast and device.type == "cuda"
    if fast:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
        net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            net(x)
            n += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real CIFAR-10 / MedMNIST sizes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="train.py --workers")
    p.add_argument("--bare-seconds", type=float, default=10.0, help="how long to time the bare forward pass")
    args = p.parse_args()
    from medmnist import INFO

    device = model.select_device(args.device)
    cifar_batch = max(4, int(10_000 * args.scale))
    # Each dataset holds its real count, up to twice the even share balancing can take from it.
    share = {"train": 5 * cifar_batch, "val": cifar_batch // 2, "test": cifar_batch - cifar_batch // 2}
    cap = {s: max(2, math.ceil(2 * n / len(dataset.MEDMNIST_2D))) for s, n in share.items()}
    per_split = [lambda flag, split=s: min(INFO[flag]["n_samples"][split], cap[split]) for s in dataset.SPLITS]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        start = time.perf_counter()
        write_medmnist(folder / "data", per_split=per_split, compress=False)
        write_cifar10(folder / "data", per_batch=cifar_batch)
        from torchvision.models import resnet50

        torch.save(resnet50().state_dict(), folder / "resnet50.pth")
        print(f"synthetic data written in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        code = train.main(
            [
                "--data-dir",
                str(folder / "data"),
                "--no-download",
                "--backbone-weights",
                str(folder / "resnet50.pth"),
                "--epochs",
                str(args.epochs),
                "--device",
                str(device),
                "--workers",
                str(args.workers),
                "--output",
                str(folder / "best_model.pth"),
            ]
        )
        wall = time.perf_counter() - start
        assert code == 0
        training = torch.load(folder / "best_model.pth", weights_only=True)["training"]
    timings = training["timings_s"]
    images = sum(sum(c.values()) for c in training["data"].values())
    print(
        json.dumps(
            {
                "device": str(device),
                "images": images,
                "train_py_wall_s": round(wall, 2),
                **{k: round(v, 2) for k, v in timings.items()},
            },
            indent=1,
        )
    )
    print(f"feature pass, data loading and preparation included: {images / timings['frozen_pass_s']:.0f} images/s")
    print(f"bare ResNet50 forward, fp32: {bare_forward(device, seconds=args.bare_seconds):.0f} images/s")
    if device.type == "cuda":
        print(
            f"bare ResNet50 forward, bf16 + channels_last: "
            f"{bare_forward(device, seconds=args.bare_seconds, fast=True):.0f} images/s"
        )


if __name__ == "__main__":
    main()
