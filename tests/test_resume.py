"""Resume at the file and page level: a folder, a PDF cut half-way and a crawl carry on where they stopped.

The JSON lines contract: after every file of a folder (every page of a crawl) comes a line
{"type": "file", "input", "file", "covers", ["links"]}; --resume keeps an unfinished input's lines up to its
last such line, does not read those files (fetch those pages) again, and does the rest.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import ROOT, corpus_images, default_sigint, image_bytes, make_pdf
from test_cli_safety import run


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _images(path) -> list[str]:
    return [r["source"] for r in _lines(path) if r["type"] == "image"]


def _folder(tmp_path, n: int, name: str = "in"):
    """n distinct images: corpus files, each re-encoded at its own size so no two share their pixels."""
    folder = tmp_path / name
    folder.mkdir()
    pool = [
        path for pair in zip(corpus_images("medical", None, n), corpus_images("non_medical", None, n)) for path in pair
    ]
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(image_bytes(pool[i], "PNG", size=(40 + i, 40 + i)))
    return folder


def test_sigkill_mid_folder_then_resume_classifies_every_image_exactly_once(tmp_path):
    folder = _folder(tmp_path, 300)
    out = tmp_path / "out.jsonl"
    command = [
        sys.executable,
        str(ROOT / "final_classification_script.py"),
        "--jsonl",
        "-o",
        str(out),
        str(folder),
        "--quiet",
        "--batch-size",
        "4",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count('"type": "image"') < 60):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    before = out.read_text().count('"type": "image"')
    assert 60 <= before < 300, "killed mid-way"
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (
        f"skipping {before // 1} files" in done.stderr
        or "files (or crawled pages) already done of 1 input cut off mid-way" in done.stderr
    )
    images = _images(out)
    assert sorted(images) == sorted(str(p) for p in folder.iterdir()), "every image exactly once"
    files = [r["file"] for r in _lines(out) if r["type"] == "file"]
    assert sorted(files) == sorted(images), "every file finished once"
    [summary] = [r for r in _lines(out) if r["type"] == "summary"]
    assert summary["images"] == 300


def test_a_pdf_cut_half_way_is_redone_and_the_files_before_it_are_not(tmp_path):
    folder = _folder(tmp_path, 3)
    make_pdf(folder / "paper.pdf", corpus_images("medical", "ct", 3))
    out = tmp_path / "out.jsonl"
    assert run(["--jsonl", "-o", str(out), str(folder), "--quiet"]).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    first_pdf_image = next(i for i, line in enumerate(lines) if "paper.pdf#page=2" in line)
    out.write_text("".join(lines[:first_pdf_image]) + lines[first_pdf_image][:20])  # a crash after the PDF's page 1
    done = run(["--jsonl", "-o", str(out), str(folder), "--quiet", "--resume"])
    assert done.returncode == 0, done.stderr
    records = _lines(out)
    images = [r["source"] for r in records if r["type"] == "image"]
    assert len(images) == len(set(images)) == 6
    assert [r["file"] for r in records if r["type"] == "file"] == sorted(str(p) for p in folder.iterdir())
    assert [r["input"] for r in records if r["type"] == "input"] == [str(folder)]


def test_an_interrupted_folder_counts_what_was_written_and_a_document_lists_it(tmp_path):
    from test_cli_safety import _slow_page_server

    folder = _folder(tmp_path, 40)
    os.mkfifo(folder / "pipe.png")  # passed over: a FIFO in a folder never blocks the walk
    server, asked = _slow_page_server(60)
    (folder / "zzz.html").write_text(f'<img src="{server.url}/slow.html">')  # the walk's last file hangs
    try:
        for flags, out in ((["--jsonl"], tmp_path / "out.jsonl"), (["--json"], tmp_path / "out.json")):
            asked.clear()
            command = [
                sys.executable,
                str(ROOT / "final_classification_script.py"),
                *flags,
                "-o",
                str(out),
                str(folder),
                "--batch-size",
                "4",
                "--timeout",
                "60",
                "--quiet",
            ]
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
            )
            assert asked.wait(60)
            time.sleep(1)
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 130, stderr
            if flags == ["--jsonl"]:
                records = _lines(out)
                written = sum(r["type"] == "image" for r in records)
                assert records[-1]["type"] == "summary" and records[-1]["interrupted"] is True
                assert records[-1]["images"] == written == 40
            else:
                report = json.loads(out.read_text())
                [entry] = report["inputs"]
                assert entry["interrupted"] is True and len(entry["images"]) == 40
                assert report["summary"]["images"] == 40 and report["summary"]["interrupted"] is True
            assert "40 images:" in stderr and "0 of 1 input failed; interrupted" in stderr
    finally:
        server.httpd.shutdown()


def test_a_resumed_crawl_fetches_no_finished_page_again(server, tmp_path):
    pictures = corpus_images("non_medical", "photo", 3) + corpus_images("medical", "xray", 3)
    for i, path in enumerate(pictures):
        server.add(f"/img/{i}.png", image_bytes(path, "PNG", size=(64, 64)), "image/png")
    server.add("/", b'<a href="/a.html">a</a><a href="/b.html">b</a><img src="/img/0.png"><img src="/img/1.png">')
    server.add("/a.html", b'<a href="/c.html">c</a><img src="/img/2.png"><img src="/img/3.png">')
    server.add("/b.html", b'<img src="/img/4.png">')
    server.add("/c.html", b'<img src="/img/5.png"><img src="/img/0.png">')
    server.add("/robots.txt", b"", "text/plain")
    out = tmp_path / "crawl.jsonl"
    command = ["--jsonl", "-o", str(out), server.url + "/", "--crawl", "2", "--delay", "0", "--quiet"]
    assert run(command).returncode == 0
    full = _lines(out)
    assert sorted(r["file"] for r in full if r["type"] == "file") == [
        server.url + p for p in ("/", "/a.html", "/b.html", "/c.html")
    ]
    lines = out.read_text().splitlines(keepends=True)
    second_file = [i for i, line in enumerate(lines) if '"type": "file"' in line][1]
    out.write_text("".join(lines[: second_file + 1]))  # stopped after two pages
    server.hits.clear()
    done = run(command + ["--resume"])
    assert done.returncode == 0, done.stderr
    assert server.hits.get("/", 0) == 0 and server.hits.get("/a.html", 0) == 0, server.hits
    assert server.hits.get("/b.html") == 1 and server.hits.get("/c.html") == 1
    assert sorted(_images(out)) == sorted(r["source"] for r in full if r["type"] == "image")
    assert sorted(_images(out)) == sorted(server.url + f"/img/{i}.png" for i in range(6))


def test_a_mirrored_site_reads_images_anywhere_in_the_folder_given(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "img").mkdir(parents=True)
    (mirror / "sub").mkdir()
    photo = corpus_images("non_medical", "photo", 1)[0]
    shutil.copy(photo, mirror / "img" / f"x{photo.suffix}")
    (mirror / "sub" / "page2.html").write_text(f'<img src="../img/x{photo.suffix}"><img src="../../outside.png">')
    shutil.copy(photo, tmp_path / "outside.png")
    report = json.loads(run(["--json", str(mirror), "--quiet"]).stdout)
    [entry] = report["inputs"]
    assert [im["source"] for im in entry["images"]] == [str(mirror / "img" / f"x{photo.suffix}")]
    assert [s["reason"] for s in entry["skipped"]] == [f"outside the input folder {mirror} (not read)"]
    alone = json.loads(run(["--json", str(mirror / "sub" / "page2.html"), "--quiet"]).stdout)["inputs"][0]
    assert alone["images"] == [] and {s["reason"] for s in alone["skipped"]} == {
        "outside the saved page's folder (not read)"
    }
    assert os.path.exists(mirror / "img" / f"x{photo.suffix}")
