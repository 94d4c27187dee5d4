"""Head training with cached backbone features against the backbone pass every epoch (the reference way).

    python benchmarks/train_cache.py --images 160 --epochs 5

Both runs use the same images, the same head training code and the same
hyperparameters; the only difference is whether features are computed once.
"""

import argparse

import numpy as np
import torch

from common import corpus_sample, timed

import dataset
import model
import train


def fit_on(net, x, y, weights, epochs: int):
    """The head trained as train.py trains it (validation on the training features: only the time matters)."""
    batches = train.cached_batches(x, y, weights, 256, "cpu", 0)
    train.fit(
        net.head,
        batches,
        lambda: train.probabilities(net.head, x, "cpu"),
        y,
        ["k"] * len(y),
        epochs,
        log=lambda *a: None,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=160, help="corpus images (half medical, half not)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--arch", default="efficientnet_lite0", choices=sorted(model.BACKBONES))
    p.add_argument("--batch-size", type=int, default=64, help="backbone batch size")
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"], help="backbone pass engine")
    args = p.parse_args()
    torch.manual_seed(0)
    paths = corpus_sample(args.images // 2, "medical") + corpus_sample(args.images // 2, "non_medical")
    labels = np.array([0] * (args.images // 2) + [1] * (args.images // 2))
    part = dataset.Part(
        "bench",
        [str(x) for x in paths],
        labels,
        ["k"] * len(paths),
        [str(x) for x in paths],
        np.array(["train"] * len(paths), dtype=object),
        ["k"] * len(paths),
    )
    net = model.build_model(args.arch)
    weights = np.ones(len(paths))
    times = {}
    warm = part.subset(np.arange(8))
    features = train.feature_function(net, args.engine)
    # a warm-up, kept out of both timings
    train.compute_features(net, [warm], batch_size=args.batch_size, desc="warm-up", features=features)

    with timed(times, "cached"):
        x, y, _, _ = train.compute_features(
            net, [part], batch_size=args.batch_size, desc="cached features", features=features
        )
        fit_on(net, x, y, weights, args.epochs)

    net.head.reset_parameters()
    with timed(times, "every_epoch"):
        for epoch in range(args.epochs):
            x, y, _, _ = train.compute_features(
                net, [part], batch_size=args.batch_size, desc=f"epoch {epoch + 1} features", features=features
            )
            fit_on(net, x, y, weights, 1)

    print(f"{args.arch}, {len(paths)} images, {args.epochs} epochs, CPU threads {torch.get_num_threads()}")
    print(f"  cached features:         {times['cached']:7.1f} s")
    print(f"  backbone every epoch:    {times['every_epoch']:7.1f} s")
    print(f"  ratio: cached training is {times['every_epoch'] / times['cached']:.2f}x faster")


if __name__ == "__main__":
    main()
