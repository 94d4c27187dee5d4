"""Retrain the medical / non-medical head on a frozen ImageNet backbone.

The backbone never changes, so its features are computed once (plus a few
augmented views per folder image) and the head is trained on the cache.
The best epoch by validation accuracy is saved as a self-describing checkpoint.
"""
import argparse
import hashlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T
from tqdm import tqdm

import dataset
import engine
import model as model_lib


def augmentation(size: int) -> T.Compose:
    """What real inputs do to an image: crops, rescaling, borders, colour, greyscale, JPEG (PIL in, PIL out)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.6, 1.67), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.RandomZoomOut(fill=255, side_range=(1.0, 1.4))], p=0.15),
        T.RandomApply([T.RandomZoomOut(fill=0, side_range=(1.0, 1.4))], p=0.1),
        T.RandomApply([T.ColorJitter(0.3, 0.3, 0.25, 0.03)], p=0.5),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.RandomChoice([T.Resize(s, antialias=True) for s in (48, 64, 96, 128)]),
                       T.Resize(size, antialias=True)], p=0.25),
        T.RandomApply([RandomJPEG((25, 90))], p=0.5),
    ])


class RandomJPEG(nn.Module):
    """Re-encode an RGB PIL image as JPEG at a random quality."""

    def __init__(self, quality: tuple[int, int]):
        super().__init__()
        self.quality = quality

    def forward(self, image: Image.Image) -> Image.Image:
        quality = int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")


class FileViews(Dataset):
    """Image files as (view, index) pairs, prepared as the engines prepare them: view 0 plain, later views augmented."""

    def __init__(self, paths, views: int, preprocess: dict, augment, seed: int):
        self.paths, self.views, self.preprocess, self.augment, self.seed = paths, views, preprocess, augment, seed

    def __len__(self):
        return len(self.paths) * (1 + self.views)

    def __getitem__(self, i):
        view, index = divmod(i, len(self.paths))
        try:
            with Image.open(self.paths[index]) as im:
                image = engine.to_rgb(im)
                image.load()
        except Exception:
            return None
        if view:
            torch.manual_seed(self.seed * 1_000_003 + index * 101 + view)
            image = self.augment(image)
        return engine.prepare(image, self.preprocess)


class ArrayImages(Dataset):
    """uint8 (N, H, W[, 3]) arrays (MedMNIST, CIFAR-10), prepared as the engines prepare any image."""

    def __init__(self, images: np.ndarray, preprocess: dict):
        self.images, self.preprocess = images, preprocess

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return engine.prepare(Image.fromarray(self.images[i]), self.preprocess)


def _collate(batch):
    ok = [b is not None for b in batch]
    arrays = [b for b in batch if b is not None]
    return (torch.from_numpy(np.stack(arrays)) if arrays else None), torch.tensor(ok)


def _one_thread(_worker_id):
    torch.set_num_threads(1)  # decoding workers must not fight the backbone for cores


def feature_function(net, engine_name: str = "auto"):
    """uint8 (N, H, W, 3) batch -> backbone features (N, D) on the CPU.

    On a CPU the frozen backbone runs on ONNX Runtime (about 6x torch there); elsewhere on torch.
    """
    if net.device.type == "cpu" and engine_name != "torch" and engine.onnxruntime_available():
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = model_lib.export_onnx(net, os.path.join(folder, "features.onnx"), "training")
                run = engine.onnx_runner(path, engine.ONNX_FEATURES)
            return lambda batch: torch.from_numpy(run(batch.numpy()))
        except ImportError as exc:  # onnx missing: torch still works
            print(f"note: feature pass on torch ({exc})", file=sys.stderr)
    return lambda batch: net.features(batch).float().cpu()


@torch.inference_mode()
def compute_features(model, parts, batch_size=64, workers=0, views=0, seed=0, desc="features", features=None):
    """Backbone features of every image of `parts` (folder images also as `views` augmented copies).

    `features` is a feature_function (made here when not given). Returns features (M, D) on the
    CPU, labels, kinds, and the paths of unreadable files.
    """
    feats, labels, kinds, unreadable = [], [], [], []
    total = sum(len(p) * (1 + (views if not isinstance(p.images, np.ndarray) else 0)) for p in parts)
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=total < 64)
    augment = augmentation(model.preprocess["resize"])
    features = features or feature_function(model)
    for part in parts:
        if isinstance(part.images, np.ndarray):
            data, n_views = ArrayImages(part.images, model.preprocess), 1
        else:
            data, n_views = FileViews(part.images, views, model.preprocess, augment, seed), 1 + views
        batches = DataLoader(data, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                             worker_init_fn=_one_thread, pin_memory=model.device.type == "cuda")
        ok_all = []
        for batch, ok in batches:
            if batch is not None:
                feats.append(features(batch))
            ok_all.append(ok)
            bar.update(len(ok))
        ok_all = torch.cat(ok_all).numpy() if ok_all else np.zeros(0, bool)
        index = np.tile(np.arange(len(part)), n_views)[ok_all]
        labels.append(part.labels[index])
        kinds += [part.kinds[i] for i in index]
        unreadable += sorted({part.images[i] for i in np.tile(np.arange(len(part)), n_views)[~ok_all]})
    bar.close()
    dim = model.head.in_features
    return (torch.cat(feats) if feats else torch.zeros(0, dim), np.concatenate(labels) if labels else np.zeros(0, int),
            kinds, unreadable)


def fit_head(head: nn.Linear, train_x, train_y, train_w, val_x, val_y, epochs=10, batch_size=256, lr=1e-3,
             weight_decay=1e-4, seed=0, log=print):
    """Adam + (weighted) cross-entropy on cached features; returns the best epoch's state and the history."""
    device = head.weight.device
    generator = torch.Generator().manual_seed(seed)
    x, y, w = train_x.to(device), torch.as_tensor(train_y).to(device), torch.as_tensor(train_w, dtype=torch.float32).to(device)
    vx, vy = val_x.to(device), torch.as_tensor(val_y).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, history = None, []
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        total_loss = correct = 0.0
        for start in tqdm(range(0, len(x), batch_size), desc=f"epoch {epoch}/{epochs}", unit="batch",
                          file=sys.stderr, leave=False, disable=len(x) < 20 * batch_size):
            idx = order[start:start + batch_size]
            logits = head(x[idx])
            loss = (nn.functional.cross_entropy(logits, y[idx], reduction="none") * w[idx]).sum() / w[idx].sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
        head.eval()
        with torch.no_grad():
            val_logits = head(vx) if len(vx) else torch.zeros(0, 2, device=device)
            val_loss = nn.functional.cross_entropy(val_logits, vy).item() if len(vx) else float("nan")
            val_acc = (val_logits.argmax(1) == vy).float().mean().item() if len(vx) else float("nan")
        row = {"epoch": epoch, "train_loss": total_loss / max(len(x), 1), "train_accuracy": correct / max(len(x), 1),
               "val_loss": val_loss, "val_accuracy": val_acc}
        history.append(row)
        log(f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}")
        key = (val_acc if val_acc == val_acc else -1.0, -val_loss if val_loss == val_loss else 0.0)
        if best is None or key > best[0]:
            best = (key, epoch, {k: v.detach().clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    return best[1], history


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
    return np.mean([(pred[labels == c] == c).mean() for c in (dataset.MEDICAL, dataset.NON_MEDICAL) if (labels == c).any()])


def evaluate(p_medical: np.ndarray, labels: np.ndarray, kinds, threshold: float) -> dict:
    """Accuracy, recalls, confusion matrix (rows: true medical, non-medical) and accuracy per kind."""
    pred = np.where(p_medical >= threshold, dataset.MEDICAL, dataset.NON_MEDICAL)
    recall = lambda c: float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan")
    confusion = [[int(((labels == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    by_kind = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        by_kind[kind] = {"n": int(mask.sum()), "accuracy": float((pred[mask] == labels[mask]).mean())}
    return {"accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
            "recall_medical": recall(dataset.MEDICAL), "recall_non_medical": recall(dataset.NON_MEDICAL),
            "confusion": confusion, "by_kind": by_kind, "n": int(len(labels))}


def head_probabilities(head: nn.Linear, features: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return head(features.to(head.weight.device)).softmax(1)[:, model_lib.MEDICAL].cpu().numpy()


def feature_cache_path(args, parts, views: int) -> str | None:
    """A file name that changes whenever the features would: backbone, images, views, seed."""
    if not args.cache_dir:
        return None
    os.makedirs(args.cache_dir, exist_ok=True)
    key = hashlib.sha1(repr((args.arch, args.backbone_weights, views, args.seed, args.medmnist_size,
                             [(p.name, len(p), p.groups[:1], p.groups[-1:]) for p in parts],
                             [str(x) for p in parts if not isinstance(p.images, np.ndarray) for x in p.images]
                             )).encode()).hexdigest()[:16]
    return os.path.join(args.cache_dir, f"{args.arch}-{key}.pt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="medmnist+cifar10",
                   help="data sources joined with +: medmnist, cifar10, folder:PATH (PATH/medical/..., PATH/non_medical/...)")
    p.add_argument("--arch", default="resnet50", choices=sorted(model_lib.BACKBONES), help="frozen backbone")
    p.add_argument("--backbone-weights", default=None,
                   help="local file of the backbone's ImageNet state dict (for offline machines)")
    p.add_argument("--data-dir", default="data", help="where MedMNIST and CIFAR-10 are downloaded or placed")
    p.add_argument("--no-download", action="store_true", help="use only files already in --data-dir")
    p.add_argument("--medmnist-size", type=int, default=28, choices=dataset.MEDMNIST_SIZES,
                   help="MedMNIST image size; all twelve files: "
                        + ", ".join(f"{s} px {d}" for s, d in dataset.MEDMNIST_DOWNLOAD.items())
                        + ". 28 matches CIFAR-10's 32 px, so sharpness is no label cue")
    p.add_argument("--epochs", type=int, default=10, help="head training epochs")
    p.add_argument("--batch-size", type=int, default=256, help="head training batch size")
    p.add_argument("--feature-batch-size", type=int, default=256, help="batch size of the backbone pass")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay")
    p.add_argument("--views", type=int, default=0,
                   help="augmented views per folder training image, cached beside the plain one")
    p.add_argument("--kind-weight-power", type=float, default=0.0,
                   help="weight each training image by (images of its kind)**-POWER within its class; 0 = plain")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling, splits, augmentation and training")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                   help="the backbone pass on a CPU: auto and onnx use ONNX Runtime (about 6x torch), torch torch")
    p.add_argument("--workers", type=int, default=2, help="image loading processes for folder sources")
    p.add_argument("--cache-dir", default=None,
                   help="keep backbone features here, so a rerun with other head settings skips the backbone")
    p.add_argument("--output", default="best_model.pth", help="where to write the best checkpoint")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    timings = {}
    try:
        device = model_lib.select_device(args.device)
        t0 = time.perf_counter()
        parts = dataset.load_sources(args.data, args.data_dir, args.medmnist_size, not args.no_download, args.seed)
        splits = dataset.balanced_splits(parts, args.seed)
        timings["load_data_s"] = time.perf_counter() - t0
        summary = dataset.summarize(splits)
        for split, counts in summary.items():
            print(f"{split}: {sum(counts.values())} images  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if not splits["train"] or not splits["val"]:
            raise dataset.DataError(f"{args.data}: too few images/groups for train and validation splits")
        t0 = time.perf_counter()
        net = model_lib.build_model(args.arch, args.backbone_weights, device)
        timings["build_model_s"] = time.perf_counter() - t0
    except (dataset.DataError, model_lib.ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    cached, features = {}, None
    t0 = time.perf_counter()
    for split in dataset.SPLITS:
        views = args.views if split == "train" else 0
        cache_file = feature_cache_path(args, splits[split], views)
        if cache_file and os.path.isfile(cache_file):
            saved = torch.load(cache_file, weights_only=True)
            x, y, kinds, unreadable = saved["x"], saved["y"].numpy(), saved["kinds"], []
        else:
            features = features or feature_function(net, args.engine)
            x, y, kinds, unreadable = compute_features(net, splits[split], args.feature_batch_size, args.workers,
                                                       views, args.seed, f"{split} features", features)
            if cache_file:
                torch.save({"x": x, "y": torch.as_tensor(y), "kinds": kinds}, cache_file)
        for path in unreadable:
            print(f"warning: skipped unreadable image {path}", file=sys.stderr)
        cached[split] = (x, y, kinds)
    timings["features_s"] = time.perf_counter() - t0
    n_feat = sum(len(v[0]) for v in cached.values())
    print(f"features: {n_feat} images in {timings['features_s']:.1f} s ({n_feat / timings['features_s']:.0f} images/s on {device})")

    train_x, train_y, train_kinds = cached["train"]
    weights = dataset.kind_weights(train_y, train_kinds, args.kind_weight_power)
    t0 = time.perf_counter()
    best_epoch, history = fit_head(net.head, train_x, train_y, weights, cached["val"][0], cached["val"][1],
                                   args.epochs, args.batch_size, args.lr, args.weight_decay, args.seed)
    timings["head_training_s"] = time.perf_counter() - t0

    val_p = head_probabilities(net.head, cached["val"][0])
    net.threshold = choose_threshold(val_p, cached["val"][1])
    val_metrics = evaluate(val_p, cached["val"][1], cached["val"][2], net.threshold)
    test_x, test_y, test_kinds = cached["test"]
    test = evaluate(head_probabilities(net.head, test_x), test_y, test_kinds, net.threshold)
    print(f"best epoch {best_epoch}, threshold {net.threshold:.3f}; val accuracy {val_metrics['accuracy']:.4f}")
    print(f"test: {test['n']} images, accuracy {test['accuracy']:.4f}, recall medical {test['recall_medical']:.4f}, "
          f"recall non-medical {test['recall_non_medical']:.4f}")
    print("confusion (rows true, columns predicted; medical, non-medical):")
    for name, row in zip(model_lib.CLASSES, test["confusion"]):
        print(f"  {name:12s} {row[0]:6d} {row[1]:6d}")
    metrics = {"test_accuracy": test["accuracy"], "test_recall_medical": test["recall_medical"],
               "test_recall_non_medical": test["recall_non_medical"], "test_confusion": test["confusion"],
               "test_n": test["n"], "test_by_kind": test["by_kind"], "val_accuracy": val_metrics["accuracy"],
               "best_epoch": best_epoch}
    training = {"args": {k: v for k, v in vars(args).items()}, "data": summary, "metrics": metrics,
                "history": history, "timings_s": timings, "device": str(device),
                "command": "python train.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    net.to("cpu")
    model_lib.save_checkpoint(net, args.output, training)
    print(f"saved {args.output}")
    net.training_info = training
    print(f"saved {model_lib.export_beside(args.output, net)} (its ONNX twin, which the CLI runs on a CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
