"""Model load time and predict throughput on the CPU, both backbones side by side, batch 1 and batch 32.

    python benchmarks/predict_speed.py --images 64

ResNet50's ImageNet weights cannot be downloaded offline, so it runs from a
randomly initialised state dict file: the same computation, the same speed.
"""
import argparse
import os
import tempfile
import time

import torch
from PIL import Image

from common import corpus_sample

import model


def checkpoint_for(arch: str, folder: str) -> tuple[str, str | None]:
    weights = None
    if arch == "resnet50":
        from torchvision.models import resnet50

        weights = os.path.join(folder, "resnet50-random.pth")
        torch.save(resnet50().state_dict(), weights)
    path = os.path.join(folder, f"{arch}.pth")
    model.save_checkpoint(model.build_model(arch, weights), path, {"metrics": {}})
    return path, weights


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="corpus images to classify per measurement")
    p.add_argument("--repeats", type=int, default=3, help="load-time repeats (the best is reported)")
    args = p.parse_args()
    images = [Image.open(x).copy() for x in corpus_sample(args.images)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in ("efficientnet_lite0", "resnet50"):
            path, weights = checkpoint_for(arch, folder)
            loads = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                net = model.load_model(path, "cpu", weights)
                loads.append(time.perf_counter() - start)
            net.predict(images[:4], batch_size=4)  # warm-up
            speed = {}
            for batch in (1, 32):
                start = time.perf_counter()
                net.predict(images, batch_size=batch)
                speed[batch] = len(images) / (time.perf_counter() - start)
            rows.append((arch, min(loads), speed[1], speed[32]))
    print(f"CPU threads {torch.get_num_threads()}, {len(images)} corpus images of mixed sizes, preprocessing included")
    print(f"{'backbone':20s} {'load s':>8s} {'img/s b1':>9s} {'img/s b32':>10s}")
    for arch, load, b1, b32 in rows:
        print(f"{arch:20s} {load:8.2f} {b1:9.1f} {b32:10.1f}")
    (a, la, a1, a32), (b, lb, b1, b32) = rows
    print(f"ratio {a}/{b}: load {lb / la:.2f}x faster, batch 1 {a1 / b1:.2f}x, batch 32 {a32 / b32:.2f}x")


if __name__ == "__main__":
    main()
