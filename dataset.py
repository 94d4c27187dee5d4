"""Training data: image folders, MedMNIST 2D and CIFAR-10, balanced and split.

Every source becomes a `Part`: labels, kinds, groups, a split per image and the
images themselves (file paths, or a uint8 array kept small in memory and resized
later on the device). Balancing and splitting work on the labels alone.
"""

import csv
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MEDICAL, NON_MEDICAL = 0, 1  # the order of model.CLASSES
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

MEDMNIST_2D = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)
MEDMNIST_SIZES = (28, 64, 128, 224)
# Approximate download size of all twelve 2D files at each size (28 px: the published file sizes added up).
MEDMNIST_DOWNLOAD = {28: "about 0.6 GB", 64: "about 2.5 GB", 128: "about 9 GB", 224: "about 25 GB"}
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class DataError(Exception):
    """Training data missing or malformed; the message says what to place where."""


@dataclass
class Part:
    """One source's images with their labels, kinds, groups and splits."""

    name: str
    images: object  # list of file paths, or a uint8 array (N, H, W) / (N, H, W, 3)
    labels: np.ndarray
    kinds: list
    groups: list
    splits: np.ndarray  # "train" / "val" / "test" per image
    stratum: list = field(default_factory=list)  # what balancing spreads the larger class over
    sources: list = field(default_factory=list)  # where each image was published (source_key), if known

    def __len__(self):
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "Part":
        take = lambda seq: [seq[i] for i in index]
        images = self.images[index] if isinstance(self.images, np.ndarray) else take(self.images)
        return Part(
            self.name,
            images,
            self.labels[index],
            take(self.kinds),
            take(self.groups),
            self.splits[index],
            take(self.stratum),
            take(self.sources) if self.sources else [],
        )


# ---------------------------------------------------------------- balancing and splitting


def even_quota(sizes: Sequence[int], total: int) -> list[int]:
    """Spread `total` evenly over strata; a stratum smaller than its share gives all it has."""
    quota, left, open_ = [0] * len(sizes), total, sorted(range(len(sizes)), key=lambda i: sizes[i])
    while open_ and left > 0:
        share = left // len(open_)
        i = open_[0]
        if sizes[i] <= share:
            quota[i] = sizes[i]
            left -= sizes[i]
            open_.pop(0)
        else:  # every remaining stratum can give its share; hand out the remainder one by one
            for rank, j in enumerate(open_):
                quota[j] = share + (1 if rank < left - share * len(open_) else 0)
            break
    return quota


