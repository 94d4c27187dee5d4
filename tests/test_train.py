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
    assert {"test_accuracy", "test_recall_medical", "test_recall_non_medical", "test_confusion"} <= set(metrics)
    assert sum(map(sum, metrics["test_confusion"])) == metrics["test_n"] > 0
    assert len(raw["training"]["history"]) == 4
    assert 1 <= metrics["best_epoch"] <= 4
    assert raw["training"]["data"]["train"]  # counts per kind recorded
    net = model.load_model(str(out))
    assert metrics["test_accuracy"] >= 0.75  # ImageNet features separate these kinds even with 24 images a side
    assert net.predict([__import__("PIL.Image").Image.open(corpus_images("medical", "xray", 7)[-1])])[0] > 0.0


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


def test_offline_without_data_is_one_message_and_exit_2(tmp_path, capsys):
    code = train.main(["--data-dir", str(tmp_path), "--no-download", "--arch", "efficientnet_lite0"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CIFAR-10 files missing") and len(err.splitlines()) == 1
    write_cifar10(tmp_path)
    assert train.main(["--data-dir", str(tmp_path), "--no-download", "--arch", "efficientnet_lite0"]) == 2
    assert "pathmnist.npz" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for default in ("(default: medmnist+cifar10)", "(default: resnet50)", "(default: 28)", "(default: best_model.pth)",
                    "about 0.6 GB"):
        assert default in " ".join(text.split())
