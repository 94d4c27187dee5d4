"""`--model` pointing at something that is not a checkpoint: one line saying what it is and what to give, exit 2."""

import pymupdf
import pytest
import torch

import final_classification_script as cli
from conftest import ROOT, corpus_images, image_bytes
from test_engine import run_blocked

HINT = "give a .pth file written by train.py"


def make(folder, name: str):
    """A file of the kind its name says, made here from real bytes."""
    path = folder / name
    if name == "notes.txt":
        path.write_text("Reading list\n- the transformer paper\n- the ResNet paper\n")
    elif name == "paper.pdf":
        doc = pymupdf.open()
        doc.new_page().insert_text((72, 72), "A paper, not a model")
        doc.save(path)
    elif name == "scan.png":
        path.write_bytes(image_bytes(corpus_images("medical", "ct", 1)[0]))
    elif name == "empty.pth":
        path.write_bytes(b"")
    elif name == "module.pth":  # a whole nn.Module pickled: torch's weights_only page is what it used to print
        torch.save(torch.nn.Linear(4, 2), path)
    elif name == "state_dict.pth":  # a real torch file, but a bare state dict
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    elif name == "truncated.pth":
        path.write_bytes((ROOT / "best_model.pth").read_bytes()[:200_000])
    elif name == "best_model.onnx":
        path.write_bytes((ROOT / "best_model.onnx").read_bytes()[:200_000])
    elif name == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "name, says",
    [
        ("notes.txt", "not a model checkpoint (a text file)"),
        ("paper.pdf", "not a model checkpoint (a PDF)"),
        ("scan.png", "not a model checkpoint (an image)"),
        ("empty.pth", "not a model checkpoint (an empty file)"),
        ("module.pth", "not a model checkpoint (a pickle holding code or objects, not only tensors)"),
        (
            "state_dict.pth",
            "not a model checkpoint (a torch file, missing: arch, classes, format_version, head, "
            "preprocess, threshold)",
        ),
        ("truncated.pth", "not a model checkpoint (a damaged or truncated zip archive)"),
        ("best_model.onnx", "not a model checkpoint (an ONNX export, which the CLI finds beside its .pth)"),
        ("folder", "not a model checkpoint (a folder)"),
        ("absent.pth", "no such file"),
    ],
)
def test_a_model_that_is_not_a_checkpoint_is_one_line_naming_what_it_is(tmp_path, capsys, name, says):
    model = make(tmp_path, name)
    image = str(corpus_images("non_medical", "photo", 1)[0])
    code = cli.main(["--model", str(model), image, "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == [f"error: {model}: {says}; {HINT}"]


def test_the_light_install_names_a_text_model_file_the_same_way(tmp_path):
    """Without torch the CLI once said a text file had no ONNX export and asked for torch."""
    notes = make(tmp_path, "notes.txt")
    image = str(corpus_images("non_medical", "photo", 1)[0])
    done = run_blocked("torch", ["--quiet", "--model", str(notes), image], tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"error: {notes}: not a model checkpoint (a text file); {HINT}"
