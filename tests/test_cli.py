"""The CLI: JSON contract, table, CSV, --save-dir, --report, exit codes, and every shared PDF and page."""

import csv
import io
import json
import os
import random
import subprocess
import sys

import pymupdf
import pytest
from PIL import Image

import final_classification_script as cli
from conftest import ROOT, SHARED, Server, corpus_images, image_bytes, make_pdf

MEDICAL = corpus_images("medical", "ct", 2) + corpus_images("medical", "dermoscopy", 1)
NON_MEDICAL = corpus_images("non_medical", "photo", 2) + corpus_images("non_medical", "chart", 1)


def run_cli(args, capsys):
    code = cli.main(args + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def inputs(tmp_path):
    pdf = make_pdf(tmp_path / "paper.pdf", [MEDICAL[0], NON_MEDICAL[0]])
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in (MEDICAL[1], NON_MEDICAL[1]):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "readme.txt").write_text("ignored")
    return {"pdf": str(pdf), "image": str(MEDICAL[2]), "folder": str(folder)}


def test_json_contract(inputs, tmp_path, capsys, shipped_model_path):
    code, out, _ = run_cli(["--json", inputs["pdf"], inputs["image"], inputs["folder"]], capsys)
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"model", "inputs", "summary"}
    assert report["model"] == {
        "path": os.path.abspath(shipped_model_path),
        "arch": "efficientnet_lite0",
        "threshold": pytest.approx(report["model"]["threshold"]),
        "engine": "onnx",
    }
    assert [i["kind"] for i in report["inputs"]] == ["pdf", "image", "folder"]
    for entry in report["inputs"]:
        assert set(entry) == {"input", "kind", "error", "images", "skipped", "downloads_failed"}
        assert entry["error"] is None and entry["downloads_failed"] == 0
        for image in entry["images"]:
            assert set(image) == {"source", "page", "width", "height", "label", "p_medical", "saved_path", "format"}
            assert image["label"] in ("medical", "non-medical") and 0 <= image["p_medical"] <= 1
            assert (image["label"] == "medical") == (image["p_medical"] >= report["model"]["threshold"])
    pdf_images = report["inputs"][0]["images"]
    assert [(i["source"], i["page"], i["format"]) for i in pdf_images] == [
        (inputs["pdf"] + "#page=1&image=1", 1, "jpeg"),
        (inputs["pdf"] + "#page=2&image=1", 2, "jpeg"),
    ]
    assert [i["label"] for i in pdf_images] == ["medical", "non-medical"]  # a CT slice and a photo
    assert report["inputs"][1]["images"][0]["label"] == "medical"
    assert report["summary"] == {
        "images": 5,
        "medical": report["summary"]["medical"],
        "non-medical": 5 - report["summary"]["medical"],
        "skipped": 0,
        "failed_inputs": 0,
    }


def test_one_failing_input_keeps_the_others_and_exits_1(inputs, tmp_path, capsys):
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n garbage")
    code, out, err = run_cli(
        ["--json", inputs["image"], str(broken), str(tmp_path / "missing.png"), inputs["pdf"]], capsys
    )
    assert code == 1
    report = json.loads(out)
    errors = [i["error"] for i in report["inputs"]]
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith("not a readable PDF") and errors[2] == "no such file, folder or URL"
    assert len(report["inputs"][0]["images"]) == 1 and len(report["inputs"][3]["images"]) == 2
    assert report["summary"]["failed_inputs"] == 2
    assert "Traceback" not in err


def test_max_images_caps_a_folder_and_lists_the_rest(inputs, capsys):
    code, out, _ = run_cli(["--json", "--max-images", "1", inputs["folder"]], capsys)
    entry = json.loads(out)["inputs"][0]
    assert code == 0 and len(entry["images"]) == 1
    assert [s["reason"] for s in entry["skipped"]] == ["over --max-images (1)"]


