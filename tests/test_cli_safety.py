"""A CLI that never loses work: output paths checked first, signals, --quiet, --only, --by-label, the schema's kind.

Each failure path runs the CLI as a subprocess and checks the exit code, the one error line and what is on disk.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import final_classification_script as cli
from conftest import ROOT, Server, corpus_images, default_sigint, make_pdf

MEDICAL = corpus_images("medical", "ct", 2)
NON_MEDICAL = corpus_images("non_medical", "photo", 2)


def start(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "final_classification_script.py")] + args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
        **kwargs,
    )


def run(args, timeout=120):
    return subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py")] + args,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.mark.parametrize(
    "option, target, message",
    [
        ("-o", "missing/out.json", "folder {tmp}/missing does not exist; create it first"),
        ("--report", "folder", "is a folder; give a file name"),
        ("--save-dir", "a_file", "is a file, not a folder"),
    ],
)
def test_a_bad_output_path_fails_before_any_input_is_read(tmp_path, option, target, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    slow = Server()
    hit = threading.Event()
    slow.routes["/page.html"] = lambda request: (hit.set(), request._send(200, {"Content-Type": "text/html"}, b""))
    try:
        result = run([slow.url + "/page.html", "--json", option, str(tmp_path / target)])
    finally:
        slow.httpd.shutdown()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {option} {tmp_path / target}: " + message.format(tmp=tmp_path)
    ]
    assert not hit.is_set(), "no input may be read before the outputs are known to be writable"


def test_a_save_dir_problem_is_a_note_per_image_and_every_classification_is_kept(tmp_path):
    save_dir = tmp_path / "saved"
    save_dir.mkdir()
    (save_dir / "medical").write_text("a file where --by-label wants a folder")
    (save_dir / "non-medical").write_text("likewise")
    out = tmp_path / "out.json"
    result = run(
        [str(p) for p in MEDICAL + NON_MEDICAL]
        + ["--json", "-o", str(out), "--save-dir", str(save_dir), "--by-label", "--quiet"]
    )
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 4 and all("classified but not saved" in line for line in notes)
    report = json.loads(out.read_text())
    assert report["summary"]["images"] == 4
    assert all(im["saved_path"] is None for e in report["inputs"] for im in e["images"])


def test_by_label_sorts_saved_images_and_only_filters_what_is_printed_and_saved(tmp_path):
    save_dir = tmp_path / "saved"
    result = run(
        [str(p) for p in MEDICAL + NON_MEDICAL] + ["--json", "--save-dir", str(save_dir), "--by-label", "--quiet"]
    )
    report = json.loads(result.stdout)
    for entry in report["inputs"]:
        for image in entry["images"]:
            assert os.path.dirname(image["saved_path"]) == str(save_dir / image["label"])
            assert os.path.exists(image["saved_path"])
    labels = [im["label"] for e in report["inputs"] for im in e["images"]]
    assert sorted(os.listdir(save_dir)) == sorted(set(labels))

    only_dir = tmp_path / "only"
    result = run(
        [str(p) for p in MEDICAL + NON_MEDICAL]
        + ["--json", "--save-dir", str(only_dir), "--only", "medical", "--quiet"]
    )
    only = json.loads(result.stdout)
    shown = [im for e in only["inputs"] for im in e["images"]]
    assert shown and all(im["label"] == "medical" for im in shown)
    assert len(shown) == labels.count("medical") == len(os.listdir(only_dir))
    assert only["summary"]["images"] == 4 and only["summary"]["non-medical"] == labels.count("non-medical")


def _slow_page_server(seconds: float):
    server = Server()
    asked = threading.Event()

    def handler(request):
        asked.set()
        threading.Event().wait(seconds)
        request._send(200, {"Content-Type": "text/html"}, b"<p>late</p>")

    server.routes["/slow.html"] = handler
    return server, asked


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_writes_the_finished_inputs_and_exits_130(tmp_path, signum):
    server, asked = _slow_page_server(60)
    out = tmp_path / "out.json"
    try:
        process = start(
            [
                str(MEDICAL[0]),
                str(NON_MEDICAL[0]),
                server.url + "/slow.html",
                "--jobs",
                "1",
                "--json",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        assert asked.wait(60), process.communicate()[1]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        server.httpd.shutdown()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    report = json.loads(out.read_text())
    assert [e["input"] for e in report["inputs"]] == [str(MEDICAL[0]), str(NON_MEDICAL[0])]
    assert report["summary"]["interrupted"] is True and report["summary"]["images"] == 2
    assert "interrupted" in stderr.splitlines()[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "no temporary file left behind"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask(), "the mode any new file gets, not a temporary's 0600"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_quiet_silences_progress_only(tmp_path):
    out = tmp_path / "out.json"
    result = run([str(MEDICAL[0]), str(tmp_path / "missing.png"), "--json", "-o", str(out), "--quiet"])
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'missing.png'}: no such file, folder or URL",
        "1 image: 1 medical, 0 non-medical; 0 skipped; 1 of 2 inputs failed",
    ]
    report = json.loads(out.read_text())
    assert report["inputs"][1]["kind"] == "unknown" and report["model"]["threshold"] == round(
        report["model"]["threshold"], 4
    )


def test_progress_bar_shows_the_total_a_pdf_announces(tmp_path, capsys):
    make_pdf(tmp_path / "four.pdf", MEDICAL + NON_MEDICAL)
    assert cli.main([str(tmp_path / "four.pdf"), "--json"]) == 0
    assert "4/4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min-size", "-1", "x.png"], "argument --min-size: must be 0 or more, not -1"),
        (["--timeout", "0", "x.png"], "argument --timeout: must be more than 0, not 0"),
        (["--jobs", "many", "x.png"], "argument --jobs: 'many' is not a whole number"),
        ([], "no input: give at least one INPUT or --input-file FILE"),
        (["--resume", "x.png"], "--resume needs --jsonl and -o FILE: the file it resumes"),
        (["--by-label", "x.png"], "--by-label sorts what --save-dir saves: give --save-dir DIR too"),
    ],
)
def test_argument_errors_say_what_to_do(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {message} (see python final_classification_script.py --help)"
    ]  # one line, no usage before it


def test_version_and_a_quick_help_without_torch(tmp_path):
    blocker = tmp_path / "torch.py"
    blocker.write_text("raise ImportError('torch is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    version = subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py"), "--version"],
        capture_output=True,
        text=True,
        env=env,
    )
    from version import __version__

    assert version.returncode == 0 and version.stdout.split() == ["final_classification_script.py", __version__]
    helped = subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert helped.returncode == 0 and "--input-file" in helped.stdout and "(default: 4)" in helped.stdout


def test_an_html_page_served_for_a_pdf_url_is_a_failed_input(server, capsys):
    server.add("/paper.pdf", b"<html><body><h1>404 Not Found</h1></body></html>", "application/pdf")
    server.add("/article", b"<html><body><p>no pictures</p></body></html>", "text/html")
    assert cli.main([server.url + "/paper.pdf", server.url + "/article", "--json", "--quiet"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [e["error"] for e in report["inputs"]] == ["HTML error page: not an image, PDF, DICOM or web page", None]


def test_stdout_closed_by_the_reader_stops_quietly(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i, path in enumerate((MEDICAL + NON_MEDICAL) * 3):
        (folder / f"{i}_{path.name}").write_bytes(path.read_bytes())
    pipeline = subprocess.run(
        f"{sys.executable} {ROOT / 'final_classification_script.py'} {folder} --jsonl --batch-size 1 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(pipeline.stdout)["type"] == "image"
    assert "Traceback" not in pipeline.stderr and "BrokenPipe" not in pipeline.stderr


def test_outputs_that_would_overwrite_inputs_or_are_not_this_tools_are_refused(tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{MEDICAL[0]}  # a trailing comment\n")
    image = tmp_path / "scan.png"
    image.write_bytes(MEDICAL[1].read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for args, message in (
        (["--input-file", str(listing), "--jsonl", "-o", str(listing)], f"-o {listing}: would overwrite an input"),
        ([str(image), "--json", "-o", str(image)], f"-o {image}: would overwrite an input"),
        ([str(tmp_path), "--report", str(image)], f"--report {image}: would overwrite an input"),
        ([str(image), "--jsonl", "-o", str(notes), "--resume"], f"--resume {notes}: not a --jsonl file"),
        (["--input-file", str(tmp_path), "--json"], f"--input-file {tmp_path}: is a folder"),
        (["--input-file", str(image), "--json"], f"--input-file {image}: not a text file"),
        ([str(image), "--report", "-"], "--report -: the report is a file"),
    ):
        result = run(args)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert notes.read_text() == "my notes\n" and image.read_bytes() == MEDICAL[1].read_bytes()
    same = f"{MEDICAL[0].parent}/./{MEDICAL[0].name}"  # the listed file, spelt another way
    done = run([same, "--input-file", str(listing), "--json"])
    assert done.returncode == 0 and [e["input"] for e in json.loads(done.stdout)["inputs"]] == [same]


def test_custom_headers_go_only_to_the_input_urls_host(server, capsys):
    other = Server()
    seen = {}

    def record(where):
        def handler(request):
            seen[where] = request.headers.get("Authorization")
            request._send(200, {"Content-Type": "image/png"}, MEDICAL[0].read_bytes())

        return handler

    server.routes["/own.png"] = record("own")
    other.routes["/theirs.png"] = record("theirs")
    server.add("/page.html", f'<img src="/own.png"><img src="{other.url}/theirs.png">'.encode())
    try:
        assert (
            cli.main(
                [
                    server.url + "/page.html",
                    "--header",
                    "Authorization: Bearer secret",
                    "--json",
                    "--quiet",
                    "--min-size",
                    "0",
                ]
            )
            == 0
        )
    finally:
        other.httpd.shutdown()
    assert seen == {"own": "Bearer secret", "theirs": None}


def test_progress_bars_end_at_100_percent_when_fewer_items_come_than_announced(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("a file the walk announces, then passes over\n")
    (folder / "readme.md").write_text("another one\n")
    for i, path in enumerate(MEDICAL + NON_MEDICAL):
        (folder / f"{i}{path.suffix}").write_bytes(path.read_bytes())
    done = run([str(folder), "--json"])
    assert done.returncode == 0, done.stderr
    last = done.stderr.replace("\r", "\n").strip().splitlines()[-2]  # the images bar's last state, then the summary
    assert "100%" in last and "4/4" in last, done.stderr
