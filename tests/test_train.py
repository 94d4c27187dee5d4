"""train.py end to end: a few dozen corpus images, and the reference recipe on MedMNIST/CIFAR-10 files made here."""

import csv
import datetime
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import dataset
import model
import train
from conftest import ROOT, corpus_images
from fake_data import write_cifar10, write_medmnist

sys.path.insert(0, str(ROOT / "benchmarks"))
import source_cv  # noqa: E402  (a benchmark script: its summary is what --cv-summary reads)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """24 medical and 24 non-medical corpus images of several kinds, with their groups."""
    root = tmp_path_factory.mktemp("folder")
    rows = []
    for label, kinds in (
        ("medical", ("xray", "ct", "histology", "fundus")),
        ("non_medical", ("photo", "chart", "clipart", "screenshot")),
    ):
        (root / label).mkdir()
        for kind in kinds:
            for i, path in enumerate(corpus_images(label, kind, 6)):
                (root / label / path.name).write_bytes(path.read_bytes())
                rows.append({"path": f"{label}/{path.name}", "group": f"{kind}{i}", "kind": kind})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "group", "kind"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_train_on_an_image_folder_end_to_end(small_folder, tmp_path, capsys, monkeypatch):
    """Without --output the model goes to a new runs/<date>-<arch>/ folder, printed with how to use it;
    a rerun the same day gets its own folder, and its features come from the cache without a rate."""
    monkeypatch.chdir(tmp_path)
    options = [
        "--data",
        f"folder:{small_folder}",
        "--arch",
        "efficientnet_lite0",
        "--views",
        "1",
        "--kind-weight-power",
        "0.5",
        "--workers",
        "0",
        "--cache-dir",
        "cache",
        "--split-by",
        "group",
    ]
    code = train.main(options + ["--epochs", "4", "--evaluate-test"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert (
        "epoch   4" in printed
        and "test confusion" in printed
        and re.search(r"^test: \d+ images, accuracy", printed, re.M)
    )
    run = os.path.join("runs", f"{datetime.date.today().isoformat()}-efficientnet_lite0")
    out = tmp_path / run / "best_model.pth"
    assert out.is_file() and (tmp_path / run / "best_model.onnx").is_file()
    assert (
        printed.splitlines()[-1] == f"classify with it: python final_classification_script.py INPUT --model "
        f"{run}/best_model.pth"
    )
    assert "images/s on cpu" in printed  # the frozen pass ran
    # 24 images a class split 70/15/15 by group: val and test are tiny, and no kind reaches 5 test images
    assert "warning: the test split has" in captured.err and "fewer than 10): its figures will be noise" in captured.err
    raw = torch.load(out, weights_only=True)
    metrics = raw["training"]["metrics"]
    assert {
        "test_accuracy",
        "test_recall_medical",
        "test_recall_non_medical",
        "test_confusion",
        "test_auroc",
        "test_kind_macro_accuracy",
        "test_per_kind",
        "val_kind_macro_accuracy",
        "val_per_kind",
    } <= set(metrics)
    assert set(metrics["test_per_kind"]) <= {
        "xray",
        "ct",
        "histology",
        "fundus",
        "photo",
        "chart",
        "clipart",
        "screenshot",
    }
    assert sum(v["n"] for v in metrics["test_per_kind"].values()) == metrics["test_n"]
    assert 0.5 <= metrics["test_auroc"] <= 1.0
    assert sum(map(sum, metrics["test_confusion"])) == metrics["test_n"] > 0
    assert len(raw["training"]["history"]) == 4
    assert 1 <= metrics["best_epoch"] <= 4
    assert raw["training"]["data"]["train"]  # counts per kind recorded
    net = model.load_model(str(out))
    assert metrics["test_accuracy"] >= 0.75  # ImageNet features separate these kinds even with 24 images a side
    assert net.predict([__import__("PIL.Image").Image.open(corpus_images("medical", "xray", 7)[-1])])[0] > 0.0
    nan = [k for k, v in metrics.items() if isinstance(v, float) and v != v]
    assert ("not a number" in captured.err) == bool(nan) and all(k in captured.err for k in nan)

    assert train.main(options + ["--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / f"{run}-2" / "best_model.pth").is_file()  # the first model is still there, unchanged
    assert torch.load(out, weights_only=True)["training"]["history"][-1]["epoch"] == 4
    assert "frozen pass: none run; features of" in printed and "images/s" not in printed
    # without --evaluate-test the test split is not looked at: validation figures only, printed and stored
    assert not re.search(r"^test: \d+ images, accuracy", printed, re.M) and "test confusion" not in printed
    assert (
        re.search(r"^val: \d+ images, accuracy", printed, re.M)
        and "test split not looked at: --evaluate-test" in printed
    )
    again = torch.load(tmp_path / f"{run}-2" / "best_model.pth", weights_only=True)["training"]["metrics"]
    assert not [k for k in again if k.startswith("test_") and k != "test_evaluated"] and not again["test_evaluated"]
    assert {"val_grey_flip_non_medical", "val_confusion", "val_n"} <= set(again)
    val_images = int(re.search(r"^val: (\d+) images", printed, re.M).group(1))

    # --keep-epoch last: validation still measured every epoch, but the last epoch kept, as the final model keeps it
    assert train.main(options + ["--epochs", "2", "--keep-epoch", "last", "--output", "last.pth"]) == 0
    assert "last epoch 2, threshold" in capsys.readouterr().out
    last = torch.load(tmp_path / "last.pth", weights_only=True)["training"]
    assert last["metrics"]["best_epoch"] == 2 and all("val_accuracy" in row for row in last["history"])

    # the final model: the validation sources trained on too (with their views), the last epoch kept, the threshold
    # the median of the cross-validation folds' own, test measured
    folds = [{"fold": i, "val_balanced_accuracy": 0.9, "threshold": t} for i, t in enumerate((0.7, 0.3, 0.4))]
    (tmp_path / "cv.json").write_text(json.dumps(source_cv.summarize(folds)))
    final_options = ["--epochs", "2", "--train-on", "train+val", "--cv-summary", "cv.json", "--evaluate-test"]
    assert train.main(options + final_options) == 0
    printed = capsys.readouterr().out
    assert f"frozen pass: {2 * val_images} images in" in printed  # val's plain and augmented copies; the rest cached
    assert "last epoch 2, threshold 0.400 (the cross-validation folds' median)" in printed and "val acc" not in printed
    assert re.search(r"^test: \d+ images, accuracy", printed, re.M)
    assert not re.search(r"^val: \d+ images, acc", printed, re.M)
    final = torch.load(tmp_path / f"{run}-3" / "best_model.pth", weights_only=True)
    metrics = final["training"]["metrics"]
    assert final["threshold"] == 0.4 and metrics["trained_on"] == "train+val" and metrics["cv_threshold_median"] == 0.4
    assert not [k for k in metrics if k.startswith("val_")]
    history = final["training"]["history"]
    assert [row["epoch"] for row in history] == [1, 2] and "val_accuracy" not in history[0]
    assert train.main(options + ["--epochs", "1", "--train-on", "train+val", "--threshold", "0.7"]) == 0
    assert "threshold 0.700 (--threshold)" in capsys.readouterr().out  # a threshold given wins

    # the model to ship: every source trained on (the test images with their views too), nothing measured, and the
    # held-out figures those of the same recipe trained on train+val and tested once, saying whose they are
    sibling = tmp_path / f"{run}-3" / "best_model.pth"
    every = ["--epochs", "2", "--train-on", "train+val+test", "--cv-summary", "cv.json", "--output", "all.pth"]
    assert train.main(options + every + ["--heldout-from", str(sibling)]) == 0
    printed = capsys.readouterr().out
    test_images = metrics["test_n"]
    assert f"frozen pass: {2 * test_images} images in" in printed  # test's plain and augmented copies; the rest cached
    assert "last epoch 2, threshold 0.400" in printed and not re.search(r"^(test|val): \d+ images, acc", printed, re.M)
    shipped = torch.load(tmp_path / "all.pth", weights_only=True)["training"]
    assert shipped["metrics"]["trained_on"] == "train+val+test" and not shipped["metrics"]["test_evaluated"]
    figures = lambda m: json.dumps(  # noqa: E731 (NaN figures compare equal as text)
        {k: v for k, v in m.items() if k.startswith("test_") and k not in ("test_evaluated", "test_of")}, sort_keys=True
    )
    assert figures(shipped["metrics"]) == figures(metrics)
    assert shipped["metrics"]["test_of"]["sha256"] == __import__("engine").file_digest(sibling)
    assert shipped["metrics"]["trained_images"] == metrics["trained_images"] + test_images
    # another recipe's figures, or a model never tested, are refused in one line before any work
    assert train.main(options + every + ["--overwrite", "--views", "2", "--heldout-from", str(sibling)]) == 2
    assert "another recipe: views (1 there, 2 now)" in capsys.readouterr().err
    assert (
        train.main(options + every + ["--overwrite", "--heldout-from", str(tmp_path / f"{run}-2" / "best_model.pth")])
        == 2
    )
    assert "trained on train, test not measured; it must be this recipe trained on train+val" in capsys.readouterr().err
    # figures measured at another threshold, the sibling as --output, or another corpus: refused in one line too
    assert train.main(options + every + ["--overwrite", "--threshold", "0.7", "--heldout-from", str(sibling)]) == 2
    assert "its figures were measured at threshold 0.4000, this model's is 0.7000" in capsys.readouterr().err
    assert train.main(options + every + ["--overwrite", "--heldout-from", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth: no such file" in capsys.readouterr().err  # --output all.pth exists: still one line
    into_sibling = ["--output", str(sibling), "--overwrite", "--heldout-from", str(sibling)]
    assert train.main(options + every[:-2] + into_sibling) == 2
    assert "is --output: the model it describes would be replaced" in capsys.readouterr().err
    changed = torch.load(sibling, weights_only=True)
    changed["training"]["data"]["test"]["medical/xray"] += 1  # as if the corpus had grown since
    torch.save(changed, tmp_path / "changed.pth")
    assert train.main(options + every + ["--overwrite", "--heldout-from", str(tmp_path / "changed.pth")]) == 2
    assert "trained on other data (its splits' images by kind differ" in capsys.readouterr().err


def test_finetune_last_blocks_on_cached_activations(small_folder, tmp_path, capsys):
    """--finetune last-1: the last block, the final conv and the head are trained; the checkpoint carries
    only those layers, rebuilds from its fields, and its ONNX twin agrees with torch. Each training image
    also runs once as a mosaic view (--mosaic-views 1). --quiet silences every bar, the frozen pass's too."""
    from PIL import Image

    import engine

    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "model.pth").write_bytes(b"an older model")
    out = tmp_path / "last1.pth"
    out.symlink_to(tmp_path / "real" / "model.pth")  # followed: its target replaced, the link kept
    options = ["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0", "--finetune", "last-1"]
    options += ["--epochs", "2", "--views", "1", "--mosaic-views", "1", "--workers", "0"]
    code = train.main(options + ["--output", str(out), "--overwrite", "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert "img/s" not in captured.err and "batch/s" not in captured.err, captured.err
    args = train.parse_args(options)
    parts = dataset.load_sources(args.data, args.data_dir, args.medmnist_size, False, args.seed, args.split_by)
    splits = dataset.balanced_splits(parts, args.seed)
    n = {split: sum(len(p) for p in splits[split]) for split in dataset.SPLITS}
    ran = int(re.search(r"^frozen pass: (\d+) images", captured.out, re.M).group(1))
    assert ran == n["train"] * (1 + 1 + 1) + n["val"] + n["test"]  # plain, one augmented view, one mosaic view
    assert out.is_symlink() and os.listdir(tmp_path / "real") == ["model.pth"]
    raw = torch.load(out, weights_only=True)
    stages = {int(k.split(".")[1]) for k in raw["state_dict"]}
    assert stages == {16, 17}  # block 15 and the final conv + pooling: nothing frozen is stored
    fresh = model.build_model("efficientnet_lite0")
    rebuilt = model.load_model(str(out))
    assert rebuilt.trained_stages == [16, 17]
    key = next(k for k in raw["state_dict"] if k.endswith("weight") and raw["state_dict"][k].ndim == 4)
    assert not torch.equal(rebuilt.state_dict()[key], fresh.state_dict()[key])  # adapted
    assert torch.equal(rebuilt.backbone[0][0].weight, fresh.backbone[0][0].weight)  # the stem stays ImageNet's
    images = [
        Image.open(p) for p in corpus_images("medical", "histology", 3) + corpus_images("non_medical", "chart", 3)
    ]
    p_torch = rebuilt.predict(images)
    onnx = engine.open_engine(str(out), "onnx", "cpu")  # train.py wrote the twin beside the checkpoint
    assert np.abs(np.array(onnx.predict(images)) - np.array(p_torch)).max() <= 1e-4


def test_finetune_all_trains_every_layer_from_streamed_images(small_folder, tmp_path):
    out = tmp_path / "all.pth"
    code = train.main(
        [
            "--data",
            f"folder:{small_folder}",
            "--arch",
            "efficientnet_lite0",
            "--finetune",
            "all",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    raw = torch.load(out, weights_only=True)
    assert {int(k.split(".")[1]) for k in raw["state_dict"]} == set(range(18))  # stem, 16 blocks, final conv
    rebuilt, fresh = model.load_model(str(out)), model.build_model("efficientnet_lite0")
    assert not torch.equal(rebuilt.backbone[0][0].weight, fresh.backbone[0][0].weight)  # the stem was trained
    assert raw["training"]["metrics"]["val_n"] > 0 and "test_n" not in raw["training"]["metrics"]


def test_an_unwritable_output_is_refused_before_any_work(small_folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = train.main(
        ["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0", "--output", str(blocker / "best.pth")]
    )
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: cannot write {blocker / 'best.pth'}") and "epoch" not in captured.out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--finetune", "last-x"], "argument --finetune: must be head, last-N (N >= 1) or all, not 'last-x'"),
        (["--epochs", "0"], "argument --epochs: must be at least 1, not 0"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
        (["--feature-batch-size", "-3"], "argument --feature-batch-size: must be at least 1, not -3"),
        (["--lr", "0"], "argument --lr: must be over 0, not 0"),
        (["--threshold", "1"], "argument --threshold: must be over 0 up to (not including) 1, not 1"),
        (
            ["--train-on", "val"],
            "argument --train-on: invalid choice: 'val' (choose from 'train', 'train+val', 'train+val+test')",
        ),
        (
            ["--folds", "3", "--train-on", "train+val"],
            "--folds validates on a fold; --train-on train+val trains on it (the final model): choose one",
        ),
        (
            ["--train-on", "train+val+test", "--evaluate-test"],
            "--evaluate-test measures the test sources; --train-on train+val+test trains on them",
        ),
        (
            ["--heldout-from", "x.pth"],
            "--heldout-from gives a model trained on every source its held-out figures: it needs --train-on "
            "train+val+test",
        ),
        (["--lr", "nan"], "argument --lr: must be over 0, not nan"),
        (
            ["--finetune", "all", "--mosaic-views", "1"],
            "--mosaic-views are cached views; --finetune all streams fresh images and has none",
        ),
        (["--views", "-1"], "argument --views: must be at least 0, not -1"),
        (["--label-smoothing", "1"], "argument --label-smoothing: must be from 0 up to (not including) 1, not 1"),
        (["--epochs", "ten"], "argument --epochs: a whole number is needed, not 'ten'"),
    ],
)
def test_bad_arguments_are_one_line_before_any_work(capsys, args, says):
    with pytest.raises(SystemExit) as info:
        train.main(args + ["--data", "folder:/nonexistent"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {says} (python train.py --help lists every option)"]


def test_the_default_output_is_a_new_folder_and_an_existing_file_needs_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    day = datetime.date(2026, 3, 4)
    first = train.output_path(train.DEFAULT_OUTPUT, "resnet50", False, day)
    assert first == os.path.join("runs", "2026-03-04-resnet50", "best_model.pth")
    os.makedirs(os.path.dirname(first))
    assert train.output_path(train.DEFAULT_OUTPUT, "resnet50", False, day) == first  # an empty folder is reused
    (tmp_path / first).write_bytes(b"a model")
    assert train.output_path(train.DEFAULT_OUTPUT, "resnet50", False, day) == os.path.join(
        "runs", "2026-03-04-resnet50-2", "best_model.pth"
    )
    assert train.output_path(first, "resnet50", True, day) == first
    with pytest.raises(dataset.DataError, match="^--output runs is a folder; give the checkpoint's file name"):
        train.output_path("runs", "resnet50", True, day)


def test_an_existing_output_is_refused_before_any_data_is_read(tmp_path, capsys):
    shipped = tmp_path / "best_model.pth"
    shipped.write_bytes(b"the shipped model")
    args = ["--data", f"folder:{tmp_path / 'absent'}", "--output", str(shipped)]
    assert train.main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --output {shipped} exists; pass --overwrite to replace it, or leave --output out to write to a "
        f"new runs/<date>-<arch>/ folder"
    ]
    assert shipped.read_bytes() == b"the shipped model"
    assert train.main(args + ["--overwrite"]) == 2  # allowed past the output check, stopped by the data
    assert capsys.readouterr().err.startswith(f"error: image folder not found: {tmp_path / 'absent'}")


def test_split_sizes_are_checked_before_any_work():
    def part(split_counts: dict) -> dataset.Part:
        """split -> (medical, non-medical) images."""
        labels, splits = [], []
        for split, (medical, non_medical) in split_counts.items():
            labels += [dataset.MEDICAL] * medical + [dataset.NON_MEDICAL] * non_medical
            splits += [split] * (medical + non_medical)
        kinds = ["k"] * len(labels)
        return dataset.Part(
            "p",
            [f"{i}.png" for i in range(len(labels))],
            np.array(labels, int),
            kinds,
            kinds,
            np.array(splits, dtype=object),
            kinds,
        )

    assert dataset.check_split_sizes([part({"train": (70, 80), "val": (10, 15), "test": (12, 10)})], "x") == []
    warnings = dataset.check_split_sizes([part({"train": (70, 80), "val": (4, 15), "test": (12, 10)})], "x")
    assert warnings == [
        "the val split has 4 images a class after balancing (medical 4, non-medical 15; fewer "
        "than 10): its figures will be noise; add images"
    ]
    with pytest.raises(
        dataset.DataError,
        match=r"^x: no non-medical images in the test split \(train 80, val 15, "
        r"test 0\); each class needs images in train, val and test",
    ):
        dataset.check_split_sizes([part({"train": (70, 80), "val": (10, 15), "test": (12, 0)})], "x")
    with pytest.raises(dataset.DataError, match=r"^x: no medical images; both classes need images"):
        dataset.check_split_sizes([part({"train": (0, 80), "val": (0, 15), "test": (0, 10)})], "x")


def test_six_images_or_one_class_stop_with_one_line_before_any_work(tmp_path, capsys):
    """Six images once trained a model reporting `accuracy nan`; a folder with one class is as hopeless."""
    for label in ("medical", "non_medical"):
        (tmp_path / label).mkdir()
        for path in corpus_images(label, n=3):
            (tmp_path / label / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "six.pth"
    assert train.main(["--data", f"folder:{tmp_path}", "--arch", "efficientnet_lite0", "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: folder:{tmp_path}: no ") and " split (train " in err[0]
    for path in (tmp_path / "non_medical").iterdir():
        path.unlink()
    assert train.main(["--data", f"folder:{tmp_path}", "--arch", "efficientnet_lite0", "--output", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: folder:{tmp_path}: no non-medical images; both classes need images (in a folder: non_medical/...)"
    ]
    assert not out.exists()


def test_nan_figures_are_named_in_a_warning():
    assert train.undefined_figures({"test_accuracy": 0.9, "best_epoch": 2}) is None
    said = train.undefined_figures({"test_accuracy": 0.9, "test_kind_macro_accuracy": float("nan")})
    assert said.startswith(
        "test_kind_macro_accuracy not a number (a kind-macro accuracy needs a kind with 5 or "
        "more images in its split); the model is saved"
    )


def test_auroc_and_kind_macro_accuracy():
    p = np.array([0.9, 0.8, 0.4, 0.6, 0.2, 0.1])
    labels = np.array([0, 0, 0, 1, 1, 1])  # 0 = medical: 8 of 9 pairs ranked right
    assert train.auroc(p, labels) == pytest.approx(8 / 9)
    assert train.auroc(np.full(6, 0.5), labels) == pytest.approx(0.5)
    kinds = ["a"] * 5 + ["b"] * 1
    m = train.evaluate(np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1]), np.array([0, 0, 0, 0, 0, 1]), kinds, 0.5)
    assert m["per_kind"] == {"a": {"n": 5, "accuracy": 0.8}, "b": {"n": 1, "accuracy": 1.0}}
    assert m["kind_macro_accuracy"] == pytest.approx(0.8)  # b has under 5 images: left out


def test_paper_look_draws_on_both_classes_alike():
    from PIL import Image

    base = Image.open(corpus_images("medical", "ct", 1)[0]).convert("RGB").resize((200, 160))
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = train.PaperLook()(base)
        assert out.size == base.size and out.mode == "RGB"
        changed += int(np.abs(np.asarray(out, int) - np.asarray(base, int)).sum() > 0)
    assert changed == 10


def test_a_mosaic_view_keeps_its_image_where_the_crop_sees_it_among_neighbours_of_its_own_rules(tmp_path):
    """A training image laid out as a compound figure: it stays inside the engines' centre crop, a non-medical
    image's neighbours are all non-medical, and a view is the same each time it is drawn."""
    from PIL import Image

    def solid(name, colour):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (300, 220), colour).save(path)
        return str(path)

    key = solid("key", (255, 0, 0))
    pools = {dataset.MEDICAL: [solid("medical", (0, 255, 0))], dataset.NON_MEDICAL: [solid("other", (0, 0, 255))]}
    preprocess = model.build_model("efficientnet_lite0").preprocess
    for label in (dataset.MEDICAL, dataset.NON_MEDICAL):
        views = train.MosaicViews([key] * 40, np.array([label] * 40), 2, pools, preprocess, lambda im: im, seed=3)
        greens = 0
        for i in range(len(views)):
            pixels = views[i].reshape(-1, 3).astype(int)
            assert views[i].shape == (preprocess["crop"], preprocess["crop"], 3)
            assert ((pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).mean() > 0.02, i  # the key
            greens += int(((pixels[:, 1] > 200) & (pixels[:, 0] < 60)).any())
        assert (greens == 0) if label == dataset.NON_MEDICAL else (0 < greens < len(views))
        assert np.array_equal(views[5], views[5])
        assert not np.array_equal(views[5], views[45])  # another view of the same image, another layout
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lonely = {dataset.MEDICAL: [], dataset.NON_MEDICAL: [str(broken)]}  # no neighbour decodes: empty cells
    views = train.MosaicViews([key] * 10, np.array([dataset.MEDICAL] * 10), 1, lonely, preprocess, lambda im: im, 3)
    for i in range(len(views)):
        pixels = views[i].reshape(-1, 3).astype(int)
        assert ((pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).mean() > 0.02, i


def test_choose_threshold_maximises_balanced_accuracy():
    p = np.array([0.9, 0.8, 0.35, 0.3, 0.2, 0.1])
    labels = np.array([0, 0, 0, 1, 1, 1])  # 0 = medical
    t = train.choose_threshold(p, labels)
    assert 0.3 < t <= 0.35
    assert train.evaluate(p, labels, ["a"] * 6, t)["accuracy"] == 1.0


def test_reference_recipe_runs_offline_on_files_in_the_real_formats(tmp_path, capsys):
    """`python train.py` defaults: ResNet50 + medmnist+cifar10, here from a local state dict and local files."""
    from torchvision.models import resnet50

    data = tmp_path / "data"
    write_medmnist(data, per_split=(4, 2, 2))
    write_cifar10(data, per_batch=4)
    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), weights)
    out = tmp_path / "best_model.pth"
    code = train.main(
        [
            "--data-dir",
            str(data),
            "--no-download",
            "--backbone-weights",
            str(weights),
            "--epochs",
            "2",
            "--output",
            str(out),
            "--workers",
            "0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "train: 40 images" in printed and "medical/pathmnist" in printed and "non-medical/cifar10 20" in printed
    raw = torch.load(out, weights_only=True)
    assert raw["arch"] == "resnet50" and raw["backbone"].startswith("torchvision:ResNet50_Weights.IMAGENET1K_V2")
    assert raw["training"]["args"]["data"] == "medmnist+cifar10"
    assert raw["preprocess"]["resize"] == 232


def test_offline_without_data_names_every_missing_file_at_once(tmp_path, capsys):
    code = train.main(["--data-dir", str(tmp_path), "--no-download", "--arch", "efficientnet_lite0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: 18 files missing from {tmp_path}: cifar-10-batches-py/data_batch_1, ")
    assert len(err.splitlines()) == 1
    for name in ("cifar-10-batches-py/test_batch", "pathmnist.npz", "organsmnist.npz", "bloodmnist.npz"):
        assert name in err
    write_cifar10(tmp_path)
    assert train.main(["--data-dir", str(tmp_path), "--no-download", "--arch", "efficientnet_lite0"]) == 2
    err = capsys.readouterr().err
    assert "error: 12 files missing" in err and "pathmnist.npz" in err and "cifar-10" not in err


def test_help_answers_without_torch_and_shows_every_default(tmp_path):
    """`python train.py --help` in an interpreter where torch, torchvision and medmnist cannot be imported."""
    code = (
        "import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('torch', 'torchvision', 'medmnist')]; "
        f"sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['train.py', '--help']; "
        f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = " ".join(done.stdout.split())
    shown = [a for a in train.build_parser()._actions if a.dest != "help"]
    assert len(shown) >= 25  # every option, none left out of the check
    for action in shown:
        assert f"(default: {action.default})" in text, action.dest
    for default in (
        "(default: medmnist+cifar10)",
        "(default: resnet50)",
        "(default: 28)",
        "(default: runs/<date>-<arch>/best_model.pth)",
        "about 0.6 GB",
        "--overwrite",
    ):
        assert default in text


def test_the_arch_names_shown_without_torch_are_the_backbones():
    assert sorted(train.ARCHES) == sorted(model.BACKBONES)


def test_the_training_docs_give_the_shipped_models_exact_command():
    """The shipped model's command as its checkpoint records it, and the command of the model whose test figures
    it carries (its --heldout-from, written to that path)."""
    shipped = torch.load(ROOT / "best_model.pth", weights_only=True)["training"]
    recorded = shipped["command"]
    docs = (ROOT / "docs" / "training.md").read_text()
    retraining = docs[docs.index("## Retraining") :]
    blocks = [
        " ".join(block.split("\n```")[0].replace("\\\n", " ").split())
        for block in retraining.split("```\n")[1:]
        if block.startswith("python train.py")
    ]
    assert recorded in blocks
    heldout = shipped["metrics"]["test_of"]["checkpoint"]
    assert f"--heldout-from {heldout}" in recorded
    assert any(b.endswith(f"--output {heldout}") and "--train-on train+val --evaluate-test" in b for b in blocks)
    assert f"--model {recorded.split('--output ')[1].split()[0]}" in retraining


def test_a_stopped_run_resumes_from_its_last_whole_epoch_and_refuses_other_settings(small_folder, tmp_path, capsys):
    """The state after every epoch; --resume-training carries on to the same number of epochs; a state made with
    other options is one line naming what differs, exit 2."""
    out = tmp_path / "run" / "best_model.pth"
    options = [
        "--data",
        f"folder:{small_folder}",
        "--arch",
        "efficientnet_lite0",
        "--workers",
        "0",
        "--quiet",
        "--split-by",
        "group",
        "--output",
        str(out),
    ]
    real_fit = train.fit

    def stop_after_two(*args, **kwargs):  # Ctrl-C once epoch 2 is trained, before its state is saved
        log = kwargs.get("log", print)
        kwargs["log"] = lambda line: (
            log(line),
            line.startswith("epoch   2") and (_ for _ in ()).throw(KeyboardInterrupt),
        )
        return real_fit(*args, **kwargs)

    train.fit = stop_after_two
    try:
        assert train.main(options + ["--epochs", "4"]) == 130
    finally:
        train.fit = real_fit
    state = out.parent / train.STATE_FILE
    err = capsys.readouterr().err
    assert state.is_file() and not out.exists() and f"--resume-training {state}" in err
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1  # the last whole epoch saved

    assert train.main(options + ["--epochs", "5", "--resume-training", str(state)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert len(err) == 1 and "made with other settings: epochs (4 there, 5 now)" in err[0]

    # --evaluate-test is not part of the state's settings: the test split may be looked at on the resumed run
    assert train.main(options + ["--epochs", "4", "--resume-training", str(state), "--evaluate-test"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "1 of 4 epochs done" in printed and "epoch   2" in printed
    assert "epoch   1 " not in printed
    raw = torch.load(out, weights_only=True)
    assert [row["epoch"] for row in raw["training"]["history"]] == [1, 2, 3, 4]
    metrics = raw["training"]["metrics"]
    assert {"test_grey_flip_non_medical", "test_grey_flip_medical", "test_balanced_accuracy"} <= set(metrics)
    assert 0.0 <= metrics["test_grey_flip_non_medical"] <= 1.0


def test_resume_training_with_a_file_that_is_not_a_state_is_one_line(small_folder, tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a state")
    code = train.main(
        [
            "--data",
            f"folder:{small_folder}",
            "--arch",
            "efficientnet_lite0",
            "--workers",
            "0",
            "--quiet",
            "--split-by",
            "group",
            "--epochs",
            "1",
            "--resume-training",
            str(bad),
        ]
    )
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning: ")]
    assert code == 2 and len(err) == 1 and "not a training state of train.py" in err[0]


def test_a_state_from_before_train_on_existed_resumes_and_a_bad_cv_threshold_is_one_line(tmp_path, capsys):
    """A state whose key predates --train-on was made with its default; a summary's threshold is checked on reading."""
    path = tmp_path / "training_state.pt"
    torch.save({"key": {"arch": "efficientnet_lite0"}, "epoch": 1}, path)
    state = train.TrainingState(str(path), {}, resume=True)
    assert state.load({"arch": "efficientnet_lite0", "train_on": "train"})["epoch"] == 1
    with pytest.raises(dataset.DataError, match=r"train_on \('train' there, 'train\+val' now\)"):
        state.load({"arch": "efficientnet_lite0", "train_on": "train+val"})
    summary = tmp_path / "cv.json"
    summary.write_text(json.dumps({"folds": [], "threshold_median": 1.5}))
    with pytest.raises(dataset.DataError, match="threshold_median 1.5 is not a number between 0 and 1"):
        train.read_cv_summary(str(summary))