def test_bad_arguments_exit_2(capsys):
    for args in (["--threshold", "3", "x.png"], ["--min-size", "-1", "x.png"], []):
        with pytest.raises(SystemExit) as info:
            cli.main(args)
        assert info.value.code == 2
    capsys.readouterr()


def test_missing_or_corrupt_model_exits_2_with_one_line(inputs, tmp_path, capsys):
    code, out, err = run_cli(["--model", str(tmp_path / "none.pth"), inputs["image"]], capsys)
    assert (
        code == 2
        and err.startswith(f"error: {tmp_path / 'none.pth'}: no such file")
        and len(err.strip().splitlines()) == 1
    )
    bad = tmp_path / "bad.pth"
    bad.write_bytes(os.urandom(5000))
    code, _, err = run_cli(["--model", str(bad), inputs["image"]], capsys)
    assert code == 2 and "not a model checkpoint" in err


def test_table_and_threshold_override(inputs, capsys):
    code, out, _ = run_cli([inputs["pdf"], "--threshold", "0"], capsys)
    assert code == 0
    assert out.count(" medical ") == 2 and "2 images: 2 medical, 0 non-medical" in out
    assert "paper.pdf#page=2&image=1" in out and "size" in out and "p(medical)" in out


def test_csv_has_a_row_per_image_and_skip(inputs, tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10)).save(tiny)
    code, out, _ = run_cli(["--csv", inputs["pdf"], str(tiny)], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["status"] for r in rows] == ["classified", "classified", "skipped"]
    assert rows[2]["reason"] == "smaller than 32 px (10x10)" and rows[0]["page"] == "1"


def test_save_dir_and_output_file(inputs, tmp_path, capsys):
    save, out_file = tmp_path / "saved", tmp_path / "out.json"
    code, out, _ = run_cli(
        ["--json", "-o", str(out_file), "--save-dir", str(save), inputs["pdf"], inputs["folder"]], capsys
    )
    assert code == 0 and out == ""
    report = json.loads(out_file.read_text())
    paths = [i["saved_path"] for e in report["inputs"] for i in e["images"]]
    assert len(paths) == 4 and len(set(paths)) == 4
    for path, image in zip(paths, [i for e in report["inputs"] for i in e["images"]]):
        with Image.open(path) as saved:
            assert saved.size == (image["width"], image["height"])


def test_page_url_through_the_cli(server, capsys):
    server.add("/scan.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/photo.jpg", image_bytes(NON_MEDICAL[0], "JPEG"), "image/jpeg")
    server.add("/dot.gif", image_bytes(NON_MEDICAL[0], "GIF", size=(1, 1)), "image/gif")
    server.add("/a.html", b'<img src="scan.png"><img data-src="photo.jpg" src="dot.gif"><img src="gone.png">')
    code, out, _ = run_cli(["--json", server.url + "/a.html"], capsys)
    entry = json.loads(out)["inputs"][0]
    assert code == 0 and entry["kind"] == "url"
    assert {(i["source"].rsplit("/", 1)[1], i["label"]) for i in entry["images"]} == {
        ("scan.png", "medical"),
        ("photo.jpg", "non-medical"),
    }
    assert {s["source"].rsplit("/", 1)[1]: s["reason"] for s in entry["skipped"]} == {
        "gone.png": "download failed: HTTP 404"
    }  # the placeholder dot.gif is not read: its element shows photo.jpg
    assert server.hits.get("/dot.gif") is None


