"""Many inputs in one run: --input-file, --jobs batching across inputs, one classification per image content,
streamed --jsonl, and --resume after a crash (SIGKILL included)."""

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import extract
import final_classification_script as cli
import pipeline
from conftest import ROOT, Server, corpus_images

IMAGES = corpus_images("medical", "xray", 3) + corpus_images("non_medical", "photo", 3)


def run(args, input_text=None, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py"), "--quiet"] + args,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
    )


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_input_file_with_comments_stdin_a_bad_line_and_a_duplicate(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# the first three\n{IMAGES[0]}\n\n  {IMAGES[1]}  \nthis is not an input\n{IMAGES[0]}\n")
    result = run([str(IMAGES[2]), "--input-file", str(listing), "--json"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert [e["input"] for e in report["inputs"]] == [
        str(IMAGES[2]),
        str(IMAGES[0]),
        str(IMAGES[1]),
        "this is not an input",
    ]
    assert [len(e["images"]) for e in report["inputs"]] == [1, 1, 1, 0]
    assert report["inputs"][3]["error"] == "no such file, folder or URL"
    piped = run(["--input-file", "-", "--json"], input_text=f"{IMAGES[3]}\n{IMAGES[4]}\n")
    assert [e["input"] for e in json.loads(piped.stdout)["inputs"]] == [str(IMAGES[3]), str(IMAGES[4])]


def test_jsonl_lines_follow_the_schema_and_stream_before_the_run_ends(tmp_path):
    server = Server()
    release = threading.Event()
    server.routes["/slow.html"] = lambda r: (release.wait(60), r._send(200, {"Content-Type": "text/html"}, b"<p>"))
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "final_classification_script.py"),
                "--quiet",
                "--jsonl",
                "-o",
                "-",
                "--jobs",
                "1",
                str(IMAGES[0]),
                str(tmp_path / "gone.png"),
                server.url + "/slow.html",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = [json.loads(process.stdout.readline()) for _ in range(3)]  # before the slow page has answered
        assert process.poll() is None
        release.set()
        rest, stderr = process.communicate(timeout=60)
    finally:
        server.httpd.shutdown()
    assert process.returncode == 1, stderr
    image, done, failed = first
    assert image["type"] == "image" and image["input"] == str(IMAGES[0])
    assert set(image) == {
        "type",
        "input",
        "source",
        "page",
        "width",
        "height",
        "label",
        "p_medical",
        "saved_path",
        "format",
    }
    assert done == {
        "type": "input",
        "input": str(IMAGES[0]),
        "kind": "image",
        "status": "done",
        "error": None,
        "images": 1,
        "skipped": 0,
        "downloads_failed": 0,
    }
    assert failed == {
        "type": "input",
        "input": str(tmp_path / "gone.png"),
        "kind": "unknown",
        "status": "failed",
        "error": "no such file, folder or URL",
        "images": 0,
        "skipped": 0,
        "downloads_failed": 0,
    }
    page, summary = lines_of(rest)
    assert page["input"] == server.url + "/slow.html" and page["status"] == "done"
    assert summary == {
        "type": "summary",
        "images": 1,
        "medical": summary["medical"],
        "non-medical": 1 - summary["medical"],
        "skipped": 0,
        "failed_inputs": 1,
    }


def _folder_inputs(tmp_path, n_folders: int) -> list[str]:
    """Folders of two images each, some sharing an image, so inputs have several lines and repeats exist."""
    folders = []
    for i in range(n_folders):
        folder = tmp_path / f"in{i:02d}"
        folder.mkdir()
        for path in (IMAGES[i % len(IMAGES)], IMAGES[(i + 1) % len(IMAGES)]):
            (folder / path.name).write_bytes(path.read_bytes())
        folders.append(str(folder))
    return folders


def _image_lines(path) -> list[tuple]:
    return sorted((r["input"], r["source"], r["p_medical"]) for r in lines_of(path.read_text()) if r["type"] == "image")


def test_resume_drops_a_cut_input_and_a_half_line_and_does_the_rest_once(tmp_path):
    inputs = _folder_inputs(tmp_path, 3)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(inputs) + "\n")
    clean = tmp_path / "clean.jsonl"
    assert run(["--input-file", str(listing), "--jsonl", "-o", str(clean)]).returncode == 0
    lines = clean.read_text().splitlines(keepends=True)
    first_done = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "input")
    crashed = tmp_path / "crashed.jsonl"
    finished = json.loads(lines[first_done])["input"]
    cut = next(line for line in lines if json.loads(line)["input"] != finished)  # an input the crash cut off
    crashed.write_text("".join(lines[: first_done + 1]) + cut + cut[:25])
    result = run(["--input-file", str(listing), "--jsonl", "-o", str(crashed), "--resume"])
    assert result.returncode == 0, result.stderr
    assert "skipping the 1 input it has finished" in result.stderr
    assert _image_lines(crashed) == _image_lines(clean)
    assert sorted(r["input"] for r in lines_of(crashed.read_text()) if r["type"] == "input") == sorted(inputs)


