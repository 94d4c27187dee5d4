"""Where results go, safely: output paths checked before any input is read, files written atomically or straight
through, the sink that turns a run's events into JSON lines or one document, resume reading, saved images.

Nothing here reads inputs or runs the model; the CLI (final_classification_script.py) wires it to the pipeline.
"""

import errno
import json
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass, field

from tqdm import tqdm

import engine
import extract
import phi as phi_module
import report
from atomic import replace_file
from pipeline import InputState


class OutputError(Exception):
    """An output path that cannot be written; found before any work, so no result is lost to it."""


# Names that stand for a descriptor the process already has: written through, never replaced.
DESCRIPTOR_NAME = re.compile(r"^/dev/(stdout|stderr|fd/\d+)$|^/proc/self/fd/\d+$")


class WriteFailed(Exception):
    """A write that failed after the run had started (a full disk, an I/O error): one line naming file and errno."""

    def __init__(self, path: str, exc: OSError):
        errno_name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        super().__init__(f"writing {path} failed: {exc.strerror or exc}" + (f" ({errno_name})" if errno_name else ""))


class Target:
    """Where one output goes, decided before any work.

    A regular file (or a new path; a symlink's target) is written atomically: a temporary file beside it, renamed
    over it. A character device, FIFO or socket, and the names of an open descriptor (/dev/stdout, /dev/fd/N),
    are written straight through, opened now; such a name that resolves to a regular file (`>> log`) is appended
    to, never replaced."""

    def __init__(self, path: str, option: str):
        self.path, self.option, self.handle = path, option, None
        self.real = os.path.realpath(path)  # a symlink is followed: its target is written, the link stays
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise OutputError(f"{option} {path}: {exc.strerror}; choose another path") from None
        if mode is not None and stat.S_ISDIR(mode):
            raise OutputError(f"{option} {path}: is a folder; give a file name")
        self.through = bool(DESCRIPTOR_NAME.match(os.path.abspath(path))) or (
            mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))
        )
        self.append = self.through and mode is not None and stat.S_ISREG(mode)

    def check(self) -> None:
        """A probe file created and removed beside a regular target (so /sys, a read-only mount or a folder
        without permission fails now); a straight-through target opened for writing now instead."""
        try:
            if self.through:
                self.handle = open(self.path, "a" if self.append else "w", encoding="utf-8")
                return
            folder = os.path.dirname(self.real)
            if not os.path.isdir(folder):
                raise OutputError(f"{self.option} {self.path}: folder {folder} does not exist; create it first")
            if os.path.exists(self.real) and not os.access(self.real, os.W_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            tempfile.TemporaryFile(dir=folder, prefix=".probe-").close()
        except OSError as exc:
            raise OutputError(
                f"{self.option} {self.path}: cannot be written here ({exc.strerror or exc}); choose another path"
            ) from None

    def write(self, text) -> None:
        """The whole output at once (`text`: a string or an iterable of strings). Raises WriteFailed."""
        try:
            if self.through:
                handle = self.handle or open(self.path, "a" if self.append else "w", encoding="utf-8")
                try:
                    handle.writelines([text] if isinstance(text, str) else text)
                    handle.flush()
                finally:
                    self.handle = None
                    handle.close()
            else:
                write_atomically(self.real, text)
        except OSError as exc:
            raise WriteFailed(self.path, exc) from None

    def open_stream(self, resume: bool):
        """JSON lines, streamed: the open descriptor, or the regular file (appended to under --resume)."""
        if self.through:
            handle, self.handle = self.handle or open(self.path, "a" if self.append else "w", encoding="utf-8"), None
            return handle
        try:
            return open(self.real, "a" if resume else "w", encoding="utf-8")
        except OSError as exc:
            raise WriteFailed(self.path, exc) from None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def check_output_file(path: str, option: str) -> Target:
    """The Target of an output path, checked (probe or open) before any input is read. Raises OutputError."""
    target = Target(path, option)
    target.check()
    return target


def check_save_dir(path: str) -> None:
    """Created now, so a folder that cannot be made fails the run before it starts, not image by image."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"--save-dir {path}: is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--save-dir {path}: cannot be created ({exc.strerror}); choose another folder") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"--save-dir {path}: not writable (permission denied); choose another folder")


def check_input_file(path: str) -> None:
    if os.path.isdir(path):
        raise OutputError(f"--input-file {path}: is a folder; give a text file of inputs, one a line")
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError as exc:
        raise OutputError(f"--input-file {path}: {exc.strerror or 'unreadable'}") from None
    if b"\0" in head or extract.sniff(head) not in ("text", "empty", "html"):
        raise OutputError(f"--input-file {path}: not a text file ({extract.sniff(head)}); give one input a line")


def check_not_an_input(path: str, option: str, args) -> None:
    """An output that would overwrite an input (the input file, an input file or a file in an input folder)."""
    target = os.path.realpath(path)
    for text in args.inputs + ([args.input_file] if args.input_file not in (None, "-") else []):
        source = os.path.realpath(text) if os.path.exists(text) else None
        if source == target or (
            source and os.path.isdir(source) and os.path.exists(target) and target.startswith(source + os.sep)
        ):
            raise OutputError(f"{option} {path}: would overwrite an input ({text}); choose another path")


def check_resumable(path: str) -> None:
    """--resume rewrites FILE: it must be JSON lines this tool wrote, not some other file of the same name."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("type") not in ("image", "skipped", "input", "summary"):
        raise OutputError(
            f"--resume {path}: not a --jsonl file of this tool (its first line is not one of its "
            "lines); give the file an earlier --jsonl -o run wrote"
        )


def check_outputs(args) -> dict[str, Target]:
    """Every output checked before any input is read; returns option -> Target for -o and --report."""
    if args.report == "-":
        raise OutputError("--report -: the report is a file; give a file name (results go to stdout with -o -)")
    if args.input_file and args.input_file != "-":
        check_input_file(args.input_file)
    targets = {}
    for path, option in ((args.output, "-o"), (args.report, "--report")):
        if path and path != "-":
            check_not_an_input(path, option, args)
            targets[option] = check_output_file(path, option)
    if args.resume:
        if targets["-o"].through:
            raise OutputError(f"--resume {args.output}: not a regular file; --resume rewrites the file it continues")
        check_resumable(args.output)
    if args.save_dir:
        check_save_dir(args.save_dir)
    return targets


def write_atomically(path: str, text) -> None:
    """The whole file replaced at once (atomic.replace_file): `text`, a string or an iterable of strings written
    as they come."""

    def write(f):
        for chunk in [text] if isinstance(text, str) else text:
            f.write(chunk.encode("utf-8"))

    replace_file(path, write)


@dataclass
class Resumed:
    """What an earlier run wrote to a JSON lines file: the inputs it finished, the counts of their lines (for
    the summary of the whole file) and, per input it had not finished, what it finished of it (Options.done)."""

    done: set = field(default_factory=set)
    summary: dict = field(default_factory=report.new_summary)
    partial: dict = field(default_factory=dict)


def _lines(path: str):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line, _parse_line(line)


def _count_line(counts: dict, record: dict) -> None:
    if record["type"] == "image":
        counts["images"] += 1
        counts["medical" if record.get("label") == "medical" else "non-medical"] += 1
    elif record["type"] == "skipped":
        counts["skipped"] += 1
        counts["downloads_failed"] = counts.get("downloads_failed", 0) + report.is_download_failure(
            record.get("reason", "")
        )


class ResumeMismatch(ValueError):
    """The file to resume was written with other --phi options: its lines and the new ones would not agree."""


def _phi_written(record: dict) -> tuple[bool | None, bool | None]:
    """A line -> (was it written with --phi, with --phi-values), None where the line cannot tell."""
    if record.get("type") not in ("image", "skipped"):
        return None, None
    if "phi" in record:
        found = (record["phi"] or {}).get("found") or []
        return True, any("value" in f for f in found) if found else None
    return (False if record.get("type") == "image" and record.get("label") == "medical" else None), None


def _check_phi_options(path: str, record: dict, phi: bool, phi_values: bool) -> None:
    written, values = _phi_written(record)
    if written is not None and written != phi:
        raise ResumeMismatch(
            f"{path} was written {'with' if written else 'without'} --phi ({record['source']}): resume it "
            f"{'with' if written else 'without'} --phi, or write a new file, so that every line says the same"
        )
    if phi and values is not None and values != phi_values:
        raise ResumeMismatch(
            f"{path} was written {'with' if values else 'without'} --phi-values ({record['source']}): resume it "
            f"{'with' if values else 'without'} --phi-values, or write a new file"
        )


def read_resume(path: str, phi: bool = False, phi_values: bool = False) -> Resumed:
    """Resume: rewrite FILE keeping the lines of the inputs it finished (those with their "input" line) and, of an
    input cut off mid-way, the lines up to its last "file" line (the files of a folder, the pages of a crawl that
    it finished), so a half-written line and the lines of a file cut off mid-way are redone, never doubled.
    A file written with other --phi / --phi-values options is ResumeMismatch, before anything is rewritten."""
    resumed = Resumed()
    if not os.path.exists(path):
        return resumed
    last_file: dict[str, int] = {}
    for number, (_, record) in enumerate(_lines(path)):
        if record:
            _check_phi_options(path, record, phi, phi_values)
        if record and record.get("type") == "input":
            resumed.done.add(record["input"])
        elif record and record.get("type") == "file":
            last_file[record["input"]] = number
    last_file = {text: number for text, number in last_file.items() if text not in resumed.done}

    def kept():
        for number, (line, record) in enumerate(_lines(path)):
            if not record or record.get("type") == "summary" or "input" not in record:
                continue
            text = record["input"]
            if text in resumed.done or number <= last_file.get(text, -1):
                report.count_phi(resumed.summary, record.get("phi"))  # counted per image of the whole file
            if text in resumed.done:
                _count_line(resumed.summary, record)
                if record["type"] == "input":
                    resumed.summary["inputs"] += 1
                    resumed.summary["failed_inputs"] += record.get("status") == "failed"
                yield line
            elif number <= last_file.get(text, -1):
                partial = resumed.partial.setdefault(
                    text, {"files": {}, "sources": [], "downloads_failed": 0, **report.new_summary()}
                )
                _count_line(partial, record)
                if record["type"] == "file":
                    partial["files"][record["file"]] = record
                elif record["type"] == "image":
                    partial["sources"].append(record["source"])
                yield line

    write_atomically(path, kept())
    resumed.summary.pop("downloads_failed", None)
    return resumed


def _parse_line(line: str) -> dict | None:
    if not line.endswith("\n"):
        return None  # cut off by a crash
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# ---------------------------------------------------------------- saving images


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.split("?")[0].rstrip("/").split("/")[-1])[:60] or "input"


