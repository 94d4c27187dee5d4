"""Outputs that respect what they point at, checks that really check, and writes that fail cleanly.

Every case runs the CLI as a user would (a subprocess) on files the test makes in its own temporary folder:
a FIFO read by a thread, a symlink, a null device made with mknod, a read-only or full filesystem (a small tmpfs
mounted for the test where it may, else a fake write that raises ENOSPC in-process).
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import threading

import pytest
from PIL import Image

import final_classification_script as cli
import outputs
from conftest import corpus_images
from test_cli_safety import error_lines, run

IMAGES = corpus_images("medical", "ct", 3) + corpus_images("non_medical", "photo", 3)


def _folder(tmp_path, n: int):
    folder = tmp_path / "in"
    folder.mkdir()
    pool = corpus_images("medical", None, n // 2 + 1) + corpus_images("non_medical", None, n // 2 + 1)
    for i, path in enumerate(pool[:n]):
        shutil.copy(path, folder / f"{i:03d}{path.suffix}")
    return folder


def _mount_tmpfs(path, size: str, read_only: bool = False) -> bool:
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB filesystem of the test's own, or None where this machine does not let the test mount one."""
    path = tmp_path / "disk"
    mounted = _mount_tmpfs(path, "256k")
    yield path if mounted else None
    if mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def _fill(disk, leave: int):
    """Fill the small disk but for about `leave` bytes; returns the filler, to remove when room is needed again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def _json_lines(path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "the last line is whole or absent"
    return [json.loads(line) for line in text.splitlines()]


# ---------------------------------------------------------------- item 1: what an output points at


def test_a_fifo_gets_the_results_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()), daemon=True)
    reader.start()
    done = run(["--json", "-o", str(fifo), str(IMAGES[0]), "--quiet"])
    reader.join(30)
    assert done.returncode == 0, done.stderr
    assert json.loads(received[0])["summary"]["images"] == 1
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("option", ["--csv", "--json", "--jsonl", "--report"])
def test_a_symlink_is_followed_and_stays_a_link(tmp_path, option):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "results.out"
    target.write_text("old results\n")
    link = tmp_path / "link.out"
    link.symlink_to(target)
    flags = ["--report", str(link)] if option == "--report" else [option, "-o", str(link)]
    done = run(flags + [str(IMAGES[0]), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    text = target.read_text()
    assert "old results" not in text and IMAGES[0].name in text
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["results.out"], "no temporary left behind"


def test_a_character_device_is_written_through_and_stays_a_device(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this machine does not let root make device nodes")
    done = run(["--json", "-o", str(null), str(IMAGES[0]), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)


def test_dev_stdout_writes_to_the_pipe_and_appends_to_a_redirected_log(tmp_path):
    done = run(["--json", "-o", "/dev/stdout", str(IMAGES[0]), "--quiet"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["images"] == 1
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with open(log, "a") as stdout:  # `>> log`: /dev/stdout resolves to the regular file; appended to, never replaced
        code = subprocess.run(
            [*cli_command(), "--csv", "-o", "/dev/stdout", str(IMAGES[0]), "--quiet"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        ).returncode
    assert code == 0
    text = log.read_text()
    assert text.startswith("earlier line\n") and IMAGES[0].name in text


def cli_command():
    import sys

    from conftest import ROOT

    return [sys.executable, str(ROOT / "final_classification_script.py")]


# ---------------------------------------------------------------- item 2: checks that check, writes that fail cleanly


def test_a_read_only_folder_fails_before_any_input_is_read(tmp_path):
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "64k", read_only=True):
            pytest.skip("root passes permission checks and this machine does not let the test mount read-only")
    else:
        folder.mkdir()
        folder.chmod(0o555)
    try:
        done = run(["--json", "-o", str(folder / "out.json"), str(tmp_path / "no-such-input.png"), "--quiet"])
        assert done.returncode == 2
        assert error_lines(done.stderr) == [
            f"error: -o {folder}/out.json: cannot be written here "
            f"({os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)}); "
            "choose another path"
        ]
        assert "no-such-input" not in done.stderr, "refused before the input was looked at"
        assert os.listdir(folder) == [], "the probe file is gone"
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True) if os.geteuid() == 0 else folder.chmod(0o755)


class _FillingFile:
    """A file that takes `room` bytes, then writes part of what it is given and raises ENOSPC, as a full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.name = handle, room, handle.name

    def write(self, text):
        if len(text) > self.room:
            self.handle.write(text[: self.room // 2])
            self.handle.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.handle.write(text)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def _full_disk_jsonl(tmp_path, small_disk, monkeypatch, capsys, folder) -> tuple[int, str, "os.PathLike"]:
    """A --jsonl -o run on a disk that fills after a few lines: the real small filesystem, else a fake write."""
    if small_disk is not None:
        filler = _fill(small_disk, 4096)  # room for a few lines
        out = small_disk / "out.jsonl"
        done = run(["--jsonl", "-o", str(out), str(folder), "--quiet", "--batch-size", "2"])
        os.unlink(filler)
        return done.returncode, done.stderr, out
    out = tmp_path / "out.jsonl"
    real_open = outputs.Target.open_stream
    monkeypatch.setattr(outputs.Target, "open_stream", lambda self, resume: _FillingFile(real_open(self, resume), 3000))
    code = cli.main(["--jsonl", "-o", str(out), str(folder), "--quiet", "--batch-size", "2"])
    monkeypatch.undo()
    return code, capsys.readouterr().err, out


def test_a_full_disk_under_jsonl_is_one_line_and_resume_finishes_the_work(tmp_path, small_disk, monkeypatch, capsys):
    folder = _folder(tmp_path, 24)
    code, stderr, out = _full_disk_jsonl(tmp_path, small_disk, monkeypatch, capsys, folder)
    assert code == 2
    assert "Traceback" not in stderr
    [line] = error_lines(stderr)
    assert line.startswith(f"error: writing {out} failed: No space left on device (ENOSPC)")
    written = _json_lines(out)  # whole lines only
    assert 0 < sum(r["type"] == "image" for r in written) < 24
    done = run(["--jsonl", "-o", str(out), str(folder), "--quiet", "--resume"])
    assert done.returncode == 0, done.stderr
    images = [r["source"] for r in _json_lines(out) if r["type"] == "image"]
    assert sorted(images) == sorted(str(p) for p in folder.iterdir()), "every image exactly once"


def test_a_full_disk_under_save_dir_is_said_once_and_leaves_no_partial_file(tmp_path, small_disk, monkeypatch, capsys):
    folder = _folder(tmp_path, 12)
    if small_disk is not None:
        saved = small_disk / "saved"
        saved.mkdir()
        _fill(small_disk, 16384)
        done = run(["--json", "--save-dir", str(saved), str(folder), "--quiet"])
        code, stderr, report = done.returncode, done.stderr, json.loads(done.stdout)
    else:
        saved = tmp_path / "saved"
        writes = []
        real_save = outputs.save_image

        def filling_save(found, into):
            writes.append(found)
            if len(writes) > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(found, into)

        monkeypatch.setattr(outputs, "save_image", filling_save)
        code = cli.main(["--json", "--save-dir", str(saved), str(folder), "--quiet"])
        captured = capsys.readouterr()
        stderr, report = captured.err, json.loads(captured.out)
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "--save-dir" in line]
    assert len(notes) == 1 and "no more images are saved" in notes[0]
    assert report["summary"]["images"] == 12, "classification went on"
    files = sorted(saved.iterdir()) if saved.exists() else []
    for path in files:
        with Image.open(path) as image:
            image.load()  # whole, never empty or cut off
    saved_paths = [im["saved_path"] for im in report["inputs"][0]["images"] if im["saved_path"]]
    assert sorted(saved_paths) == [str(p) for p in files]
    if small_disk is not None:
        assert len(files) < 12, "the small disk did fill"