def balance(labels: np.ndarray, strata: Sequence[str], seed: int) -> np.ndarray:
    """Indices that keep the smaller class whole and sample the larger down to its size, evenly by stratum."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    counts = [int((labels == c).sum()) for c in (MEDICAL, NON_MEDICAL)]
    target = min(counts)
    keep = []
    for cls in (MEDICAL, NON_MEDICAL):
        idx = np.flatnonzero(labels == cls)
        names = sorted({strata[i] for i in idx})
        members = [idx[[strata[i] == name for i in idx]] for name in names]
        for group, n in zip(members, even_quota([len(m) for m in members], target)):
            keep.append(rng.choice(group, size=n, replace=False) if n < len(group) else group)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, int)


def group_split(
    labels: np.ndarray, kinds: Sequence[str], groups: Sequence[str], fractions=(0.7, 0.15, 0.15), seed: int = 0
) -> np.ndarray:
    """Assign whole groups to train/val/test so no group is on two sides.

    Within each (label, kind), groups go largest first to the split furthest below
    its share, so every kind reaches every split when it has enough groups.
    """
    rng = np.random.default_rng(seed)
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict = {}
    for g, idx in members.items():
        first = idx[0]
        by_stratum.setdefault((int(labels[first]), kinds[first]), []).append(g)
    out = np.empty(len(labels), dtype=object)
    for key in sorted(by_stratum, key=str):
        names = by_stratum[key]
        rng.shuffle(names)
        names.sort(key=lambda g: -len(members[g]))  # stable: ties keep the shuffled order
        total = sum(len(members[g]) for g in names)
        filled = [0.0] * len(SPLITS)
        for g in names:
            deficit = [fractions[s] * total - filled[s] for s in range(len(SPLITS))]
            s = int(np.argmax(deficit))
            filled[s] += len(members[g])
            out[members[g]] = SPLITS[s]
    return out


# Accounts that publish one repository per public dataset through one pipeline: held out as one source.
SAME_PIPELINE_OWNERS = {"sarah-antillia": "antillia", "atlan-antillia": "antillia"}
SPLIT_BY = ("group", "source")


def source_key(source_package: str) -> str:
    """Where an image was published, without version or commit: a PyPI or Debian package, or a GitHub owner as a
    whole (an owner's repositories share a pipeline, and some owners' several accounts do too).

    'pypi:dipy==1.12.1' -> 'pypi:dipy'; 'debian:opencv-doc=4.6.0' -> 'debian:opencv-doc';
    'github:atlan-antillia/EfficientNet-Pap-Smear@3f1e' -> 'github:antillia'.
    """
    text = source_package.strip()
    scheme, _, rest = text.partition(":")
    if not rest:
        return text
    if scheme == "github":
        owner = rest.split("@")[0].split("/")[0].lower()
        return f"github:{SAME_PIPELINE_OWNERS.get(owner, owner)}"
    return f"{scheme}:{re.split(r'==|=|@', rest)[0]}"


def _assign_sources(
    labels: np.ndarray, kinds: Sequence[str], sources: Sequence[str], fractions, seed: int, names: Sequence[str]
) -> np.ndarray:
    """Whole sources to the named shares: largest first, each to the share furthest below its target on the
    (label, kind) strata the source holds, rare strata counting as much as common ones."""
    rng = np.random.default_rng(seed)
    strata = [(int(label), kind) for label, kind in zip(labels, kinds)]
    totals: dict = {}
    for s in strata:
        totals[s] = totals.get(s, 0) + 1
    members: dict = {}
    for i, source in enumerate(sources):
        members.setdefault(source, []).append(i)
    order = sorted(members)
    rng.shuffle(order)
    order.sort(key=lambda s: -len(members[s]))  # stable: ties keep the shuffled order
    filled = [dict.fromkeys(totals, 0) for _ in names]
    size = [0] * len(names)
    out = np.empty(len(labels), dtype=object)
    for source in order:
        counts: dict = {}
        for i in members[source]:
            counts[strata[i]] = counts.get(strata[i], 0) + 1
        n_source = len(members[source])
        # the deficit on the source's own strata, and on the share's size, each as a fraction of its target
        score = [
            sum(n * (fractions[j] * totals[s] - filled[j][s]) / totals[s] for s, n in counts.items()) / n_source
            + (fractions[j] * len(labels) - size[j]) / len(labels)
            for j in range(len(names))
        ]
        j = int(np.argmax(score))
        for s, n in counts.items():
            filled[j][s] += n
        size[j] += n_source
        out[members[source]] = names[j]
    return out


def source_split(
    labels: np.ndarray,
    kinds: Sequence[str],
    sources: Sequence[str],
    fractions=(0.7, 0.15, 0.15),
    seed: int = 0,
    folds: int = 0,
    fold: int = 0,
) -> np.ndarray:
    """train/val/test with every source on one side only, so validation and test measure sources never seen.

    With `folds` K > 1, the test sources stay as they are and the other sources are dealt into K folds by the
    same rule: fold `fold` is validation, the rest train (source-held-out cross-validation)."""
    out = _assign_sources(labels, kinds, sources, fractions, seed, SPLITS)
    if folds > 1:
        rest = np.flatnonzero(out != "test")
        fold_of = _assign_sources(
            labels[rest],
            [kinds[i] for i in rest],
            [sources[i] for i in rest],
            [1 / folds] * folds,
            seed + 1,
            list(range(folds)),
        )
        out[rest] = np.where(fold_of == fold, "val", "train")
    return out


def single_source_kinds(parts: list["Part"]) -> list[str]:
    """Kinds whose images all come from one source: never both trained on and held out, so reported apart."""
    seen: dict = {}
    for p in parts:
        for kind, source in zip(p.kinds, p.sources or p.groups):
            seen.setdefault(kind, set()).add(source)
    return sorted(k for k, s in seen.items() if len(s) == 1)


def kind_weights(labels: np.ndarray, kinds: Sequence[str], power: float = 0.5) -> np.ndarray:
    """Per-sample loss weights so rare kinds count: each kind weighs count**(1-power), each class the same."""
    labels = np.asarray(labels)
    weights = np.zeros(len(labels))
    for cls in (MEDICAL, NON_MEDICAL):
        idx = np.flatnonzero(labels == cls)
        if not len(idx):
            continue
        names, inverse, counts = np.unique([kinds[i] for i in idx], return_inverse=True, return_counts=True)
        w = counts[inverse].astype(float) ** -power
        weights[idx] = w * len(idx) / w.sum()
    return weights * len(labels) / max(weights.sum(), 1e-12)


# ---------------------------------------------------------------- sources


def folder_source(
    root: str, seed: int = 0, fractions=(0.7, 0.15, 0.15), split_by: str = "group", folds: int = 0, fold: int = 0
) -> Part:
    """ROOT/medical/** and ROOT/non_medical/**; manifest.csv (path, group, kind, source_package) if present.

    split_by "group" keeps each group on one side; "source" each source (source_key of source_package, else
    the group), with `folds`/`fold` for source-held-out cross-validation."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    manifest = {}
    manifest_path = os.path.join(root, "manifest.csv")
    if os.path.isfile(manifest_path):
        with open(manifest_path, newline="") as f:
            manifest = {os.path.normpath(row["path"]): row for row in csv.DictReader(f)}
    paths, labels, kinds, groups, sources = [], [], [], [], []
    for label, sub in ((MEDICAL, "medical"), (NON_MEDICAL, "non_medical")):
        top = os.path.join(root, sub)
        if not os.path.isdir(top):
            raise DataError(f"{root} has no {sub}/ folder (expected {root}/medical/... and {root}/non_medical/...)")
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.relpath(path, root))
                row = manifest.get(rel, {})
                paths.append(path)
                labels.append(label)
                kinds.append(row.get("kind") or sub)
                groups.append(row.get("group") or rel)
                sources.append(source_key(row["source_package"]) if row.get("source_package") else groups[-1])
    if not paths:
        raise DataError(f"no images found under {root}/medical or {root}/non_medical")
    labels = np.array(labels)
    if split_by == "source":
        splits = source_split(labels, kinds, sources, fractions, seed, folds, fold)
    else:
        splits = group_split(labels, kinds, groups, fractions, seed)
    return Part(f"folder:{root}", paths, labels, kinds, groups, splits, list(kinds), sources)


def medmnist_files(size: int) -> list[str]:
    suffix = "" if size == 28 else f"_{size}"
    return [f"{flag}{suffix}.npz" for flag in MEDMNIST_2D]


def _download(url: str, root: str, filename: str, md5: str | None, what: str):
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, root=root, filename=filename, md5=md5)
    except Exception as exc:
        raise DataError(
            f"could not download {what} from {url} ({type(exc).__name__}); "
            f"place {os.path.join(root, filename)} by hand and rerun with --no-download"
        ) from None


def ensure_medmnist(data_dir: str, size: int, download: bool) -> list[str]:
    """Paths of the twelve npz files, downloading the missing ones with medmnist's URLs and MD5s."""
    from medmnist import INFO

    suffix = "" if size == 28 else f"_{size}"
    os.makedirs(data_dir, exist_ok=True)
    missing = [f for f in medmnist_files(size) if not os.path.isfile(os.path.join(data_dir, f))]
    if missing and not download:
        raise DataError(
            f"MedMNIST files missing from {data_dir}: {', '.join(missing)} "
            f"(place them there, or drop --no-download to fetch them, {MEDMNIST_DOWNLOAD[size]})"
        )
    for name in missing:
        flag = name[: -len(f"{suffix}.npz")]
        _download(INFO[flag][f"url{suffix}"], data_dir, name, INFO[flag][f"MD5{suffix}"], f"MedMNIST {flag}")
    return [os.path.join(data_dir, f) for f in medmnist_files(size)]


def _as_uint8_images(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] != 3):
        raise DataError(f"{name}: expected uint8 images (N, H, W) or (N, H, W, 3), got {array.dtype} {array.shape}")
    return array


def medmnist_source(
    data_dir: str, size: int = 28, download: bool = True, per_split_cap: dict | None = None, seed: int = 0
) -> list[Part]:
    """The twelve MedMNIST 2D datasets with their official splits, all labelled medical.

    `per_split_cap` (split -> how many images per dataset at most) samples each
    dataset down right after loading, so the large sizes never sit whole in memory.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for flag, path in zip(MEDMNIST_2D, ensure_medmnist(data_dir, size, download)):
        try:
            npz = np.load(path)
        except Exception as exc:
            raise DataError(f"{path} is not a readable MedMNIST npz file ({str(exc).splitlines()[0]})") from None
        with npz:
            for split in SPLITS:
                key = f"{split}_images"
                if key not in npz.files:
                    raise DataError(f"{path} has no {key} array")
                images = _as_uint8_images(npz[key], f"{path}:{key}")
                if per_split_cap and per_split_cap.get(split) is not None and len(images) > per_split_cap[split]:
                    images = images[np.sort(rng.choice(len(images), per_split_cap[split], replace=False))]
                n = len(images)
                parts.append(
                    Part(
                        f"medmnist:{flag}:{split}",
                        np.ascontiguousarray(images),
                        np.full(n, MEDICAL),
                        [flag] * n,
                        [f"{flag}:{split}:{i}" for i in range(n)],
                        np.array([split] * n, dtype=object),
                        [flag] * n,
                    )
                )
    return parts


def ensure_cifar10(data_dir: str, download: bool) -> str:
    folder = os.path.join(data_dir, CIFAR_DIR)
    missing = [f for f in CIFAR_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing and not download:
        raise DataError(
            f"CIFAR-10 files missing from {folder}/: {', '.join(missing)} (place the extracted "
            f"cifar-10-batches-py/ folder in {data_dir}, or drop --no-download to fetch it, 163 MB)"
        )
    if missing:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(data_dir, train=True, download=True)
        except Exception as exc:
            raise DataError(
                f"could not download CIFAR-10 ({type(exc).__name__}: {exc}); place the extracted "
                f"{CIFAR_DIR}/ folder in {data_dir} and rerun with --no-download"
            ) from None
    return folder


def _read_cifar_batch(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(exc).__name__})") from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def cifar10_source(data_dir: str, download: bool = True, seed: int = 0) -> list[Part]:
    """CIFAR-10 as non-medical: train batches for training, the test batch halved into val and test."""
    folder = ensure_cifar10(data_dir, download)
    train = np.concatenate([_read_cifar_batch(os.path.join(folder, f)) for f in CIFAR_FILES[:-1]])
    test = _read_cifar_batch(os.path.join(folder, CIFAR_FILES[-1]))
    order = np.random.default_rng(seed).permutation(len(test))
    halves = {"val": test[np.sort(order[: len(test) // 2])], "test": test[np.sort(order[len(test) // 2 :])]}
    parts = []
    for split, images in (("train", train), *halves.items()):
        n = len(images)
        parts.append(
            Part(
                f"cifar10:{split}",
                np.ascontiguousarray(images),
                np.full(n, NON_MEDICAL),
                ["cifar10"] * n,
                [f"cifar10:{split}:{i}" for i in range(n)],
                np.array([split] * n, dtype=object),
                ["cifar10"] * n,
            )
        )
    return parts


def missing_downloads(items: list[str], data_dir: str, medmnist_size: int) -> list[str]:
    """Every downloadable file the sources need that is not in data_dir yet, named at once."""
    missing = []
    if "cifar10" in items:
        missing += [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES if not os.path.isfile(os.path.join(data_dir, CIFAR_DIR, f))]
    if "medmnist" in items:
        missing += [f for f in medmnist_files(medmnist_size) if not os.path.isfile(os.path.join(data_dir, f))]
    return missing


def load_sources(
    spec: str,
    data_dir: str,
    medmnist_size: int = 28,
    download: bool = True,
    seed: int = 0,
    split_by: str = "group",
    folds: int = 0,
    fold: int = 0,
) -> list[Part]:
    """'medmnist+cifar10+folder:PATH' -> parts.

    MedMNIST is read last and each of its datasets is capped, per split, at the
    size of the non-medical side: balancing can never take more from one dataset,
    and the large sizes never sit whole in memory.
    """
    items = spec.split("+")
    for item in items:
        if item not in ("medmnist", "cifar10") and not item.startswith("folder:"):
            raise DataError(f"unknown data source {item!r} (use medmnist, cifar10, folder:PATH, joined with +)")
    missing = [] if download else missing_downloads(items, data_dir, medmnist_size)
    if missing:
        raise DataError(
            f"{len(missing)} files missing from {data_dir}: {', '.join(missing)} (place them there, "
            f"or drop --no-download to fetch them: CIFAR-10 163 MB, MedMNIST "
            f"{MEDMNIST_DOWNLOAD[medmnist_size]})"
        )
    parts = []
    for item in items:
        if item == "cifar10":
            parts += cifar10_source(data_dir, download, seed)
        elif item.startswith("folder:"):
            parts.append(folder_source(item[len("folder:") :], seed, split_by=split_by, folds=folds, fold=fold))
    if "medmnist" in items:
        cap = {s: int(sum(((p.labels == NON_MEDICAL) & (p.splits == s)).sum() for p in parts)) or None for s in SPLITS}
        parts += medmnist_source(data_dir, medmnist_size, download, cap, seed)
    return parts


def balanced_splits(parts: list[Part], seed: int = 0) -> dict[str, list[Part]]:
    """split -> parts restricted to that split and balanced across both classes."""
    out = {}
    for split in SPLITS:
        pieces = [p.subset(np.flatnonzero(p.splits == split)) for p in parts]
        pieces = [p for p in pieces if len(p)]
        labels = np.concatenate([p.labels for p in pieces]) if pieces else np.zeros(0, int)
        strata = [s for p in pieces for s in p.stratum]
        keep = balance(labels, strata, seed)
        offsets = np.cumsum([0] + [len(p) for p in pieces])
        out[split] = [
            p.subset(keep[(keep >= lo) & (keep < hi)] - lo) for p, lo, hi in zip(pieces, offsets[:-1], offsets[1:])
        ]
        out[split] = [p for p in out[split] if len(p)]
    return out


MIN_SPLIT_IMAGES = 10  # fewer images of a class in a split, and that split's figures are noise


def class_counts(parts: list[Part]) -> dict[str, dict[str, int]]:
    """split -> class name -> images, as the sources split them (before balancing)."""
    return {
        split: {
            name: int(sum(((p.labels == label) & (p.splits == split)).sum() for p in parts))
            for label, name in ((MEDICAL, "medical"), (NON_MEDICAL, "non-medical"))
        }
        for split in SPLITS
    }


def check_split_sizes(parts: list[Part], source: str) -> list[str]:
    """Warnings for splits with fewer than MIN_SPLIT_IMAGES images of a class. A class with no images in a
    split is a DataError: training, choosing the epoch and testing each need both classes."""
    counts = class_counts(parts)
    for name in ("medical", "non-medical"):
        if not any(counts[split][name] for split in SPLITS):
            raise DataError(
                f"{source}: no {name} images; both classes need images (in a folder: {name.replace('-', '_')}/...)"
            )
    for name in ("medical", "non-medical"):
        per_split = ", ".join(f"{split} {counts[split][name]}" for split in SPLITS)
        empty = [split for split in SPLITS if not counts[split][name]]
        if empty:
            raise DataError(
                f"{source}: no {name} images in the {' and '.join(empty)} split ({per_split}); each "
                f"class needs images in train, val and test: add images (a folder is split 70/15/15 "
                f"by group, so about 70 groups a class give {MIN_SPLIT_IMAGES} in each split)"
            )
    warnings = []
    for split in SPLITS:
        if min(counts[split].values()) < MIN_SPLIT_IMAGES:
            have = ", ".join(f"{name} {n}" for name, n in counts[split].items())
            warnings.append(
                f"the {split} split has {min(counts[split].values())} images a class after balancing "
                f"({have}; fewer than {MIN_SPLIT_IMAGES}): its figures will be noise; add images"
            )
    return warnings


def summarize(splits: dict[str, list[Part]]) -> dict:
    """Counts per split, class and stratum, for printing and for the checkpoint."""
    summary = {}
    for split, parts in splits.items():
        counts: dict = {}
        for p in parts:
            for label, stratum in zip(p.labels, p.stratum):
                key = f"{'medical' if label == MEDICAL else 'non-medical'}/{stratum}"
                counts[key] = counts.get(key, 0) + 1
        summary[split] = dict(sorted(counts.items()))
    return summary
