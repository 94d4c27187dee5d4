"""Retrain the medical / non-medical classifier on an ImageNet backbone.

With --finetune head (default) the backbone is frozen: its features are computed once (plus a few augmented views
per folder image) and the head is trained on the cache; last-N also adapts the backbone's last N blocks on cached
activations; all trains every layer (a GPU job). The epoch with the best validation kind-macro accuracy is saved
as a self-describing checkpoint, with its ONNX twin beside it, under runs/<date>-<arch>/ unless --output says.
"""

from __future__ import (
    annotations,  # annotations name torch types without importing torch
)

import argparse
import datetime
import functools
import hashlib
import io
import os
import shlex
import sys
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

import dataset
import engine
from atomic import replace_file

if TYPE_CHECKING:  # torch is imported where it is used, so --help and the torch-missing error need none
    import torch
    from torch import nn
    from torchvision.transforms import v2 as T

# torch, torchvision and model.py (which imports torch) are imported inside the functions that use
# them, so `--help` and argument errors answer at once.

AUGMENT_VERSION = 3  # part of the feature-cache key: bump when the augmentation changes
MOSAIC_VERSION = 1  # the same for MosaicViews
ARCHES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet50",
)  # model.BACKBONES, named here for --help (a test keeps them equal)
TRAIN_ON = ("train", "train+val", "train+val+test")  # the splits trained on, each choice a superset of the one before
DEFAULT_OUTPUT = os.path.join("runs", "<date>-<arch>", "best_model.pth")  # a new folder per run, never overwritten


def augmentation(size: int) -> T.Compose:
    """What real inputs do to an image: crops, rescaling, borders, colour, greyscale, figure marks, JPEG.

    PIL in, PIL out. Both classes get the same, so no mark becomes a shortcut to a label.
    """
    from torchvision.transforms import v2 as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.6, 1.67), antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.RandomZoomOut(fill=255, side_range=(1.0, 1.4))], p=0.15),
            T.RandomApply([T.RandomZoomOut(fill=0, side_range=(1.0, 1.4))], p=0.1),
            T.RandomApply([T.RandomChoice([T.RandomRotation(20, fill=f) for f in FLAT_FILLS])], p=0.15),
            T.RandomApply([T.ColorJitter(0.3, 0.3, 0.25, 0.03)], p=0.5),
            T.RandomGrayscale(p=0.3),  # grey and colour on both labels: greyness is no cue for "medical"
            T.RandomApply(
                [T.RandomChoice([T.ColorJitter(contrast=(0.3, 0.6)), T.ColorJitter(brightness=(0.3, 0.6))])], p=0.15
            ),  # low contrast and dark pictures on both labels
            T.RandomInvert(p=0.05),
            T.RandomApply([PaperLook()], p=0.35),
            T.RandomApply(
                [
                    T.RandomChoice([T.Resize(s, antialias=True) for s in (48, 64, 96, 128)]),
                    T.Resize(size, antialias=True),
                ],
                p=0.25,
            ),
            T.RandomApply([RandomJPEG((25, 90))], p=0.5),
        ]
    )


# Flat paddings (rotations, pre-augmented sets' borders) in the same colours on both labels, so none is a cue.
FLAT_FILLS = ((0, 0, 0), (255, 255, 255), (128, 128, 128), (0, 0, 128), (255, 0, 255))


def _uniform(low: float, high: float) -> float:
    import torch

    return low + (high - low) * torch.rand(()).item()


