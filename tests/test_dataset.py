"""dataset.py: balancing, group splits, folder sources, and MedMNIST / CIFAR-10 in their real file formats."""

import csv
from collections import Counter

import numpy as np
import pytest
import torch

import dataset
import model
import train
from conftest import CORPUS, corpus_images
from fake_data import write_cifar10, write_medmnist

# ---------------------------------------------------------------- balancing and splitting


def test_even_quota_lets_small_strata_give_all_they_have():
    assert dataset.even_quota([546, 1080, 5000, 90000], 20000) == [546, 1080, 5000, 13374]
    assert dataset.even_quota([546, 20000, 90000], 20000) == [546, 9727, 9727]
    assert dataset.even_quota([5, 5], 4) == [2, 2]
    assert sum(dataset.even_quota([3, 100, 7, 50], 60)) == 60


def test_balance_keeps_the_smaller_class_and_samples_the_larger_evenly():
    labels = np.array([0] * 90 + [0] * 10 + [1] * 40)
    strata = ["a"] * 90 + ["b"] * 10 + ["c"] * 40
    keep = dataset.balance(labels, strata, seed=3)
    kept = Counter(strata[i] for i in keep)
    assert kept == {"a": 30, "b": 10, "c": 40}
    assert np.array_equal(keep, dataset.balance(labels, strata, seed=3))
    assert not np.array_equal(keep, dataset.balance(labels, strata, seed=4))


