"""train.py end to end: a few dozen corpus images, and the reference recipe on MedMNIST/CIFAR-10 files made here."""
import csv

import numpy as np
import pytest
import torch

import model
import train
from conftest import corpus_images
from fake_data import write_cifar10, write_medmnist


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """24 medical and 24 non-medical corpus images of several kinds, with their groups."""
    root = tmp_path_factory.mktemp("folder")
    rows = []
    for label, kinds in (("medical", ("xray", "ct", "histology", "fundus")),
                         ("non_medical", ("photo", "chart", "clipart", "screenshot"))):
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


def test_train_on_an_image_folder_end_to_end(small_folder, tmp_path, capsys):
    out = tmp_path / "best.pth"
    code = train.main(["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0", "--epochs", "4",
                       "--views", "1", "--kind-weight-power", "0.5", "--workers", "0", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch   4" in printed and "confusion" in printed and "test:" in printed
    raw = torch.load(out, weights_only=True)
    metrics = raw["training"]["metrics"]
    assert {"test_accuracy", "test_recall_medical", "test_recall_non_medical", "test_confusion", "test_auroc",
            "test_kind_macro_accuracy", "test_per_kind", "val_kind_macro_accuracy", "val_per_kind"} <= set(metrics)
    assert set(metrics["test_per_kind"]) <= {"xray", "ct", "histology", "fundus", "photo", "chart", "clipart",
                                             "screenshot"}
    assert sum(v["n"] for v in metrics["test_per_kind"].values()) == metrics["test_n"]
    assert 0.5 <= metrics["test_auroc"] <= 1.0
    assert sum(map(sum, metrics["test_confusion"])) == metrics["test_n"] > 0
    assert len(raw["training"]["history"]) == 4
    assert 1 <= metrics["best_epoch"] <= 4
    assert raw["training"]["data"]["train"]  # counts per kind recorded
    net = model.load_model(str(out))
    assert metrics["test_accuracy"] >= 0.75  # ImageNet features separate these kinds even with 24 images a side
    assert net.predict([__import__("PIL.Image").Image.open(corpus_images("medical", "xray", 7)[-1])])[0] > 0.0


def test_finetune_last_blocks_on_cached_activations(small_folder, tmp_path):
    """--finetune last-1: the last block, the final conv and the head are trained; the checkpoint carries
    only those layers, rebuilds from its fields, and its ONNX twin agrees with torch."""
    import engine
    from PIL import Image

    out = tmp_path / "last1.pth"
    code = train.main(["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0", "--finetune", "last-1",
                       "--epochs", "2", "--views", "1", "--workers", "0", "--output", str(out)])
    assert code == 0
    raw = torch.load(out, weights_only=True)
    stages = {int(k.split(".")[1]) for k in raw["state_dict"]}
    assert stages == {16, 17}  # block 15 and the final conv + pooling: nothing frozen is stored
    fresh = model.build_model("efficientnet_lite0")
    rebuilt = model.load_model(str(out))
    assert rebuilt.trained_stages == [16, 17]
    key = next(k for k in raw["state_dict"] if k.endswith("weight") and raw["state_dict"][k].ndim == 4)
    assert not torch.equal(rebuilt.state_dict()[key], fresh.state_dict()[key])  # adapted
    assert torch.equal(rebuilt.backbone[0][0].weight, fresh.backbone[0][0].weight)  # the stem stays ImageNet's
    images = [Image.open(p) for p in corpus_images("medical", "histology", 3) + corpus_images("non_medical", "chart", 3)]
    p_torch = rebuilt.predict(images)
    onnx = engine.open_engine(str(out), "onnx", "cpu")  # train.py wrote the twin beside the checkpoint
    assert np.abs(np.array(onnx.predict(images)) - np.array(p_torch)).max() <= 1e-4


def test_finetune_all_trains_every_layer_from_streamed_images(small_folder, tmp_path):
    out = tmp_path / "all.pth"
    code = train.main(["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0", "--finetune", "all",
                       "--epochs", "1", "--batch-size", "16", "--workers", "0", "--output", str(out)])
    assert code == 0
    raw = torch.load(out, weights_only=True)
    assert {int(k.split(".")[1]) for k in raw["state_dict"]} == set(range(18))  # stem, 16 blocks, final conv
    rebuilt, fresh = model.load_model(str(out)), model.build_model("efficientnet_lite0")
    assert not torch.equal(rebuilt.backbone[0][0].weight, fresh.backbone[0][0].weight)  # the stem was trained
    assert raw["training"]["metrics"]["test_n"] > 0


def test_an_unwritable_output_is_refused_before_any_work(small_folder, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = train.main(["--data", f"folder:{small_folder}", "--arch", "efficientnet_lite0",
                       "--output", str(blocker / "best.pth")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: cannot write {blocker / 'best.pth'}") and "epoch" not in captured.out


def test_finetune_spec_is_checked(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--finetune", "last-x"])
    assert "--finetune must be head, last-N (N >= 1) or all" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--epochs", "0"])
    assert "--epochs must be at least 1" in capsys.readouterr().err


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
    code = train.main(["--data-dir", str(data), "--no-download", "--backbone-weights", str(weights),
                       "--epochs", "2", "--output", str(out), "--workers", "0"])
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


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for default in ("(default: medmnist+cifar10)", "(default: resnet50)", "(default: 28)", "(default: best_model.pth)",
                    "about 0.6 GB"):
        assert default in " ".join(text.split())