class PaperLook:
    """How figures look in papers and on pages: boxes, arrows, contours, letters, a scale bar,
    a circular field of view on black (a microscope eyepiece), a white border with caption lines."""

    COLOURS = ((255, 255, 0), (255, 0, 0), (0, 255, 0), (255, 255, 255), (0, 0, 0), (0, 128, 255))

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch
        from PIL import ImageDraw, ImageFont

        image = image.copy()
        w, h = image.size
        draw = ImageDraw.Draw(image)
        colour = self.COLOURS[int(torch.randint(len(self.COLOURS), ()))]
        width = max(1, int(min(w, h) * _uniform(0.005, 0.02)))
        choice = int(torch.randint(5, ()))
        if choice == 0:  # boxes and contours
            for _ in range(int(torch.randint(1, 4, ()))):
                x0, y0 = _uniform(0, 0.7) * w, _uniform(0, 0.7) * h
                box = (x0, y0, x0 + _uniform(0.1, 0.3) * w, y0 + _uniform(0.1, 0.3) * h)
                (draw.rectangle if torch.rand(()) < 0.5 else draw.ellipse)(box, outline=colour, width=width)
        elif choice == 1:  # arrows and letters
            font = ImageFont.load_default(size=max(8, int(min(w, h) * _uniform(0.06, 0.15))))
            for _ in range(int(torch.randint(1, 4, ()))):
                x, y = _uniform(0.1, 0.8) * w, _uniform(0.1, 0.8) * h
                dx, dy = _uniform(-0.15, 0.15) * w, _uniform(-0.15, 0.15) * h
                draw.line((x, y, x + dx, y + dy), fill=colour, width=width)
                draw.polygon(
                    [
                        (x, y),
                        (x + dx * 0.3 - dy * 0.15, y + dy * 0.3 + dx * 0.15),
                        (x + dx * 0.3 + dy * 0.15, y + dy * 0.3 - dx * 0.15),
                    ],
                    fill=colour,
                )
                draw.text((x + dx, y + dy), "ABCD*"[int(torch.randint(5, ()))], fill=colour, font=font)
        elif choice == 2:  # a scale bar with its length
            font = ImageFont.load_default(size=max(8, int(h * 0.06)))
            x1, y1 = w * 0.95, h * 0.92
            draw.rectangle((x1 - w * _uniform(0.1, 0.3), y1 - max(2, h * 0.015), x1, y1), fill=colour)
            draw.text(
                (x1 - w * 0.25, y1 - h * 0.1),
                ("50 µm", "1 cm", "100 µm", "5 mm")[int(torch.randint(4, ()))],
                fill=colour,
                font=font,
            )
        elif choice == 3:  # circular field of view
            mask = Image.new("L", (w, h), 0)
            radius = min(w, h) * _uniform(0.4, 0.55)
            ImageDraw.Draw(mask).ellipse((w / 2 - radius, h / 2 - radius, w / 2 + radius, h / 2 + radius), fill=255)
            image = Image.composite(image, Image.new("RGB", (w, h), (0, 0, 0)), mask)
        else:  # a white border with a caption below
            pad, caption = int(min(w, h) * _uniform(0.02, 0.08)), int(h * _uniform(0.1, 0.3))
            framed = Image.new("RGB", (w + 2 * pad, h + 2 * pad + caption), (255, 255, 255))
            framed.paste(image, (pad, pad))
            lines = ImageDraw.Draw(framed)
            for i in range(max(1, caption // 12)):
                y = h + 2 * pad + 4 + i * 12
                lines.line((pad, y, pad + (w - pad) * _uniform(0.5, 1.0), y), fill=(60, 60, 60), width=3)
            image = framed.resize((w, h))
        return image


class RandomJPEG:
    """Re-encode an RGB PIL image as JPEG at a random quality."""

    def __init__(self, quality: tuple[int, int]):
        self.quality = quality

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")


class FileViews:
    """Image files as (view, index) pairs, prepared as the engines prepare them: view 0 plain, later views augmented."""

    def __init__(self, paths, views: int, preprocess: dict, augment, seed: int, transform=None):
        self.paths, self.views, self.preprocess, self.augment, self.seed = paths, views, preprocess, augment, seed
        self.transform = transform  # applied to every view first (greyscale, for the shortcut check)

    def __len__(self):
        return len(self.paths) * (1 + self.views)

    def __getitem__(self, i):
        view, index = divmod(i, len(self.paths))
        image = _open_rgb(self.paths[index])
        if image is None:
            return None
        if self.transform:
            image = self.transform(image)
        if view:
            import torch

            torch.manual_seed(self.seed * 1_000_003 + index * 101 + view)
            image = self.augment(image)
        return engine.prepare(image, self.preprocess)


def lay_out(pictures: list, rows: int, cols: int, cell: int, gutter: int, background: tuple) -> tuple:
    """Pictures as a grid of `cell`-pixel panels with gutters, as papers lay figures out: (canvas, cell boxes).

    Each picture is shrunk to fit its cell and centred in it (None leaves its cell empty); the canvas is `background`
    around them."""
    width, height = cols * cell + (cols + 1) * gutter, rows * cell + (rows + 1) * gutter
    canvas = Image.new("RGB", (width, height), background)
    boxes = []
    for n, picture in enumerate(pictures):
        r, c = divmod(n, cols)
        x, y = gutter + c * (cell + gutter), gutter + r * (cell + gutter)
        boxes.append((x, y, x + cell, y + cell))
        if picture is None:
            continue
        panel = picture.copy()
        panel.thumbnail((cell, cell))
        canvas.paste(panel, (x + (cell - panel.width) // 2, y + (cell - panel.height) // 2))
    return canvas, boxes


MOSAIC_LAYOUTS = ((2, 2), (3, 3), (2, 3), (3, 2), (1, 2), (2, 1), (1, 3), (3, 1), (2, 4))


def _open_rgb(path: str, draft: int | None = None) -> Image.Image | None:
    """An image file as RGB, or None when it does not decode; `draft`: decoded at about that many pixels (JPEG's
    draft mode), enough for a mosaic's thumbnails."""
    try:
        with Image.open(path) as im:
            if draft:
                im.draft("RGB", (draft, draft))
            image = engine.to_rgb(im)
            image.load()
            return image
    except Exception:
        return None


class MosaicViews:
    """Training images each laid among other images as a compound figure, keeping its own label.

    A medical image among non-medical ones is a medical figure, a non-medical one among non-medical ones stays
    non-medical, so the model learns that one medical panel makes a figure medical and that a grid alone does not.
    The image sits in a cell whose centre the engines' centre crop keeps; a 1x2 or 2x1 layout has none (the crop's
    centre is the gutter), and there it takes the first cell, about half of which the crop keeps. Neighbours come
    from the same split's pools; one that does not decode, or an empty pool, leaves its cell empty."""

    def __init__(self, paths, labels, views: int, pools: dict, preprocess: dict, augment, seed: int):
        self.paths, self.labels, self.views, self.pools = paths, labels, views, pools
        self.preprocess, self.augment, self.seed = preprocess, augment, seed

    def __len__(self):
        return len(self.paths) * self.views

    def __getitem__(self, i):
        import random

        view, index = divmod(i, len(self.paths))
        rng = random.Random(int(self.seed * 1_000_003 + index * 101 + view + 7))
        image = _open_rgb(self.paths[index])
        if image is None:
            return None
        import torch

        torch.manual_seed(rng.getrandbits(31))  # the key image's augmentation and the JPEG quality
        if rng.random() < 0.5:
            image = self.augment(image)
        rows, cols = rng.choice(MOSAIC_LAYOUTS)
        cell, gutter = rng.choice((96, 128, 160, 200, 256)), rng.choice((2, 4, 6, 10, 16, 24))
        background = rng.choice(((255, 255, 255),) * 3 + ((0, 0, 0), (128, 128, 128)))
        medical_neighbours = self.labels[index] == dataset.MEDICAL and rng.random() < 0.25
        pool = self.pools[dataset.MEDICAL if medical_neighbours else dataset.NON_MEDICAL]
        pictures = [_open_rgb(rng.choice(pool), cell) if pool else None for _ in range(rows * cols - 1)]
        width, height = cols * cell + (cols + 1) * gutter, rows * cell + (rows + 1) * gutter
        band = int(height * rng.uniform(0.08, 0.2)) if rng.random() < 0.3 else 0  # a caption band below
        kept = self.preprocess["crop"] / self.preprocess["resize"] * min(width, height + band) / 2
        centres = [
            (gutter + (n % cols) * (cell + gutter) + cell / 2, gutter + (n // cols) * (cell + gutter) + cell / 2)
            for n in range(rows * cols)
        ]
        inside = [
            n for n, (x, y) in enumerate(centres) if abs(x - width / 2) < kept and abs(y - (height + band) / 2) < kept
        ]
        pictures.insert(rng.choice(inside) if inside else 0, image)
        canvas, _ = lay_out(pictures, rows, cols, cell, gutter, background)
        if band:  # drawn as lines of text
            from PIL import ImageDraw

            framed = Image.new("RGB", (width, height + band), background)
            framed.paste(canvas, (0, 0))
            draw, ink = ImageDraw.Draw(framed), (60, 60, 60) if background != (0, 0, 0) else (200, 200, 200)
            for y in range(height + 6, height + band - 4, 12):
                draw.line((gutter, y, gutter + (width - 2 * gutter) * rng.uniform(0.4, 1.0), y), fill=ink, width=3)
            canvas = framed
        if rng.random() < 0.5:
            canvas = RandomJPEG((40, 90))(canvas)
        return engine.prepare(canvas, self.preprocess)


class ArrayImages:
    """uint8 (N, H, W[, 3]) arrays (MedMNIST, CIFAR-10), prepared as the engines prepare any image."""

    def __init__(self, images: np.ndarray, preprocess: dict):
        self.images, self.preprocess = images, preprocess

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return engine.prepare(Image.fromarray(self.images[i]), self.preprocess)


def _collate(batch):
    import torch

    ok = [b is not None for b in batch]
    arrays = [b for b in batch if b is not None]
    return (torch.from_numpy(np.stack(arrays)) if arrays else None), torch.tensor(ok)


def _one_thread(_worker_id):
    import torch

    torch.set_num_threads(1)  # decoding workers must not fight the backbone for cores


def feature_function(net, engine_name: str = "auto", trained_blocks: int = 0):
    """uint8 (N, H, W, 3) batch -> the frozen part's output on the CPU (fp16 for block activations).

    On a CPU the frozen part runs on ONNX Runtime (about 6x torch there); elsewhere on torch.
    """
    import torch

    import model as model_lib

    frozen = model_lib.FrozenPart(net, trained_blocks).eval()
    half = (lambda x: x.half()) if trained_blocks else (lambda x: x)
    if net.device.type == "cpu" and engine_name != "torch" and engine.onnxruntime_available():
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = model_lib.export_graph(
                    frozen, os.path.join(folder, "frozen.onnx"), net.preprocess["crop"], [engine.ONNX_FEATURES]
                )
                run = engine.onnx_runner(path, engine.ONNX_FEATURES)
            return lambda batch: half(torch.from_numpy(run(batch.numpy())))
        except ImportError as exc:  # onnx missing: torch still works
            print(f"note: frozen pass on torch ({exc})", file=sys.stderr)
    return lambda batch: half(frozen(batch).float().cpu())


def features_by_part(
    model,
    parts,
    views,
    batch_size=64,
    workers=0,
    seed=0,
    desc="features",
    features=None,
    transform=None,
    mosaic_pools=None,
    progress=True,
):
    """Backbone features of every image of `parts`, one (features, labels, kinds, unreadable paths) per part;
    folder images also as `views[i]` augmented copies, or, where `mosaic_pools[i]` gives neighbours
    ({label: paths}), as `views[i]` mosaic views only (MosaicViews).

    One DataLoader over all the parts: one pool of workers, and batches that run across the parts' edges, so a
    GPU never waits for a pool to start per dataset part (that cost the reference recipe most of its speed)."""
    import torch
    from torch.utils.data import ConcatDataset, DataLoader

    augment = augmentation(model.preprocess["resize"])
    features = features or feature_function(model)
    datasets, copies = [], []
    for part, n, pools in zip(parts, views, mosaic_pools or [None] * len(parts)):
        if isinstance(part.images, np.ndarray):
            datasets.append(ArrayImages(part.images, model.preprocess))
            copies.append(1)
        elif pools:
            datasets.append(MosaicViews(part.images, part.labels, n, pools, model.preprocess, augment, seed))
            copies.append(n)
        else:
            datasets.append(FileViews(part.images, n, model.preprocess, augment, seed, transform))
            copies.append(1 + n)
    total = sum(len(d) for d in datasets)
    with torch.inference_mode():
        feats, oks = [], []
        if total:
            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not progress or total < 64)
            loader = DataLoader(
                ConcatDataset(datasets),
                batch_size=batch_size,
                num_workers=workers,
                collate_fn=_collate,
                worker_init_fn=_one_thread,
                pin_memory=model.device.type == "cuda",
            )
            for batch, ok in loader:
                if batch is not None:
                    feats.append(features(batch))
                oks.append(ok)
                bar.update(len(ok))
            bar.close()
        x = torch.cat(feats) if feats else torch.zeros(0, model.feature_dim)
        ok_all = torch.cat(oks).numpy() if oks else np.zeros(0, bool)
    out, start, row = [], 0, 0
    for part, data, n_copies in zip(parts, datasets, copies):
        ok = ok_all[start : start + len(data)]
        every = np.tile(np.arange(len(part)), n_copies)
        index = every[ok]
        out.append(
            (
                x[row : row + len(index)],
                part.labels[index],
                [part.kinds[i] for i in index],
                sorted({part.images[i] for i in every[~ok]}),
            )
        )
        start, row = start + len(data), row + len(index)
    return out


def joined(results: list, feature_dim: int) -> tuple:
    """Per-part results of features_by_part as one (features, labels, kinds, unreadable)."""
    import torch

    return (
        torch.cat([r[0] for r in results]) if results else torch.zeros(0, feature_dim),
        np.concatenate([r[1] for r in results]) if results else np.zeros(0, int),
        [k for r in results for k in r[2]],
        [u for r in results for u in r[3]],
    )


def compute_features(model, parts, views=0, **options):
    """features_by_part for parts of one split, joined: features (M, D) on the CPU, labels, kinds, unreadable.
    `options`: features_by_part's."""
    return joined(features_by_part(model, parts, [views] * len(parts), **options), model.feature_dim)


def pass_options(args) -> dict:
    """features_by_part's options that come from the command line, the same for every pass over images."""
    return {
        "batch_size": args.feature_batch_size,
        "workers": args.workers,
        "seed": args.seed,
        "progress": not args.quiet,
    }


def freeze_batchnorm(module: nn.Module) -> None:
    """Adapted blocks keep their ImageNet batch statistics (--batchnorm frozen): small batches would only add noise."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def key_differences(saved: dict, current: dict) -> list[str]:
    """'option (value there, value now)' for each of `current`'s options a saved run set otherwise (an option it
    predates counts as its KEY_DEFAULTS value)."""
    return [
        f"{k} ({saved.get(k, KEY_DEFAULTS.get(k))!r} there, {v!r} now)"
        for k, v in current.items()
        if saved.get(k, KEY_DEFAULTS.get(k)) != v
    ]


class TrainingState:
    """The whole training state after every epoch, so a long run survives a stop (--resume-training FILE).

    Written to a temporary file and renamed, so a stop mid-write leaves the last whole epoch's state. `key` is
    what the run was started with; a state of another architecture, corpus or option set is refused by name."""

    def __init__(self, path: str | None, key: dict, resume: bool = False):
        self.path, self.key, self.resume = path, key, resume

    def load(self, key: dict | None = None) -> dict | None:
        """The saved state, after checking it belongs to this run (`key`: the part of the key known so far)."""
        import torch

        if not (self.resume and self.path):
            return None
        key = self.key if key is None else key
        try:
            saved = torch.load(self.path, weights_only=True)
        except FileNotFoundError:
            raise dataset.DataError(f"--resume-training {self.path}: no such file") from None
        except Exception as exc:
            raise dataset.DataError(
                f"--resume-training {self.path}: not a training state of train.py ({type(exc).__name__})"
            ) from None
        if not isinstance(saved, dict) or "key" not in saved:
            raise dataset.DataError(f"--resume-training {self.path}: not a training state of train.py")
        differs = key_differences(saved["key"], key)
        if differs:
            raise dataset.DataError(
                f"--resume-training {self.path}: made with other settings: {'; '.join(differs)}; "
                "resume with the same options, or start a new run"
            )
        return saved

    def save(self, state: dict) -> None:
        import torch

        if not self.path:
            return
        replace_file(self.path, lambda f: torch.save({"key": self.key, **state}, f))


def fit(
    trainable: nn.Module,
    epoch_batches,
    val_probabilities,
    val_y,
    val_kinds,
    epochs=10,
    lr=1e-3,
    weight_decay=1e-4,
    label_smoothing=0.0,
    schedule="constant",
    steps_per_epoch=1,
    log=print,
    batchnorm="frozen",
    state: TrainingState | None = None,
    quiet=False,
    keep="best",
):
    """Adam + (weighted) cross-entropy; keeps the epoch with the best validation kind-macro accuracy, or the last
    (`keep="last"`: measured as the final model, which has no validation to choose by, will be).

    epoch_batches(epoch) yields (inputs, labels, weights) on the device; val_probabilities() gives
    p_medical of the validation set with the current weights (None: no validation, the last epoch is kept). After
    each epoch the training state goes to `state`, and a resumed state carries on from its next epoch. Returns the
    best epoch and the history.
    """
    import torch
    from torch import nn

    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * max(1, steps_per_epoch))
        if schedule == "onecycle"
        else None
    )
    best, history, first = None, [], 1
    saved = state.load() if state else None
    if saved:
        trainable.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler and saved.get("scheduler"):
            scheduler.load_state_dict(saved["scheduler"])
        best = (tuple(saved["best_key"]), saved["best_epoch"], saved["best_model"])
        history, first = list(saved["history"]), saved["epoch"] + 1
        torch.set_rng_state(saved["rng"])
        log(f"resumed from {state.path}: {saved['epoch']} of {epochs} epochs done")
    for epoch in range(first, epochs + 1):
        trainable.train()
        if batchnorm == "frozen":
            freeze_batchnorm(trainable)
        total_loss = correct = seen = 0.0
        started = time.perf_counter()
        bar = tqdm(
            epoch_batches(epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            file=sys.stderr,
            disable=quiet or steps_per_epoch < 20,
            leave=False,
        )
        for x, y, w in bar:
            logits = trainable(x)
            loss = (
                nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing) * w
            ).sum() / w.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler and scheduler.last_epoch + 1 < scheduler.total_steps:
                scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
        bar.close()
        trainable.eval()
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        shown = f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
        if val_probabilities:
            val = evaluate(val_probabilities(), val_y, val_kinds, 0.5)
            row.update(
                val_accuracy=val["accuracy"], val_kind_macro_accuracy=val["kind_macro_accuracy"], val_auroc=val["auroc"]
            )
            shown += (
                f"val acc {val['accuracy']:.4f} kind-macro {val['kind_macro_accuracy']:.4f} auroc {val['auroc']:.4f}  "
            )
            key = tuple(-1.0 if v != v else v for v in (val["kind_macro_accuracy"], val["accuracy"], val["auroc"]))
        if not val_probabilities or keep == "last":  # the last epoch is the one kept
            key = (float(epoch),)
        row["epoch_s"] = time.perf_counter() - started
        history.append(row)
        log(
            f"{shown}{row['epoch_s']:.0f} s"
            + (f", about {row['epoch_s'] * (epochs - epoch) / 60:.0f} min to go" if epoch < epochs else "")
        )
        if best is None or key > best[0]:
            best = (key, epoch, {k: v.detach().clone() for k, v in trainable.state_dict().items()})
        if state:
            state.save(
                {
                    "epoch": epoch,
                    "model": trainable.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "best_key": list(best[0]),
                    "best_epoch": best[1],
                    "best_model": best[2],
                    "history": history,
                    "rng": torch.get_rng_state(),
                }
            )
    trainable.load_state_dict(best[2])
    trainable.eval()
    return best[1], history


def cached_batches(x: torch.Tensor, y, w, batch_size: int, device, seed: int):
    """epoch -> shuffled (inputs, labels, weights) batches of cached tensors."""
    import torch

    y, w = torch.as_tensor(y), torch.as_tensor(w, dtype=torch.float32)

    def batches(epoch):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx].to(device).float(), y[idx].to(device), w[idx].to(device)

    return batches


def probabilities(trainable: nn.Module, x: torch.Tensor, device, batch_size: int = 256) -> np.ndarray:
    import torch

    trainable.eval()
    with torch.no_grad():
        out = [
            trainable(x[i : i + batch_size].to(device).float()).softmax(1)[:, engine.MEDICAL].cpu()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(out).numpy() if out else np.zeros(0)


def parse_finetune(text: str) -> int | None:
    """'head' -> 0 blocks trained, 'last-N' -> N, 'all' -> None (every layer)."""
    if text == "head":
        return 0
    if text == "all":
        return None
    if text.startswith("last-") and text[5:].isdigit() and int(text[5:]) > 0:
        return int(text[5:])
    raise argparse.ArgumentTypeError(f"must be head, last-N (N >= 1) or all, not {text!r}")


def finetune_spec(text: str) -> str:
    """The --finetune text, checked (the checkpoint records it as given)."""
    parse_finetune(text)
    return text


def number(kind=int, low: float | None = None, high: float | None = None, above: bool = False):
    """An argparse type: a `kind` from `low` (over it with `above`) up to, not including, `high`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'a whole number' if kind is int else 'a number'} is needed, not {text!r}"
            ) from None
        if (
            value != value
            or (low is not None and (value < low or above and value == low))
            or (high is not None and value >= high)
        ):
            bound = (
                f"{'over' if above else 'at least'} {low}"
                if high is None
                else f"{'over' if above else 'from'} {low} up to (not including) {high}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


def choose_threshold(p_medical: np.ndarray, labels: np.ndarray) -> float:
    """The p_medical cut with the best balanced accuracy on validation; ties go to the one nearest 0.5."""
    if not len(labels) or len(set(labels.tolist())) < 2:
        return 0.5
    candidates = np.unique(np.concatenate([p_medical, [0.5]]))
    mids = np.concatenate([(candidates[:-1] + candidates[1:]) / 2, [0.5]])
    best = max(mids, key=lambda t: (balanced_accuracy(p_medical, labels, t), -abs(t - 0.5)))
    return float(best)


def balanced_accuracy(p_medical, labels, threshold):
    pred = np.where(p_medical >= threshold, dataset.MEDICAL, dataset.NON_MEDICAL)
    return np.mean(
        [(pred[labels == c] == c).mean() for c in (dataset.MEDICAL, dataset.NON_MEDICAL) if (labels == c).any()]
    )


def auroc(p_medical: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve with medical as the positive class (ties count half)."""
    pos, neg = p_medical[labels == dataset.MEDICAL], p_medical[labels == dataset.NON_MEDICAL]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    ranks[order] = np.arange(1, len(order) + 1)
    for v in np.unique(values[np.r_[False, values[1:] == values[:-1]]]):  # average ranks of ties
        tied = np.concatenate([pos, neg]) == v
        ranks[tied] = ranks[tied].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


MIN_KIND_IMAGES = 5  # kinds with fewer test images do not enter the kind-macro accuracy


def evaluate(p_medical: np.ndarray, labels: np.ndarray, kinds, threshold: float, apart=()) -> dict:
    """Accuracy, balanced accuracy, recalls, AUROC, confusion matrix (rows: true medical, non-medical), accuracy per
    kind and the kind-macro accuracy (the mean over kinds with at least MIN_KIND_IMAGES images, except the kinds
    `apart`: those of a single source, which a source-held-out split cannot both train on and test)."""
    pred = np.where(p_medical >= threshold, dataset.MEDICAL, dataset.NON_MEDICAL)
    recall = lambda c: float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
    confusion = [[int(((labels == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    per_kind = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        per_kind[kind] = {"n": int(mask.sum()), "accuracy": float((pred[mask] == labels[mask]).mean())}
    counted = [v["accuracy"] for k, v in per_kind.items() if v["n"] >= MIN_KIND_IMAGES and k not in apart]
    recalls = [r for r in (recall(dataset.MEDICAL), recall(dataset.NON_MEDICAL)) if r == r]
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "single_source_kinds": {k: v for k, v in per_kind.items() if k in apart},
        "recall_medical": recall(dataset.MEDICAL),
        "recall_non_medical": recall(dataset.NON_MEDICAL),
        "auroc": auroc(p_medical, labels),
        "confusion": confusion,
        "per_kind": per_kind,
        "kind_macro_accuracy": float(np.mean(counted)) if counted else float("nan"),
        "n": int(len(labels)),
    }


COLOUR_MEDICAL_KINDS = ("histology", "cytology", "dermoscopy", "clinical_photo", "endoscopy", "fundus")
COLOUR_SPREAD = 12  # mean max-min over channels, in levels, at or above which an image counts as colour


def is_colour(path: str) -> bool:
    try:
        with Image.open(path) as im:
            rgb = np.asarray(engine.to_rgb(im).resize((64, 64)), dtype=np.int16)
    except Exception:
        return False
    return float((rgb.max(2) - rgb.min(2)).mean()) >= COLOUR_SPREAD


def grey_flips(parts, p_colour: np.ndarray, threshold: float, grey_probabilities) -> dict:
    """The colour shortcut, measured: among colour test images classified right in colour, the share of non-medical
    ones that become medical when greyed, and of medical ones of colour kinds that become non-medical.

    `p_colour` is p_medical of the parts' images in order; grey_probabilities(parts) gives it for their greyed
    copies (only folder images can be greyed; MedMNIST / CIFAR-10 parts are left out)."""
    chosen, index, offset = [], [], 0
    for part in parts:
        if not isinstance(part.images, np.ndarray):
            pick = [
                i
                for i in range(len(part))
                if (part.labels[i] == dataset.NON_MEDICAL or part.kinds[i] in COLOUR_MEDICAL_KINDS)
                and is_colour(part.images[i])
            ]
            right = [i for i in pick if (p_colour[offset + i] >= threshold) == (part.labels[i] == dataset.MEDICAL)]
            if right:
                chosen.append(part.subset(np.array(right)))
                index += [offset + i for i in right]
        offset += len(part)
    out = {}
    if not chosen:
        return {
            "grey_flip_non_medical": float("nan"),
            "grey_flip_medical": float("nan"),
            "grey_flip_n": {"non_medical": 0, "medical": 0},
        }
    p_grey, labels = grey_probabilities(chosen), np.concatenate([p.labels for p in chosen])
    flipped = (p_grey >= threshold) != (labels == dataset.MEDICAL)
    for name, label in (("non_medical", dataset.NON_MEDICAL), ("medical", dataset.MEDICAL)):
        mask = labels == label
        out[f"grey_flip_{name}"] = float(flipped[mask].mean()) if mask.any() else float("nan")
    out["grey_flip_n"] = {
        "non_medical": int((labels == dataset.NON_MEDICAL).sum()),
        "medical": int((labels == dataset.MEDICAL).sum()),
    }
    return out


def undefined_figures(metrics: dict) -> str | None:
    """A warning naming the figures that came out NaN, and why: no model is saved with NaN figures unsaid."""
    nan = [k for k, v in metrics.items() if isinstance(v, float) and v != v and "grey_flip" not in k]
    if not nan:
        return None
    why = (
        f"a kind-macro accuracy needs a kind with {MIN_KIND_IMAGES} or more images in its split"
        if all("kind_macro" in k for k in nan)
        else "a split lacks a class or has too few images"
    )
    return f"{', '.join(nan)} not a number ({why}); the model is saved, but these figures cannot judge it: add images"


def feature_cache_path(args, parts, views: int) -> str | None:
    """A file name that changes whenever the features would: backbone, images, views, seed."""
    if not args.cache_dir:
        return None
    os.makedirs(args.cache_dir, exist_ok=True)
    key = hashlib.sha1(
        repr(
            (
                args.arch,
                args.backbone_weights,
                views,
                args.seed,
                args.medmnist_size,
                args.fit,
                parse_finetune(args.finetune),
                AUGMENT_VERSION,
                [(p.name, len(p), p.groups[:1], p.groups[-1:]) for p in parts],
                [str(x) for p in parts if not isinstance(p.images, np.ndarray) for x in p.images],
            )
        ).encode()
    ).hexdigest()[:16]
    return os.path.join(args.cache_dir, f"{args.arch}-{key}.pt")


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line, as train.py's other errors."""

    def error(self, message):
        self.exit(2, f"error: {message} (python train.py --help lists every option)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--data",
        default="medmnist+cifar10",
        help="data sources joined with +: medmnist, cifar10, folder:PATH (PATH/medical/..., PATH/non_medical/...)",
    )
    p.add_argument("--arch", default="resnet50", choices=ARCHES, help="ImageNet backbone")
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="local file of the backbone's ImageNet state dict (for offline machines)",
    )
    p.add_argument(
        "--finetune",
        default="head",
        type=finetune_spec,
        help="what is trained: head (frozen backbone), last-N (the last N blocks, the final conv and "
        "the head, on cached activations of the block before them) or all (every layer; a GPU job)",
    )
    p.add_argument(
        "--head-hidden", type=number(int, 0), default=0, help="hidden units of an MLP head; 0 = a linear head"
    )
    p.add_argument(
        "--fit",
        default="crop",
        choices=["crop", "letterbox"],
        help="preprocessing: the centre crop, or the whole image letterboxed on white",
    )
    p.add_argument("--data-dir", default="data", help="where MedMNIST and CIFAR-10 are downloaded or placed")
    p.add_argument("--no-download", action="store_true", help="use only files already in --data-dir")
    p.add_argument(
        "--medmnist-size",
        type=int,
        default=28,
        choices=dataset.MEDMNIST_SIZES,
        help="MedMNIST image size; all twelve files: "
        + ", ".join(f"{s} px {d}" for s, d in dataset.MEDMNIST_DOWNLOAD.items())
        + ". 28 matches CIFAR-10's 32 px, so sharpness is no label cue",
    )
    p.add_argument("--epochs", type=number(int, 1), default=10, help="training epochs")
    p.add_argument(
        "--batch-size", type=number(int, 1), default=None, help="training batch size (None: 256 for head, 64 else)"
    )
    p.add_argument("--feature-batch-size", type=number(int, 1), default=256, help="batch size of the frozen pass")
    p.add_argument(
        "--lr",
        type=number(float, 0, above=True),
        default=1e-3,
        help="Adam learning rate (the peak with --schedule onecycle)",
    )
    p.add_argument("--weight-decay", type=number(float, 0), default=1e-4, help="Adam weight decay")
    p.add_argument("--schedule", default="constant", choices=["constant", "onecycle"], help="learning-rate schedule")
    p.add_argument("--label-smoothing", type=number(float, 0, 1), default=0.0, help="cross-entropy label smoothing")
    p.add_argument(
        "--views",
        type=number(int, 0),
        default=0,
        help="augmented views per folder training image, cached beside the plain one",
    )
    p.add_argument(
        "--mosaic-views",
        type=number(int, 0),
        default=0,
        help="views per folder training image laid among other training images as a compound figure (its label "
        "kept), cached apart",
    )
    p.add_argument(
        "--kind-weight-power",
        type=number(float, 0),
        default=0.0,
        help="weight each training image by (images of its kind)**-POWER within its class; 0 = plain",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for sampling, splits, augmentation and training")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "onnx", "torch"],
        help="the frozen pass on a CPU: auto and onnx use ONNX Runtime (about 6x torch), torch torch",
    )
    p.add_argument(
        "--workers", type=number(int, 0), default=min(8, os.cpu_count() or 1), help="image loading processes"
    )
    p.add_argument(
        "--split-by",
        default="source",
        choices=dataset.SPLIT_BY,
        help="folder data: keep each source (a package, or a GitHub owner's repositories; the manifest's "
        "source_package) on one side of train/val/test, so val and test measure sources never "
        "seen; or each group only",
    )
    p.add_argument(
        "--folds",
        type=number(int, 0),
        default=0,
        help="source-held-out cross-validation: deal the non-test sources into K folds and validate on "
        "--fold (0: one validation split)",
    )
    p.add_argument("--fold", type=number(int, 0), default=0, help="with --folds K: the fold validated on, 0..K-1")
    p.add_argument(
        "--train-on",
        default="train",
        choices=TRAIN_ON,
        help="train+val: once the settings are chosen on validation, train the final model on the validation "
        "sources too (every --epochs epoch is run and the last kept, the threshold comes from --cv-summary or "
        "--threshold, and nothing but --evaluate-test's test split is measured); train+val+test: once that model "
        "has been tested, the model to ship on every source, its held-out figures those of --heldout-from",
    )
    p.add_argument(
        "--threshold",
        type=number(float, 0, 1, above=True),
        default=None,
        help="p_medical at or above which an image is medical (None: chosen on validation for the best balanced "
        "accuracy; with --train-on train+val the median of --cv-summary's folds, or 0.5)",
    )
    p.add_argument(
        "--evaluate-test",
        action="store_true",
        help="look at the test split: print its figures and store them in the checkpoint; do it once, for the model "
        "chosen on validation (without it, only validation is measured)",
    )
    p.add_argument(
        "--cv-summary",
        default=None,
        metavar="FILE",
        help="a cross-validation summary (benchmarks/source_cv.py writes it) stored in the checkpoint's metrics",
    )
    p.add_argument(
        "--keep-epoch",
        default="best",
        choices=["best", "last"],
        help="the epoch saved: the best on validation (kind-macro accuracy), or the last, as the final model "
        "(--train-on train+val) keeps it, so cross-validation folds measure what is shipped",
    )
    p.add_argument(
        "--heldout-from",
        default=None,
        metavar="CHECKPOINT",
        help="with --train-on train+val+test: the same recipe trained on train+val and tested once "
        "(--evaluate-test); its test figures are stored as this model's held-out estimate, saying whose they are",
    )
    p.add_argument(
        "--batchnorm",
        default="frozen",
        choices=["frozen", "update"],
        help="adapted layers keep ImageNet's BatchNorm statistics, or update them on the training data",
    )
    p.add_argument(
        "--resume-training",
        default=None,
        metavar="STATE",
        help="carry on a stopped run from the training state it wrote after its last whole epoch "
        "(training_state.pt beside its checkpoint); the same options are needed",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="keep the frozen pass's outputs here, so a rerun with other training settings skips it",
    )
    p.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        help="where to write the checkpoint (its ONNX twin goes beside it); by default a new folder: "
        "today's date and --arch, with -2, -3, ... for another run that day",
    )
    p.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folds and not args.fold < args.folds:
        parser.error(f"--fold {args.fold}: must be below --folds {args.folds}")
    if args.fold and not args.folds:
        parser.error("--fold needs --folds K")
    if args.folds and args.train_on != "train":
        parser.error(
            f"--folds validates on a fold; --train-on {args.train_on} trains on it (the final model): choose one"
        )
    if args.train_on == "train+val+test" and args.evaluate_test:
        parser.error("--evaluate-test measures the test sources; --train-on train+val+test trains on them")
    if args.heldout_from and args.train_on != "train+val+test":
        parser.error(
            "--heldout-from gives a model trained on every source its held-out figures: it needs "
            "--train-on train+val+test"
        )
    if args.mosaic_views and parse_finetune(args.finetune) is None:
        parser.error("--mosaic-views are cached views; --finetune all streams fresh images and has none")
    return args


STATE_FILE = "training_state.pt"
KEY_DEFAULTS = {
    "train_on": "train",
    "mosaic_views": 0,
    "keep_epoch": "best",
}  # what a state written before an option existed was made with
# what a resumed run must share with the run that wrote the state; other options (--workers, --quiet) may differ
STATE_KEY_ARGS = (
    "data",
    "arch",
    "backbone_weights",
    "finetune",
    "head_hidden",
    "fit",
    "medmnist_size",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "views",
    "mosaic_views",
    "kind_weight_power",
    "seed",
    "split_by",
    "folds",
    "fold",
    "batchnorm",
    "train_on",
    "keep_epoch",
)


def state_key(args, training_parts) -> dict:
    """The options and the training images a state belongs to (a changed corpus changes the digest)."""
    digest = hashlib.sha1()
    for part in training_parts:
        digest.update(part.name.encode())
        digest.update(repr(len(part)).encode())
        if not isinstance(part.images, np.ndarray):
            digest.update("\n".join(map(str, part.images)).encode())
    return {**{k: getattr(args, k) for k in STATE_KEY_ARGS}, "training_images": digest.hexdigest()[:16]}


def output_path(requested: str, arch: str, overwrite: bool, today: datetime.date) -> str:
    """Where the checkpoint goes: --output as given, or a new runs/<date>-<arch>[-N]/ folder; an existing file
    only with --overwrite, so a retraining never replaces a model (the shipped one included) by accident."""
    if requested == DEFAULT_OUTPUT:
        stem = os.path.dirname(DEFAULT_OUTPUT).replace("<date>", today.isoformat()).replace("<arch>", arch)
        n = 1
        while True:
            folder = stem if n == 1 else f"{stem}-{n}"
            if not os.path.exists(folder) or (os.path.isdir(folder) and not os.listdir(folder)):
                return os.path.join(folder, os.path.basename(DEFAULT_OUTPUT))
            n += 1
    if os.path.isdir(requested):
        raise dataset.DataError(
            f"--output {requested} is a folder; give the checkpoint's file name, "
            f"such as {os.path.join(requested, 'best_model.pth')}"
        )
    if os.path.exists(requested) and not overwrite:
        raise dataset.DataError(
            f"--output {requested} exists; pass --overwrite to replace it, or leave --output "
            f"out to write to a new {os.path.dirname(DEFAULT_OUTPUT)}/ folder"
        )
    return requested


def mosaic_pools(parts) -> dict:
    """{label: image paths} over the folder parts of one split: the neighbours its mosaic views draw from."""
    pools = {dataset.MEDICAL: [], dataset.NON_MEDICAL: []}
    for part in parts:
        if not isinstance(part.images, np.ndarray):
            for path, label in zip(part.images, part.labels):
                pools[int(label)].append(path)
    return pools


def frozen_outputs(args, net, splits, trained_blocks: int) -> tuple[dict, int, float]:
    """(split -> (frozen-part outputs, labels, kinds), images the frozen part ran on, its seconds): computed once
    for every split not in --cache-dir, in one pass (train images also as --views views, and as --mosaic-views
    mosaic views under "train-mosaic")."""
    import torch

    cached, todo = {}, []
    for split in dataset.SPLITS:
        trained_on = split in args.train_on.split("+")
        jobs = [(split, splits[split], args.views if trained_on else 0, None)]
        folder_parts = [p for p in splits[split] if not isinstance(p.images, np.ndarray)]
        if trained_on and args.mosaic_views and folder_parts:
            jobs.append((f"{split}-mosaic", folder_parts, args.mosaic_views, mosaic_pools(folder_parts)))
        for name, parts, views, pools in jobs:
            cache_file = feature_cache_path(args, parts, ("mosaic", views, MOSAIC_VERSION) if pools else views)
            if cache_file and os.path.isfile(cache_file):
                saved = torch.load(cache_file, weights_only=True)
                cached[name] = (saved["x"], saved["y"].numpy(), saved["kinds"])
            else:
                todo.append((name, parts, views, pools, cache_file))
    if not todo:
        return cached, 0, 0.0
    t0 = time.perf_counter()
    jobs = [(part, views, pools) for _, parts, views, pools, _ in todo for part in parts]
    results = iter(
        features_by_part(
            net,
            [part for part, _, _ in jobs],
            [views for _, views, _ in jobs],
            desc=f"{'+'.join(name for name, *_ in todo)} frozen pass",
            features=feature_function(net, args.engine, trained_blocks),
            mosaic_pools=[pools for _, _, pools in jobs],
            **pass_options(args),
        )
    )
    ran_s, ran_images = time.perf_counter() - t0, 0
    for name, parts, _, _, cache_file in todo:
        x, y, kinds, unreadable = joined([next(results) for _ in parts], net.feature_dim)
        ran_images += len(x)
        for path in unreadable:
            print(f"warning: skipped unreadable image {path}", file=sys.stderr)
        if cache_file:
            replace_file(cache_file, lambda f: torch.save({"x": x, "y": torch.as_tensor(y), "kinds": kinds}, f))  # noqa: B023
        cached[name] = (x, y, kinds)
    return cached, ran_images, ran_s


def streamed_batches(net, parts, seed: int, batch_size: int, workers: int, weights_of, device):
    """epoch -> batches of freshly augmented training images (--finetune all: nothing to cache)."""
    import torch
    from torch.utils.data import DataLoader

    augment = augmentation(net.preprocess["resize"])

    def batches(epoch):
        for part in parts:
            w, labels = torch.as_tensor(weights_of(part), dtype=torch.float32), torch.as_tensor(part.labels)
            order = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
            data = FileViews(part.images, 1, net.preprocess, augment, seed + epoch)
            view = torch.utils.data.Subset(data, (order + len(part)).tolist())  # view 1: augmented, shuffled
            loader = DataLoader(
                view, batch_size=batch_size, num_workers=workers, collate_fn=_collate, worker_init_fn=_one_thread
            )
            for start, (x, ok) in zip(range(0, len(part), batch_size), loader):
                idx = order[start : start + batch_size][ok]
                if x is not None:
                    yield x.to(device), labels[idx].to(device), w[idx].to(device)

    return batches


def ensure_writable_folder(path: str) -> list[str]:
    """The checkpoint's folder exists and takes files, checked before any work is done. Returns the folders made
    for it, deepest first, so a run refused later can take them away again."""
    folder = os.path.dirname(os.path.abspath(path))
    made, missing = [], folder
    while not os.path.exists(missing):
        made.append(missing)
        missing = os.path.dirname(missing)
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        remove_empty(made)
        raise dataset.DataError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return made


def remove_empty(folders: list[str]) -> None:
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty, or gone: leave it and those above it


def read_cv_summary(path: str) -> dict:
    """benchmarks/source_cv.py's summary: per-fold validation figures and their mean and spread."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as exc:
        raise dataset.DataError(f"--cv-summary {path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(summary, dict) or "folds" not in summary:
        raise dataset.DataError(f"--cv-summary {path}: not a summary written by benchmarks/source_cv.py")
    threshold = summary.get("threshold_median", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise dataset.DataError(f"--cv-summary {path}: threshold_median {threshold!r} is not a number between 0 and 1")
    return summary


def read_heldout(path: str, args, threshold: float) -> tuple[dict, dict]:
    """The test figures of this recipe trained on train+val and tested once, for the model trained on every source
    (which has no test split of its own): its best estimate on sources never seen, stored saying whose they are;
    and the data summary it was trained on, which this run's must equal. Refused when another recipe, threshold
    (`threshold`: this run's) or file made them."""
    import torch

    try:
        raw = torch.load(path, weights_only=True)
        theirs, metrics = raw["training"]["args"], raw["training"]["metrics"]
    except FileNotFoundError:
        raise dataset.DataError(f"--heldout-from {path}: no such file") from None
    except Exception as exc:
        raise dataset.DataError(f"--heldout-from {path}: not a checkpoint of train.py ({type(exc).__name__})") from None
    if os.path.exists(args.output) and os.path.samefile(path, args.output):
        raise dataset.DataError(f"--heldout-from {path} is --output: the model it describes would be replaced")
    if theirs.get("train_on") != "train+val" or not metrics.get("test_evaluated"):
        raise dataset.DataError(
            f"--heldout-from {path}: trained on {theirs.get('train_on')}, test "
            f"{'measured' if metrics.get('test_evaluated') else 'not measured'}; it must be this recipe trained on "
            "train+val with --evaluate-test"
        )
    differs = key_differences(
        theirs, {k: getattr(args, k) for k in STATE_KEY_ARGS if k not in ("train_on", "keep_epoch")}
    )
    if differs:
        raise dataset.DataError(f"--heldout-from {path}: another recipe: {'; '.join(differs)}")
    if abs(float(raw["threshold"]) - threshold) > 1e-6:
        raise dataset.DataError(
            f"--heldout-from {path}: its figures were measured at threshold {float(raw['threshold']):.4f}, this "
            f"model's is {threshold:.4f}; give both the same --cv-summary or --threshold"
        )
    figures = {k: v for k, v in metrics.items() if k.startswith("test_") and k != "test_evaluated"}
    return raw["training"].get("data", {}), figures | {
        "test_of": {
            "checkpoint": path,
            "sha256": engine.file_digest(path),
            "trained_on": "train+val",
            "threshold": float(raw["threshold"]),
            "why": "this model trained on the test sources too; these are the figures of the same recipe "
            "trained without them, on sources it never saw",
        }
    }


def decision_threshold(args, val, cv_summary: dict | None) -> tuple[float, str]:
    """The threshold and where it came from: --threshold; else the one validation (p, labels, kinds) chooses; with no
    validation (--train-on train+val) the median of the cross-validation folds' own, else 0.5."""
    if args.threshold is not None:
        return args.threshold, "--threshold"
    if val is not None:
        return choose_threshold(val[0], val[1]), "validation"
    if cv_summary and "threshold_median" in cv_summary:
        if any(f.get("best_epoch") not in (None, args.epochs) for f in cv_summary["folds"]):
            warn(
                "the folds' thresholds were chosen at their best epochs ("
                + ", ".join(str(f.get("best_epoch")) for f in cv_summary["folds"])
                + f"), this model keeps epoch {args.epochs}: the threshold may sit off for it"
            )
        return cv_summary["threshold_median"], "the cross-validation folds' median"
    if cv_summary:
        warn(f"--cv-summary {args.cv_summary} has no threshold_median (an older summary): the threshold is 0.5")
    return 0.5, "no validation: 0.5"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    trained_blocks = parse_finetune(args.finetune)
    batch_size = args.batch_size or (256 if trained_blocks == 0 else 64)
    timings = {}
    made = []
    try:
        if args.resume_training:
            if not os.path.isfile(args.resume_training):
                raise dataset.DataError(f"--resume-training {args.resume_training}: no such file")
            if args.output == DEFAULT_OUTPUT:  # the stopped run's own folder
                args.output = os.path.join(os.path.dirname(args.resume_training), "best_model.pth")
        args.output = output_path(args.output, args.arch, args.overwrite, datetime.date.today())
        made = ensure_writable_folder(args.output)
        try:
            import torch  # noqa: F401  (before any data is read: the CPU-only install has no torch)
        except ImportError:
            raise dataset.DataError(
                "training needs torch, which this install lacks (requirements-cli.txt is the "
                "classification-only install): pip install -r requirements.txt"
            ) from None
        cv_summary = read_cv_summary(args.cv_summary) if args.cv_summary else None
        # a final model has no validation: its threshold is known now, and held-out figures must share it
        final_threshold = decision_threshold(args, None, cv_summary) if args.train_on != "train" else None
        heldout_data, heldout = (
            read_heldout(args.heldout_from, args, final_threshold[0]) if args.heldout_from else ({}, {})
        )
        if args.resume_training:  # the options are checked before any data is read; the images once they are
            TrainingState(args.resume_training, {}, resume=True).load({k: getattr(args, k) for k in STATE_KEY_ARGS})
        t0 = time.perf_counter()
        parts = dataset.load_sources(
            args.data,
            args.data_dir,
            args.medmnist_size,
            not args.no_download,
            args.seed,
            args.split_by,
            args.folds,
            args.fold,
        )
        for warning in dataset.check_split_sizes(parts, args.data):
            warn(warning)
        splits = dataset.balanced_splits(parts, args.seed)
        timings["load_data_s"] = time.perf_counter() - t0
        summary = dataset.summarize(splits)
        if heldout and heldout_data != summary:
            raise dataset.DataError(
                f"--heldout-from {args.heldout_from}: trained on other data (its splits' images by kind differ from "
                "this run's): another corpus, or the corpus has changed since"
            )
        for split, counts in summary.items():
            print(f"{split}: {sum(counts.values())} images  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        import torch
        from torch import nn

        import model as model_lib

        torch.manual_seed(args.seed)
        device = model_lib.select_device(args.device)
        t0 = time.perf_counter()
        net = model_lib.build_model(args.arch, args.backbone_weights, device, args.head_hidden)
        net.set_preprocess({**net.preprocess, "fit": args.fit})
        if trained_blocks is not None:
            net.backbone.split(trained_blocks)  # checks N against the backbone's blocks
        timings["build_model_s"] = time.perf_counter() - t0
    except (dataset.DataError, engine.EngineError) as exc:  # model.ModelError is an EngineError
        remove_empty(made)  # a refused run leaves no empty runs/<date>-<arch>/ behind
        print(f"error: {exc}", file=sys.stderr)
        return 2

    trained_splits = args.train_on.split("+")
    final_model = len(trained_splits) > 1  # no validation: every epoch runs and the last is kept
    measured_splits = ([] if final_model else ["val"]) + (["test"] if args.evaluate_test else [])
    training_parts = [part for split in trained_splits for part in splits[split]]
    if args.train_on == "train+val":
        print(
            "training on train+val: the validation sources are trained on, so the last epoch is kept and only "
            + ("the test split is measured" if args.evaluate_test else "--evaluate-test could measure anything")
        )
    elif final_model:
        print(
            "training on train+val+test: every source is trained on, so the last epoch is kept and nothing is "
            + ("measured; the held-out figures stored are those of " + args.heldout_from if heldout else "measured")
        )
    if trained_blocks is None:  # every layer: augmented images streamed each epoch, nothing cached
        t0 = time.perf_counter()
        net.backbone.requires_grad_(True)
        net.trained_stages = list(range(len(net.backbone)))
        if device.type == "cpu":  # about 1.8x on these CPUs (the prepared NHWC batch is channels_last already)
            net.to(memory_format=torch.channels_last)
        trainable = net
        as_is = lambda batch: batch  # validation and test keep their prepared uint8 images
        cached = {
            s: compute_features(net, splits[s], desc=f"{s} images", features=as_is, **pass_options(args))[:3]
            for s in measured_splits
        }
        train_parts = training_parts
        all_w = dataset.kind_weights(
            np.concatenate([p.labels for p in train_parts]),
            [k for p in train_parts for k in p.kinds],
            args.kind_weight_power,
        )
        starts = dict(zip(map(id, train_parts), np.cumsum([0] + [len(p) for p in train_parts])))
        weights_of = lambda part: all_w[starts[id(part)] : starts[id(part)] + len(part)]
        epoch_batches = streamed_batches(net, train_parts, args.seed, batch_size, args.workers, weights_of, device)
        steps = sum(-(-len(p) // batch_size) for p in train_parts)
        timings["frozen_pass_s"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        cached, ran_images, ran_s = frozen_outputs(args, net, splits, trained_blocks)
        timings["frozen_pass_s"] = time.perf_counter() - t0
        from_cache = sum(len(v[0]) for v in cached.values()) - ran_images
        if ran_images:  # a rate only for images the frozen part really ran on
            print(
                f"frozen pass: {ran_images} images in {ran_s:.1f} s ({ran_images / ran_s:.0f} images/s on {device})"
                + (f"; features of {from_cache} more from the cache in {args.cache_dir}" if from_cache else "")
            )
        else:
            print(f"frozen pass: none run; features of {from_cache} images from the cache in {args.cache_dir}")
        if trained_blocks:
            bottom, top = net.backbone.split(trained_blocks)
            net.trained_stages = list(range(len(bottom), len(net.backbone)))
            trainable = nn.Sequential(top.requires_grad_(True), net.head)
        else:
            trainable = net.head
        rows = [name for split in trained_splits for name in (split, f"{split}-mosaic")]  # with their views
        rows = [cached.pop(name) for name in rows if name in cached]
        cached["train"] = (
            torch.cat([x for x, _, _ in rows]),
            np.concatenate([y for _, y, _ in rows]),
            [k for _, _, kinds in rows for k in kinds],
        )
        train_x, train_y, train_kinds = cached["train"]
        weights = dataset.kind_weights(train_y, train_kinds, args.kind_weight_power)
        epoch_batches = cached_batches(train_x, train_y, weights, batch_size, device, args.seed)
        steps = -(-len(train_x) // batch_size)

    trainable.to(device)
    val_x, val_y, val_kinds = cached.get("val", (None, None, None))
    t0 = time.perf_counter()
    state = TrainingState(
        args.resume_training or os.path.join(os.path.dirname(args.output), STATE_FILE),
        state_key(args, training_parts),
        resume=bool(args.resume_training),
    )
    try:
        best_epoch, history = fit(
            trainable,
            epoch_batches,
            None if final_model else lambda: probabilities(trainable, val_x, device),
            val_y,
            val_kinds,
            args.epochs,
            args.lr,
            args.weight_decay,
            args.label_smoothing,
            args.schedule,
            steps,
            batchnorm=args.batchnorm,
            state=state,
            quiet=args.quiet,
            keep=args.keep_epoch,
        )
    except dataset.DataError as exc:  # a state of another run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        done = os.path.isfile(state.path)
        print(
            "\nstopped: "
            + (
                f"the last whole epoch's state is in {state.path}; carry on with the same options and "
                f"--resume-training {shlex.quote(state.path)}"
                if done
                else "no epoch had finished"
            ),
            file=sys.stderr,
        )
        return 130
    timings["training_s"] = time.perf_counter() - t0

    apart = (
        dataset.single_source_kinds([p for split in dataset.SPLITS for p in splits[split]])
        if args.split_by == "source"
        else []
    )
    measured = {
        name: (probabilities(trainable, cached[name][0], device), *cached[name][1:]) for name in measured_splits
    }
    net.threshold, threshold_from = final_threshold or decision_threshold(args, measured.get("val"), cv_summary)
    measured = {name: (p, evaluate(p, y, k, net.threshold, apart)) for name, (p, y, k) in measured.items()}
    grey_input = as_is if trained_blocks is None else None

    def grey_probabilities(split, parts):
        run = grey_input or feature_function(net, args.engine, trained_blocks)
        x = compute_features(
            net,
            parts,
            desc=f"greyed {split} images",
            features=run,
            transform=lambda im: im.convert("L").convert("RGB"),
            **pass_options(args),
        )[0]
        return probabilities(trainable, x, device)

    kept = "last" if final_model or args.keep_epoch == "last" else "best"
    print(f"{kept} epoch {best_epoch}, threshold {net.threshold:.3f} ({threshold_from})")
    metrics = {
        "split_by": args.split_by,
        "trained_on": args.train_on,
        "trained_images": sum(len(part) for part in training_parts),  # before views
        "best_epoch": best_epoch,
        "threshold_from": threshold_from,
        "test_evaluated": args.evaluate_test,
    }
    for name, (p, m) in measured.items():
        flips = grey_flips(splits[name], p, net.threshold, functools.partial(grey_probabilities, name))
        print(
            f"{name}: {m['n']} images, accuracy {m['accuracy']:.4f}, kind-macro accuracy "
            f"{m['kind_macro_accuracy']:.4f}, AUROC {m['auroc']:.4f}, recall medical {m['recall_medical']:.4f}, "
            f"recall non-medical {m['recall_non_medical']:.4f}"
        )
        print(
            f"greyed colour {name} images that change label: non-medical -> medical "
            f"{flips['grey_flip_non_medical']:.3f} of {flips['grey_flip_n']['non_medical']}, medical -> non-medical "
            f"{flips['grey_flip_medical']:.3f} of {flips['grey_flip_n']['medical']}"
        )
        if apart:
            print(
                f"kinds of a single source (reported apart, {name}): "
                + (
                    ", ".join(f"{k} {v['accuracy']:.2f}/{v['n']}" for k, v in m["single_source_kinds"].items())
                    or "none"
                )
            )
        print(f"{name} confusion (rows true, columns predicted; medical, non-medical):")
        for label, row in zip(model_lib.CLASSES, m["confusion"]):
            print(f"  {label:12s} {row[0]:6d} {row[1]:6d}")
        figures = ("accuracy", "balanced_accuracy", "recall_medical", "recall_non_medical", "auroc")
        figures += ("kind_macro_accuracy", "per_kind", "confusion", "n", "single_source_kinds")
        metrics.update({f"{name}_{k}": m[k] for k in figures})
        metrics.update({f"{name}_{k}": v for k, v in flips.items()})

    def kind_cell(m, kind):
        cell = m["per_kind"].get(kind, {"accuracy": float("nan"), "n": 0})
        return f"{cell['accuracy']:.2f}/{cell['n']}"

    kinds = sorted(set().union(*(m["per_kind"] for _, m in measured.values())))
    if measured:
        print(
            f"per kind (accuracy/images, {' | '.join(measured)}): "
            + "; ".join(f"{k} " + " | ".join(kind_cell(m, k) for _, m in measured.values()) for k in kinds)
        )
    if heldout:
        metrics.update(heldout)
    elif args.train_on == "train+val+test":
        print("no held-out figures: --heldout-from gives those of this recipe trained on train+val and tested")
    elif not args.evaluate_test:
        print("test split not looked at: --evaluate-test measures it, once, for the model you choose")
    if cv_summary:
        metrics.update({f"cv_{k}": v for k, v in cv_summary.items()})
    problem = undefined_figures(metrics)
    if problem:
        warn(problem)
    training = {
        "args": {k: v for k, v in vars(args).items()},
        "data": summary,
        "metrics": metrics,
        "history": history,
        "timings_s": timings,
        "device": str(device),
        "command": "python train.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    net.to("cpu")
    model_lib.save_checkpoint(net, args.output, training)
    print(f"saved {args.output}")
    net.training_info = training
    print(f"saved {model_lib.export_beside(args.output, net)} (its ONNX twin, which the CLI runs on a CPU)")
    print(f"classify with it: python final_classification_script.py INPUT --model {shlex.quote(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