def test_a_run_killed_at_a_random_moment_and_resumed_has_every_line_once(tmp_path):
    inputs = _folder_inputs(tmp_path, 12)
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(inputs) + "\n")
    clean = tmp_path / "clean.jsonl"
    assert run(["--input-file", str(listing), "--jsonl", "-o", str(clean), "--batch-size", "2"]).returncode == 0
    out = tmp_path / "killed.jsonl"
    args = [
        sys.executable,
        str(ROOT / "final_classification_script.py"),
        "--quiet",
        "--input-file",
        str(listing),
        "--jsonl",
        "-o",
        str(out),
        "--batch-size",
        "2",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _image_lines(out) == _image_lines(clean)
    records = lines_of(out.read_text())
    assert sorted(r["input"] for r in records if r["type"] == "input") == sorted(inputs)
    assert [r["type"] for r in records].count("summary") == 1
    summary = next(r for r in records if r["type"] == "summary")
    assert summary["images"] == len(_image_lines(out)) and summary["failed_inputs"] == 0  # the whole file


class CountingEngine:
    """The shipped engine, recording every batch it is given; `delay` makes it the bottleneck."""

    def __init__(self, model, delay: float = 0.0):
        self.model, self.delay, self.batches = model, delay, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, images, batch_size=None):
        self.batches.append(len(images))
        time.sleep(self.delay)
        return self.model.predict(images, batch_size)


def _events(model, texts, jobs=4, batch_size=4):
    options = extract.Options(working_size=256)
    run = pipeline.Run(model, options, jobs=jobs, batch_size=batch_size)
    events = list(run.results(texts))
    run.close()
    return run, events


def test_the_same_image_in_many_inputs_is_classified_once_and_reported_every_time(shipped_model, tmp_path):
    model = CountingEngine(shipped_model)
    texts = [str(IMAGES[0])] * 1 + _folder_inputs(tmp_path, 2) + [str(IMAGES[0])]
    run, events = _events(model, texts)
    images = [(e[1].text, e[2].source, e[3]) for e in events if e[0] == "image"]
    assert len(images) == 1 + 2 + 2 + 1
    first = [p for text, source, p in images if source.endswith(IMAGES[0].name)]
    assert len(first) == 3 and len(set(first)) == 1
    assert sum(model.batches) == run.classified == 3  # IMAGES[0], [1], [2] once each
    assert run.reused == 3


def test_images_of_many_inputs_share_full_batches(shipped_model, tmp_path):
    model = CountingEngine(shipped_model, delay=0.2)
    folders = []
    for i, path in enumerate(IMAGES + corpus_images("medical", "histology", 6)):
        folder = tmp_path / f"one{i}"
        folder.mkdir()
        (folder / f"{i}.png").write_bytes(cli.extract.read_file(str(path), extract.Options()))
        folders.append(str(folder))
    _, events = _events(model, folders, jobs=4, batch_size=4)
    ends = [e for e in events if e[0] == "end"]
    assert len(ends) == 12 and all(e[1].error is None for e in ends)
    assert sum(model.batches) == 12 and model.batches.count(4) >= 2 and len(model.batches) <= 4


@pytest.mark.parametrize("jobs", [1, 3])
def test_results_come_out_in_input_order_whatever_the_jobs(shipped_model, tmp_path, jobs):
    texts = _folder_inputs(tmp_path, 5)
    report = tmp_path / "out.json"
    result = run(["--json", "-o", str(report), "--jobs", str(jobs)] + texts)
    assert result.returncode == 0
    assert [e["input"] for e in json.loads(report.read_text())["inputs"]] == texts


def test_jsonl_with_a_report_writes_both(tmp_path):
    result = run(
        [
            str(IMAGES[0]),
            str(IMAGES[3]),
            "--jsonl",
            "-o",
            str(tmp_path / "out.jsonl"),
            "--report",
            str(tmp_path / "report.html"),
        ]
    )
    assert result.returncode == 0
    sources = [r["source"] for r in lines_of((tmp_path / "out.jsonl").read_text()) if r["type"] == "image"]
    html = (tmp_path / "report.html").read_text()
    assert len(sources) == 2 and all(source in html for source in sources) and html.count("data:image/jpeg") == 2