def test_hostile_inputs_each_fail_clearly_and_the_good_one_completes(server, tmp_path, capsys):
    from conftest import endless, trickle

    server.routes["/endless"] = endless
    server.routes["/trickle"] = trickle
    server.redirect("/loop", "/loop")
    server.add("/passwd.html", b'<img src="file:///etc/passwd"><img src="ftp://host/x.png">')
    locked = tmp_path / "locked.pdf"
    make_pdf(tmp_path / "plain.pdf", [MEDICAL[0]])
    pymupdf.open(tmp_path / "plain.pdf").save(
        locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw", owner_pw="owner"
    )
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes((tmp_path / "plain.pdf").read_bytes()[:300])
    inputs = [
        server.url + "/endless",
        server.url + "/trickle",
        server.url + "/loop",
        server.url + "/passwd.html",
        str(locked),
        str(truncated),
        "file:///etc/passwd",
        "gopher://x/",
        str(MEDICAL[1]),
    ]
    code, out, err = run_cli(["--json", "--timeout", "2"] + inputs, capsys)
    report = json.loads(out)
    assert code == 1 and "Traceback" not in err
    by_input = {e["input"]: e for e in report["inputs"]}
    assert "longer than 2 s" in by_input[server.url + "/trickle"]["error"]
    assert (
        "byte cap" in by_input[server.url + "/endless"]["error"]
        or "longer" in by_input[server.url + "/endless"]["error"]
    )
    assert by_input[server.url + "/loop"]["error"] == "more than 5 redirects"
    assert by_input[str(locked)]["error"] == "encrypted PDF that needs a password (--password PASSWORD opens it)"
    assert by_input["file:///etc/passwd"]["error"].startswith("unsupported URL scheme file")
    assert by_input["gopher://x/"]["error"].startswith("unsupported URL scheme gopher")
    assert [s["reason"].split(":")[0] for s in by_input[server.url + "/passwd.html"]["skipped"]] == [
        "unsupported URL scheme file",
        "unsupported URL scheme ftp",
    ]
    assert len(by_input[str(MEDICAL[1])]["images"]) == 1 and by_input[str(MEDICAL[1])]["error"] is None


def _run_subprocess(args, timeout):
    return subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py"), "--quiet", "--json"] + args,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(not (SHARED / "pdfs").exists(), reason="no shared PDFs")
def test_every_shared_pdf_runs_without_traceback_or_hang():
    pdfs = sorted(str(p) for p in (SHARED / "pdfs").glob("*.pdf"))
    result = _run_subprocess(["--max-images", "25"] + pdfs, timeout=900)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode in (0, 1)
    report = json.loads(result.stdout)
    assert len(report["inputs"]) == len(pdfs)
    errors = {os.path.basename(e["input"]): e["error"] for e in report["inputs"] if e["error"]}
    manifest = json.loads((SHARED / "pdfs" / "manifest.json").read_text())
    for name, error in errors.items():
        assert manifest[name]["hostile"], f"{name} failed: {error}"
        assert "\n" not in error and not error.startswith("unexpected")
    assert report["summary"]["images"] > 300


@pytest.mark.skipif(not (SHARED / "pages").exists(), reason="no shared pages")
def test_every_shared_page_runs_without_traceback_or_hang():
    """The pages' images live on the real web, out of reach: every download fails fast and is listed."""
    server = Server()
    try:
        for page in (SHARED / "pages").glob("*.html"):
            server.add("/" + page.name, page.read_bytes())
        urls = [f"{server.url}/{p.name}" for p in sorted((SHARED / "pages").glob("*.html"))]
        result = _run_subprocess(["--timeout", "5", "--max-images", "60"] + urls, timeout=900)
    finally:
        server.httpd.shutdown()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [e["error"] for e in report["inputs"]] == [None] * len(urls)
    assert report["summary"]["skipped"] > 40 * 5


def test_unusable_local_files_are_failed_inputs(tmp_path, capsys):
    (tmp_path / "notes.pdf").write_text("Dear reviewer,\nthe PDF follows.\n")
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "noise.jpg").write_bytes(random.Random(0).randbytes(4096))
    names = ["notes.pdf", "empty.pdf", "noise.jpg"]
    code, out, err = run_cli(["--json"] + [str(tmp_path / n) for n in names] + [str(MEDICAL[0])], capsys)
    report = json.loads(out)
    assert code == 1 and "Traceback" not in err
    assert [e["error"] for e in report["inputs"]] == [
        "text file: not an image, PDF, DICOM or web page",
        "empty file: not an image, PDF, DICOM or web page",
        "unknown binary: not an image, PDF, DICOM or web page",
        None,
    ]
    assert report["summary"]["failed_inputs"] == 3 and report["summary"]["images"] == 1


