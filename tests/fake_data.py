"""MedMNIST npz files and CIFAR-10 python batches in their exact real formats, filled with random pixels.

Used by the tests and by benchmarks/reference_recipe.py: no internet, no real data, the real loading code.
"""

import pickle

import numpy as np

import dataset


def write_medmnist(root, size=28, per_split=(10, 4, 4), flags=dataset.MEDMNIST_2D, seed=0, compress=True):
    """The twelve npz files as medmnist ships them: {split}_images uint8 (N,H,W[,3]) and {split}_labels."""
    from medmnist import INFO

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for flag in flags:
        channels = INFO[flag]["n_channels"]
        arrays = {}
        for split, n in zip(dataset.SPLITS, per_split):
            n = n(flag, split) if callable(n) else n
            shape = (n, size, size) + ((3,) if channels == 3 else ())
            arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
        suffix = "" if size == 28 else f"_{size}"
        (np.savez_compressed if compress else np.savez)(root / f"{flag}{suffix}.npz", **arrays)


def write_cifar10(root, per_batch=8, seed=1):
    """cifar-10-batches-py/ as torchvision extracts it: pickled dicts with b'data' (N, 3072) and b'labels'."""
    rng = np.random.default_rng(seed)
    folder = root / dataset.CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name in dataset.CIFAR_FILES:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10}, f)