def save_name(found: extract.Found) -> str:
    """The input's stem, then page, image index and frame where they apply: paper_p003_i02, scan_f004."""
    stem = os.path.splitext(_slug(found.source.split("#")[0]))[0] or "image"
    if "#data-uri-" in found.source:
        stem += "_data" + found.source.rsplit("-", 1)[1]
    parts = [stem] + [
        f"{tag}{value:0{width}d}"
        for tag, value, width in (("p", found.page, 3), ("i", found.index, 2), ("f", found.frame, 3))
        if value is not None
    ]
    return "_".join(parts)


def save_image(found: extract.Found, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    name, ext = save_name(found), found.ext if found.encoded is not None else "png"
    for n in range(1, 1_000_000):  # the same name from another input or folder gets -2, -3, ...
        path = os.path.join(folder, f"{name}.{ext}" if n == 1 else f"{name}-{n}.{ext}")
        try:
            f = open(path, "xb")  # exclusive, so two inputs saving at once never share a name
        except FileExistsError:
            continue
        try:
            with f:
                if found.encoded is not None:
                    f.write(found.encoded)
                else:
                    found.image.save(f, format="PNG")
            return os.path.abspath(path)
        except BaseException:  # a full disk mid-write: no empty or partial file is left behind
            os.unlink(path)
            raise
    raise OSError("no free file name")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputClosed(Exception):
    """stdout was closed by the reader (`| head`): stop quietly, as a Unix tool does."""


class Sink:
    """Where results go: JSON lines as they come, and/or every input's record kept for one document at the end
    (a table, JSON, CSV or the HTML report); a JSON lines run without a report keeps nothing per input."""

    def __init__(
        self, args, model: engine.Engine, model_path: str, resumed: Resumed | None = None, targets: dict | None = None
    ):
        self.args, self.model = args, model
        self.targets = targets or {}  # option -> Target, from check_outputs
        self.good_size = None  # the JSON lines file's size after its last whole line
        self.saving = bool(args.save_dir)  # off once --save-dir's disk is full
        self.model_path = model_path  # the model is described at the end: a GPU may have taken over by then
        self.resumed = resumed or Resumed()
        self.summary = self.resumed.summary  # a resumed file's counts come first
        if args.phi:  # counted per risk even when no image is medical
            report.phi_tally(self.summary)
        self.open: dict[int, InputState] = {}  # inputs started and not ended
        self.entries: dict[int, dict] = {}
        self.thumbnails: dict[int, list] = {}
        self.stream = None  # opened at the first line, so a run stopped before any leaves FILE as it was
        self.keep = not args.jsonl or bool(args.report)

    def line(self, record: dict) -> None:
        """One JSON line, flushed. A failed write is cut back to the last whole line (a regular file), so the file
        stays valid JSON lines that --resume continues from; raises WriteFailed."""
        target = self.targets.get("-o")
        if self.stream is None:
            self.stream = target.open_stream(self.args.resume) if target else sys.stdout
            if target and not target.through:
                self.good_size = self.stream.tell()
        try:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        except OSError as exc:
            if target is None:
                raise
            self._cut_to_whole_lines()
            raise WriteFailed(target.path, exc) from None
        if self.good_size is not None:
            self.good_size = self.stream.tell()

    def _cut_to_whole_lines(self) -> None:
        stream, self.stream = self.stream, None
        try:
            if self.good_size is not None:
                os.truncate(stream.name, self.good_size)
        except OSError:
            pass
        try:
            stream.close()
        except OSError:
            pass  # the buffer that could not be written is dropped with it

    def image(
        self, state: InputState, found: extract.Found, p: float, panel_ps: list = (), phi=None, p_whole=None
    ) -> None:
        label = self.model.label(p)
        if label == "medical":
            state.medical += 1
        else:
            state.non_medical += 1
        phi = phi_module.public(phi, self.args.phi_values)
        report.count_phi(self.summary, phi)
        if self.args.only == "phi" and not phi_module.flagged(phi):
            return
        if self.args.only not in (None, "phi") and label != self.args.only:
            return
        saved = self._save(found, label) if self.args.save_dir else None
        record = report.image_record(found, p, label, saved, panel_ps, phi, p_whole)
        state.shown += 1
        if self.args.jsonl:
            self.line(report.image_line(state.text, record))
        if self.keep:
            state.images.append(record)
        if self.args.report:
            self.thumbnails.setdefault(state.number, []).append(report.thumbnail(found.image))

    def _save(self, found: extract.Found, label: str) -> str | None:
        folder = os.path.join(self.args.save_dir, label) if self.args.by_label else self.args.save_dir
        if not self.saving:
            return None
        try:
            return save_image(found, folder)
        except OSError as exc:
            if exc.errno in DISK_FULL:  # said once; classification goes on
                self.saving = False
                tqdm.write(
                    f"note: --save-dir {self.args.save_dir}: {exc.strerror}; no more images are saved "
                    "(the results say saved_path null), classification goes on",
                    file=sys.stderr,
                )
                return None
            tqdm.write(
                f"note: {found.source}: classified but not saved to {folder} ({exc.strerror or exc})", file=sys.stderr
            )
            return None

    def start(self, state: InputState) -> None:
        """An input resumed mid-way counts what the earlier run wrote of it."""
        self.open[state.number] = state
        if partial := self.resumed.partial.get(state.text):
            state.medical, state.non_medical = partial["medical"], partial["non-medical"]
            state.shown, state.n_skipped = partial["images"], partial["skipped"]
            state.downloads_failed = partial["downloads_failed"]

    def file(self, state: InputState, finished: extract.Finished) -> None:
        if self.args.jsonl:
            self.line(report.file_line(state.text, finished))

    def skipped(self, state: InputState, item: extract.Skipped) -> None:
        phi = phi_module.public(item.phi, self.args.phi_values)
        report.count_phi(self.summary, phi)
        record = report.skipped_record(item, phi)
        state.n_skipped += 1
        state.downloads_failed += report.is_download_failure(item.reason)
        state.over_budget += item.reason.startswith("over --max-images")
        if self.args.jsonl:
            self.line(report.skipped_line(state.text, record))
        if self.keep:
            state.skipped.append(record)

    def end(self, state: InputState) -> None:
        self.open.pop(state.number, None)
        if self.args.strict and not state.error:  # a script can tell that nothing could be fetched
            state.error = report.all_downloads_failed(state.medical + state.non_medical, state.downloads_failed)
        entry = report.input_record(
            state.text, state.kind, state.error, state.images, state.skipped, state.downloads_failed
        )
        report.add_to_summary(self.summary, state.medical, state.non_medical, state.n_skipped, state.error)
        if self.args.jsonl:
            self.line(report.input_line(entry, state.shown, state.n_skipped))
        if self.keep:
            self.entries[state.number] = entry

    def _add_unfinished(self) -> None:
        """Stopped mid-way: the inputs in flight count what was written of them, and a document lists them."""
        for number, state in self.open.items():
            if not (state.medical or state.non_medical or state.n_skipped):
                continue
            report.add_to_summary(self.summary, state.medical, state.non_medical, state.n_skipped, None)
            if self.keep:
                self.entries[number] = {
                    **report.input_record(
                        state.text, state.kind, None, state.images, state.skipped, state.downloads_failed
                    ),
                    "interrupted": True,
                }
        self.open.clear()

    def finish(self, interrupted: bool) -> dict:
        """Write the document (or the JSONL summary line); returns the summary. Stopped before any input ended,
        nothing is written, so the files of an earlier run stay as they were."""
        if interrupted:
            self._add_unfinished()
        summary = {k: v for k, v in self.summary.items() if k != "inputs"}
        if interrupted:
            summary["interrupted"] = True
            if self.stream is None and not self.entries:
                return summary
        entries = [self.entries[n] for n in sorted(self.entries)]
        document = {"model": report.model_record(self.model, self.model_path), "inputs": entries, "summary": summary}
        if self.args.report:
            thumbnails = [self.thumbnails.get(n, []) for n in sorted(self.entries)]
            self.targets["--report"].write(report.to_html(document, thumbnails))
        if self.args.jsonl:
            self.line({"type": "summary", **summary})
            if self.stream is not sys.stdout:
                self.stream.close()
            return summary
        if self.args.json:
            text = json.dumps(document, indent=2) + "\n"
        elif self.args.csv:
            text = report.to_csv(document)
        else:
            text = report.to_table(document)
        if "-o" in self.targets:
            self.targets["-o"].write(text)
            return summary
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        return summary