def test_every_image_has_its_own_source_and_save_name(tmp_path, capsys):
    doc = pymupdf.open()
    page = doc.new_page()
    for i, path in enumerate(NON_MEDICAL[:2]):
        page.insert_image(pymupdf.Rect(20, 20 + 300 * i, 300, 300 + 300 * i), stream=image_bytes(path, "JPEG"))
    doc.save(tmp_path / "paper.pdf")
    frames = [Image.open(p).convert("L").resize((64, 64)) for p in MEDICAL]
    frames[0].save(tmp_path / "scan.tif", save_all=True, append_images=frames[1:])
    save = tmp_path / "saved"
    code, out, _ = run_cli(
        ["--json", "--save-dir", str(save), str(tmp_path / "paper.pdf"), str(tmp_path / "scan.tif")], capsys
    )
    images = [i for e in json.loads(out)["inputs"] for i in e["images"]]
    assert code == 0
    assert [(i["source"].rsplit("/", 1)[1], os.path.basename(i["saved_path"]), i["format"]) for i in images] == [
        ("paper.pdf#page=1&image=1", "paper_p001_i01.jpg", "jpeg"),
        ("paper.pdf#page=1&image=2", "paper_p001_i02.jpg", "jpeg"),
        ("scan.tif#frame=1", "scan_f001.png", "tiff"),
        ("scan.tif#frame=2", "scan_f002.png", "tiff"),
        ("scan.tif#frame=3", "scan_f003.png", "tiff"),
    ]
    for image in images:
        with Image.open(image["saved_path"]) as saved:
            assert saved.size == (image["width"], image["height"])


def test_dicom_pages_and_password_through_the_cli(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    make_pdf(tmp_path / "plain.pdf", [MEDICAL[0], NON_MEDICAL[0], MEDICAL[1]])
    pymupdf.open(tmp_path / "plain.pdf").save(
        tmp_path / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="hunter2", owner_pw="owner"
    )
    (tmp_path / "us.dcm").write_bytes(open(get_testdata_file("examples_ybr_color.dcm"), "rb").read())
    (tmp_path / "ct").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    code, out, err = run_cli(
        [
            "--json",
            "--pages",
            "2-",
            "--password",
            "hunter2",
            "--all-frames",
            "--max-images",
            "4",
            str(tmp_path / "locked.pdf"),
            str(tmp_path / "us.dcm"),
            str(tmp_path / "ct"),
        ],
        capsys,
    )
    assert code == 0 and "hunter2" not in out + err
    pdf, us, ct = json.loads(out)["inputs"]
    assert [i["page"] for i in pdf["images"]] == [2, 3]
    assert [i["source"].rsplit("#", 1)[1] for i in us["images"]] == ["frame=1", "frame=2", "frame=3", "frame=4"]
    assert len(us["skipped"]) == 26 and {i["format"] for i in us["images"] + ct["images"]} == {"dicom"}
    assert ct["kind"] == "image" and ct["images"][0]["label"] == "medical"
    with pytest.raises(SystemExit) as info:
        cli.main(["--pages", "9-2", str(tmp_path / "plain.pdf")])
    assert info.value.code == 2
    capsys.readouterr()


def test_a_link_around_a_thumbnail_is_reported_with_both_urls(server, capsys):
    server.add("/full.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/thumb.png", image_bytes(MEDICAL[0], "PNG", size=(48, 48)), "image/png")
    server.add("/a.html", b'<a href="full.png"><img src="thumb.png"></a>')
    code, out, _ = run_cli(["--json", server.url + "/a.html"], capsys)
    [image] = json.loads(out)["inputs"][0]["images"]
    assert (image["source"], image["thumbnail"], image["format"]) == (
        server.url + "/full.png",
        server.url + "/thumb.png",
        "png",
    )
