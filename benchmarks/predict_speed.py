"""Model load time and predict throughput: ONNX Runtime against torch on the CPU, both backbones, batch 1-32.

    python benchmarks/predict_speed.py --images 64
    python benchmarks/predict_speed.py --device cuda   # torch alone, on the GPU (ONNX Runtime runs on the CPU only)

ResNet50's ImageNet weights cannot be downloaded offline, so it runs from a
randomly initialised state dict file: the same computation, the same speed.
Preparation (Pillow resize and crop) is included, as the CLI runs it.
"""

import argparse
import functools
import os
import tempfile
import time

import torch
from PIL import Image

from common import corpus_sample

import engine
import model

BATCHES = (1, 4, 16, 32)


def checkpoint_for(arch: str, folder: str) -> tuple[str, str | None]:
    weights = None
    if arch == "resnet50":
        from torchvision.models import resnet50

        weights = os.path.join(folder, "resnet50-random.pth")
        torch.save(resnet50().state_dict(), weights)
    path = os.path.join(folder, f"{arch}.pth")
    model.save_checkpoint(model.build_model(arch, weights), path, {"metrics": {}})
    model.export_beside(path, model.load_model(path, "cpu", weights))
    return path, weights


def measure(make, images, repeats: int) -> tuple[float, dict]:
    loads = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner = make()
        loads.append(time.perf_counter() - start)
    runner.predict(images[:4], batch_size=4)  # warm-up
    speed = {}
    for batch in BATCHES:
        start = time.perf_counter()
        runner.predict(images, batch_size=batch)
        speed[batch] = len(images) / (time.perf_counter() - start)
    return min(loads), speed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="corpus images to classify per measurement")
    p.add_argument("--repeats", type=int, default=3, help="load-time repeats (the best is reported)")
    p.add_argument("--archs", default="efficientnet_lite0,resnet50")
    p.add_argument("--device", default="cpu", help="where torch runs; ONNX Runtime is measured only on cpu")
    args = p.parse_args()
    images = [Image.open(x).copy() for x in corpus_sample(args.images)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs.split(","):
            path, weights = checkpoint_for(arch, folder)
            for name in ("torch", "onnx") if args.device == "cpu" else ("torch",):
                load, speed = measure(
                    functools.partial(engine.open_engine, path, name, args.device, weights), images, args.repeats
                )
                rows.append((arch, name, load, speed))
    print(
        f"device {args.device}, CPU threads {torch.get_num_threads()}, {len(images)} corpus images of mixed sizes, "
        f"preparation included"
    )
    print(f"{'backbone':20s} {'engine':6s} {'load s':>7s} " + " ".join(f"{'img/s b' + str(b):>10s}" for b in BATCHES))
    for arch, name, load, speed in rows:
        print(f"{arch:20s} {name:6s} {load:7.2f} " + " ".join(f"{speed[b]:10.1f}" for b in BATCHES))
    for arch in dict.fromkeys(r[0] for r in rows if r[1] == "onnx"):
        (_, _, lt, st), (_, _, lo, so) = [r for r in rows if r[0] == arch]
        print(
            f"ratio onnx/torch {arch}: load {lt / lo:.2f}x faster; "
            + ", ".join(f"batch {b} {so[b] / st[b]:.2f}x" for b in BATCHES)
        )


if __name__ == "__main__":
    main()