def test_group_split_never_puts_a_group_on_two_sides_of_the_corpus():
    with open(CORPUS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([0 if r["label"] == "medical" else 1 for r in rows])
    splits = dataset.group_split(labels, [r["kind"] for r in rows], [r["group"] for r in rows], seed=0)
    sides: dict = {}
    for row, split in zip(rows, splits):
        sides.setdefault(row["group"], set()).add(split)
    assert all(len(s) == 1 for s in sides.values())
    share = Counter(splits)
    assert 0.6 < share["train"] / len(rows) < 0.8 and share["val"] > 300 and share["test"] > 300
    for split in dataset.SPLITS:
        assert {0, 1} <= set(labels[splits == split])


def test_source_key_drops_versions_and_holds_an_owner_and_its_pipeline_accounts_together():
    assert dataset.source_key("pypi:dipy==1.12.1") == "pypi:dipy"
    assert dataset.source_key("debian:opencv-doc=4.6.0+dfsg-12") == "debian:opencv-doc"
    assert dataset.source_key("github:nyukat/GMIC@594029e") == dataset.source_key("github:nyukat/breast@6176eb")
    assert dataset.source_key("github:sarah-antillia/A@1") == dataset.source_key("github:atlan-antillia/B@2")
    assert dataset.source_key("github:zooniverse/Galaxy-Zoo@3") != dataset.source_key("github:cszn/DnCNN@e9")


def test_source_split_and_its_folds_never_put_a_source_on_two_sides_of_the_corpus():
    with open(CORPUS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([0 if r["label"] == "medical" else 1 for r in rows])
    kinds, sources = [r["kind"] for r in rows], [dataset.source_key(r["source_package"]) for r in rows]
    plain = dataset.source_split(labels, kinds, sources, seed=0)
    folds = [dataset.source_split(labels, kinds, sources, seed=0, folds=3, fold=f) for f in range(3)]
    for splits in [plain] + folds:
        sides: dict = {}
        for source, split in zip(sources, splits):
            sides.setdefault(source, set()).add(split)
        assert all(len(s) == 1 for s in sides.values())
        for split in dataset.SPLITS:
            assert {0, 1} <= set(labels[splits == split])
    assert 0.1 < Counter(plain)["test"] / len(rows) < 0.2
    for splits in folds:  # the test sources are the same in every fold, and each fold validates on its own
        assert np.array_equal(splits == "test", plain == "test")
    val_sets = [set(np.flatnonzero(s == "val")) for s in folds]
    assert not (val_sets[0] & val_sets[1]) and not (val_sets[1] & val_sets[2])
    assert sum(map(len, val_sets)) == int((plain != "test").sum())


def test_kind_weights_make_each_class_weigh_the_same_and_rare_kinds_count_more():
    labels = np.array([0] * 100 + [0] * 4 + [1] * 50)
    kinds = ["mri"] * 100 + ["xray"] * 4 + ["photo"] * 50
    w = dataset.kind_weights(labels, kinds, power=0.5)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum() * 104 / 50)
    assert w[100] > w[0] * 4
    assert np.allclose(dataset.kind_weights(labels, kinds, power=0.0), 1.0)


def test_folder_source_reads_the_manifest_groups_and_kinds(tmp_path):
    med, non = corpus_images("medical", "xray", 6), corpus_images("non_medical", "chart", 6)
    rows = []
    for label, paths in (("medical", med), ("non_medical", non)):
        (tmp_path / label / "sub").mkdir(parents=True)
        for i, p in enumerate(paths):
            target = tmp_path / label / "sub" / p.name
            target.write_bytes(p.read_bytes())
            rows.append({"path": f"{label}/sub/{p.name}", "group": f"{label}{i // 2}", "kind": label + "-kind"})
    (tmp_path / "non_medical" / "notes.txt").write_text("not an image")
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "group", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    part = dataset.folder_source(str(tmp_path))
    assert len(part) == 12 and Counter(part.labels.tolist()) == {0: 6, 1: 6}
    assert set(part.kinds) == {"medical-kind", "non_medical-kind"}
    for g in set(part.groups):
        assert len({s for s, gg in zip(part.splits, part.groups) if gg == g}) == 1


def test_folder_source_errors(tmp_path):
    with pytest.raises(dataset.DataError, match="image folder not found"):
        dataset.folder_source(str(tmp_path / "nope"))
    (tmp_path / "medical").mkdir()
    with pytest.raises(dataset.DataError, match="has no non_medical/ folder"):
        dataset.folder_source(str(tmp_path))


# ---------------------------------------------------------------- MedMNIST and CIFAR-10


def test_medmnist_and_cifar10_load_balanced_and_evenly_sampled(tmp_path):
    write_medmnist(tmp_path, per_split=(30, 6, 6))
    write_cifar10(tmp_path, per_batch=24)  # 120 train, 12 val, 12 test
    parts = dataset.load_sources("medmnist+cifar10", str(tmp_path), 28, download=False, seed=0)
    splits = dataset.balanced_splits(parts, seed=0)
    summary = dataset.summarize(splits)
    for split in dataset.SPLITS:
        medical = {k: v for k, v in summary[split].items() if k.startswith("medical/")}
        non = {k: v for k, v in summary[split].items() if k.startswith("non-medical/")}
        assert sum(medical.values()) == sum(non.values())
        assert len(medical) == 12 and max(medical.values()) - min(medical.values()) <= 1  # even across datasets
    assert summary["train"]["non-medical/cifar10"] == 120
    grey = next(p for p in splits["train"] if p.name == "medmnist:chestmnist:train")
    colour = next(p for p in splits["train"] if p.name == "medmnist:pathmnist:train")
    assert grey.images.shape[1:] == (28, 28) and colour.images.shape[1:] == (28, 28, 3)


def test_small_datasets_give_all_they_have(tmp_path):
    write_medmnist(tmp_path, per_split=(40, 4, 4))
    write_cifar10(tmp_path, per_batch=80)  # 400 train non-medical, more than 12 x 40 allows evenly? no: 480 > 400
    parts = dataset.load_sources("medmnist+cifar10", str(tmp_path), 28, download=False)
    summary = dataset.summarize(dataset.balanced_splits(parts))["train"]
    assert sum(v for k, v in summary.items() if k.startswith("medical/")) == 400
    assert set(v for k, v in summary.items() if k.startswith("medical/")) <= {33, 34}


def test_other_medmnist_sizes_use_their_file_names(tmp_path):
    write_medmnist(tmp_path, size=64, per_split=(3, 2, 2))
    parts = dataset.medmnist_source(str(tmp_path), size=64, download=False)
    assert parts[0].images.shape[1:3] == (64, 64)


def test_offline_medmnist_error_names_every_missing_file(tmp_path):
    write_medmnist(tmp_path, flags=dataset.MEDMNIST_2D[:10])
    with pytest.raises(dataset.DataError) as info:
        dataset.load_sources("medmnist", str(tmp_path), 28, download=False)
    message = str(info.value)
    assert "organcmnist.npz, organsmnist.npz" in message and str(tmp_path) in message and "\n" not in message
    with pytest.raises(dataset.DataError, match="pathmnist_128.npz"):
        dataset.load_sources("medmnist", str(tmp_path), 128, download=False)


def test_offline_cifar10_error_names_the_folder(tmp_path):
    with pytest.raises(dataset.DataError, match="cifar-10-batches-py.*data_batch_1"):
        dataset.load_sources("cifar10", str(tmp_path), download=False)


def test_broken_files_are_clear_errors(tmp_path):
    write_medmnist(tmp_path)
    (tmp_path / "bloodmnist.npz").write_bytes(b"not a zip")
    with pytest.raises(dataset.DataError, match="bloodmnist.npz is not a readable MedMNIST npz"):
        dataset.medmnist_source(str(tmp_path), download=False)
    write_cifar10(tmp_path)
    (tmp_path / dataset.CIFAR_DIR / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(dataset.DataError, match="data_batch_3 is not a CIFAR-10 python batch"):
        dataset.cifar10_source(str(tmp_path), download=False)


def test_unknown_source_is_refused():
    with pytest.raises(dataset.DataError, match="unknown data source 'imagenet'"):
        dataset.load_sources("medmnist+imagenet", "data", download=False)


def test_both_classes_go_through_the_identical_transform(tmp_path):
    """A grey MedMNIST image and the same pixels as an RGB CIFAR-style array give the same features."""
    torch.manual_seed(0)
    net = model.build_model("efficientnet_lite0")
    grey = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    medical = dataset.Part(
        "medmnist:x", grey, np.zeros(2, int), ["x"] * 2, ["a", "b"], np.array(["train"] * 2, dtype=object), ["x"] * 2
    )
    non_medical = dataset.Part(
        "cifar10:x", rgb, np.ones(2, int), ["y"] * 2, ["c", "d"], np.array(["train"] * 2, dtype=object), ["y"] * 2
    )
    a, *_ = train.compute_features(net, [medical])
    b, *_ = train.compute_features(net, [non_medical])
    assert torch.allclose(a, b, atol=1e-5)
    assert train.ArrayImages(rgb, net.preprocess)[0].shape == (224, 224, 3)
