"""Classify every image in web pages, PDFs, image files or folders as medical or non-medical.

    python final_classification_script.py https://example.org/article paper.pdf scans/
    python final_classification_script.py --input-file urls.txt --jsonl -o out.jsonl --resume

Results go to stdout (a table, --json, --csv or --jsonl) or -o FILE; progress, errors and the summary to stderr.
Exit status: 0 when every input was processed, 1 when any input failed, 2 for bad arguments or an unusable model
or output path, 130 when stopped by Ctrl-C or SIGTERM (the inputs finished by then are written).
"""
import argparse
import dataclasses
import hashlib
import json
import os
import queue
import re
import signal
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from tqdm import tqdm

import engine
import extract
import report

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "best_model.pth")
LABEL_CHOICES = ("medical", "non-medical")
SEEN_IMAGES = 65536  # results remembered per run by image content, so a logo on every page is classified once
INTERRUPTED = 130
STDOUT_CLOSED = 141  # as a shell reports a command ended by SIGPIPE


def _version() -> str:
    from version import __version__

    return __version__


def _page_ranges(text: str):
    import pdfs

    try:
        return pdfs.parse_pages(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(text: str, kind: type):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None


def at_least(minimum: int):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value
    return parse


def seconds(allow_zero: bool):
    def parse(text: str) -> float:
        value = _number(text, float)
        if not (value >= 0 if allow_zero else value > 0):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'more than 0'}, not {text}")
        return value
    return parse


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _header(text: str) -> tuple[str, str]:
    """--header 'Name: value' -> (name, value)."""
    name, colon, value = text.partition(":")
    if not colon or not HEADER_NAME.fullmatch(name.strip()) or re.search(r"[\r\n\0]", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value' (a header name, a colon, a value on one line)")
    return name.strip(), value.strip()


def _user_agent(text: str) -> str:
    if not text.strip() or re.search(r"[\r\n\0]", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a User-Agent (empty, or more than one line)")
    return text.strip()


def _ca_bundle(path: str) -> str:
    """A PEM file of certificates (or a folder of them, as OpenSSL's c_rehash makes) that loads."""
    import ssl

    if os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:
        raise argparse.ArgumentTypeError(f"{path}: no PEM certificate in it") from None
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: unreadable ({exc.strerror})") from None
    return path


def add_extraction_arguments(p: argparse.ArgumentParser) -> None:
    """How inputs are read and fetched; sweep_ray.py takes the same options."""
    p.add_argument("--min-size", type=at_least(0), default=32,
                   help="skip images with a side under this many px (default: %(default)s)")
    p.add_argument("--max-images", type=at_least(1), default=500,
                   help="at most this many images per input (default: %(default)s)")
    p.add_argument("--timeout", type=seconds(allow_zero=False), default=20.0,
                   help="seconds allowed for each download (default: %(default)s)")
    p.add_argument("--workers", type=at_least(1), default=8,
                   help="concurrent image downloads per page (default: %(default)s)")
    p.add_argument("--retries", type=at_least(0), default=2,
                   help="further tries of a download after a connect error, a timeout, 429 or 5xx, with backoff, "
                        "within --timeout (default: %(default)s)")
    p.add_argument("--user-agent", type=_user_agent, default=extract.Options.user_agent, metavar="TEXT",
                   help="the User-Agent header sent (default: %(default)s)")
    p.add_argument("--header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
                   help="an HTTP header sent with every request; repeatable")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca-bundle", type=_ca_bundle, metavar="FILE",
                     help="trust the certificates in this PEM file (e.g. a private CA) instead of the system's")
    tls.add_argument("--insecure", action="store_true", help="do not check HTTPS certificates")
    p.add_argument("--pages", type=_page_ranges, metavar="RANGES",
                   help="PDF pages to read, 1-based: 3-10, 1,4,7- (default: all)")
    p.add_argument("--password", help="tried on an encrypted PDF the empty password does not open (never printed)")
    p.add_argument("--all-frames", action="store_true",
                   help="classify every frame of a multi-frame DICOM (default: its middle frame)")
    p.add_argument("--crawl", type=at_least(0), default=0, metavar="DEPTH",
                   help="from a page URL, also read the pages its links lead to on the same site, up to DEPTH "
                        "links away (default: 0, the page alone)")
    p.add_argument("--max-pages", type=at_least(1), default=100, metavar="N",
                   help="a crawl fetches at most N pages (default: %(default)s)")
    p.add_argument("--delay", type=seconds(allow_zero=True), default=0.5, metavar="S",
                   help="seconds between a crawl's requests to the site (default: %(default)s; robots.txt's "
                        "Crawl-delay when longer)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="http(s) URL of a page, PDF or image; a PDF or image path; a saved page; or a folder")
    p.add_argument("--input-file", metavar="FILE",
                   help="read more inputs from FILE, one a line (# starts a comment; - reads stdin)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint to use (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--csv", action="store_true", help="print CSV, one row per image or skipped image")
    out.add_argument("--jsonl", action="store_true",
                     help="stream JSON lines: one per image, skipped image and finished input, as soon as known")
    p.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE (- for stdout; default: stdout)")
    p.add_argument("--resume", action="store_true",
                   help="with --jsonl -o FILE: skip the inputs FILE already has finished, do the rest")
    p.add_argument("--save-dir", metavar="DIR", help="write every extracted image into DIR")
    p.add_argument("--by-label", action="store_true", help="with --save-dir: sort into DIR/medical and DIR/non-medical")
    p.add_argument("--only", choices=LABEL_CHOICES,
                   help="print and save only the images given this label (the summary still counts all)")
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML page of thumbnails")
    p.add_argument("--threshold", type=probability,
                   help="p_medical at or above which an image is medical (default: the model's, chosen on validation "
                        "data)")
    p.add_argument("--jobs", type=at_least(1), default=4,
                   help="inputs extracted at the same time; their images share the model's batches "
                        "(default: %(default)s)")
    add_extraction_arguments(p)
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "torch"],
                   help="auto: ONNX Runtime on the CPU, torch on CUDA/MPS (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: %(default)s")
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help="images per model batch (default: 16 on the CPU, 128 on CUDA)")
    p.add_argument("--backbone-weights", help="local file of the backbone's ImageNet weights, for offline machines")
    p.add_argument("--quiet", action="store_true", help="no progress bars (errors and the summary still go to stderr)")
    args = p.parse_args(argv)
    if not args.inputs and not args.input_file:
        p.error("no input: give at least one INPUT or --input-file FILE")
    if args.resume and not (args.jsonl and args.output and args.output != "-"):
        p.error("--resume needs --jsonl and -o FILE: the file it resumes")
    if args.by_label and not args.save_dir:
        p.error("--by-label sorts what --save-dir saves: give --save-dir DIR too")
    return args


# ---------------------------------------------------------------- output paths, checked before any input is read

class OutputError(Exception):
    """An output path that cannot be written; found before any work, so no result is lost to it."""


def check_output_file(path: str, option: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OutputError(f"{option} {path}: not writable here (permission denied); choose another path")


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
        if source == target or (source and os.path.isdir(source) and os.path.exists(target)
                                and target.startswith(source + os.sep)):
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
        raise OutputError(f"--resume {path}: not a --jsonl file of this tool (its first line is not one of its "
                          "lines); give the file an earlier --jsonl -o run wrote")


def check_outputs(args) -> None:
    if args.report == "-":
        raise OutputError("--report -: the report is a file; give a file name (results go to stdout with -o -)")
    if args.input_file and args.input_file != "-":
        check_input_file(args.input_file)
    for path, option in ((args.output, "-o"), (args.report, "--report")):
        if path and path != "-":
            check_output_file(path, option)
            check_not_an_input(path, option, args)
    if args.resume:
        check_resumable(args.output)
    if args.save_dir:
        check_save_dir(args.save_dir)


def write_atomically(path: str, text) -> None:
    """A temporary file beside the target, renamed over it: a failure never leaves half a file. `text`: a string
    or an iterable of strings (written as they come)."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~umask)  # not mkstemp's 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


# ---------------------------------------------------------------- inputs

def read_input_lines(lines) -> list[str]:
    """An input file's lines: blank lines and comments (a line starting with #, or # after a space) left out,
    surrounding spaces stripped. A # with no space before it is part of the URL (a fragment)."""
    out = []
    for line in lines:
        text = re.sub(r"(^|\s)#.*$", "", line).strip()
        if text:
            out.append(text)
    return out


def input_key(text: str) -> str:
    """What makes two inputs the same: a local path's real path; a URL with an empty path is the site's root."""
    if os.path.exists(text):
        return os.path.realpath(text)
    if extract.url_scheme(text) in ("http", "https"):
        parts = urlsplit(text)
        return urlunsplit(parts._replace(netloc=parts.netloc.lower(), path=parts.path or "/"))
    return text


def _unique(texts, seen: set):
    for text in texts:
        if (key := input_key(text)) not in seen:
            seen.add(key)
            yield text


def iter_inputs(args):
    """Positional inputs, then the input file's; an input listed twice (the same file or URL) is done once."""
    seen: set = set()
    yield from _unique(args.inputs, seen)
    if args.input_file == "-":
        yield from _unique(read_input_lines(sys.stdin), seen)
    elif args.input_file:
        with open(args.input_file, encoding="utf-8", errors="replace") as f:
            yield from _unique(read_input_lines(f), seen)


def count_inputs(args) -> int | None:
    """For the progress bar's total; unknown when inputs come from stdin."""
    return None if args.input_file == "-" else sum(1 for _ in iter_inputs(args))


def finished_inputs(path: str) -> tuple[set[str], dict]:
    """Resume: rewrite FILE keeping only the lines of inputs it has finished (those with their "input" line),
    so a half-written last line and the lines of inputs cut off mid-way are redone, never doubled. Returns the
    finished inputs and the counts of the lines kept, for the summary of the whole file."""
    summary = report.new_summary()
    if not os.path.exists(path):
        return set(), summary
    done = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            record = _parse_line(line)
            if record and record.get("type") == "input":
                done.add(record["input"])

    def kept():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                record = _parse_line(line)
                if record and record.get("type") != "summary" and record.get("input") in done:
                    if record["type"] == "image":
                        summary["images"] += 1
                        summary["medical" if record.get("label") == "medical" else "non-medical"] += 1
                    elif record["type"] == "skipped":
                        summary["skipped"] += 1
                    else:
                        summary["inputs"] += 1
                        summary["failed_inputs"] += record.get("status") == "failed"
                    yield line

    write_atomically(path, kept())
    return done, summary


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
    parts = [stem] + [f"{tag}{value:0{width}d}" for tag, value, width in
                      (("p", found.page, 3), ("i", found.index, 2), ("f", found.frame, 3)) if value is not None]
    return "_".join(parts)


def save_image(found: extract.Found, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    name, ext = save_name(found), found.ext if found.encoded is not None else "png"
    for n in range(1, 1_000_000):  # the same name from another input or folder gets -2, -3, ...
        path = os.path.join(folder, f"{name}.{ext}" if n == 1 else f"{name}-{n}.{ext}")
        try:
            with open(path, "xb") as f:  # exclusive, so two inputs saving at once never share a name
                if found.encoded is not None:
                    f.write(found.encoded)
                else:
                    found.image.save(f, format="PNG")
            return os.path.abspath(path)
        except FileExistsError:
            continue
    raise OSError("no free file name")


def extract_options(args, model: engine.Engine) -> extract.Options:
    """Decoded images are kept only as large as the model needs (its resize), never at full resolution."""
    return extract.Options(min_size=args.min_size, max_images=args.max_images, timeout=args.timeout,
                           workers=args.workers, keep_encoded=bool(args.save_dir), pages=args.pages,
                           password=args.password, all_frames=args.all_frames, retries=args.retries,
                           user_agent=args.user_agent, headers=dict(args.header),
                           verify=False if args.insecure else args.ca_bundle or True,
                           crawl_depth=args.crawl, max_pages=args.max_pages, delay=args.delay,
                           working_size=max(model.preprocess["resize"], model.preprocess["crop"]))


# ---------------------------------------------------------------- the run: extraction threads, one model thread

@dataclass
class InputState:
    """One input in flight. `images` and `skipped` hold its records until it ends, unless they are streamed."""
    number: int
    text: str
    kind: str | None = None
    error: str | None = None
    images: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    medical: int = 0  # every classified image is counted, also those --only leaves out
    non_medical: int = 0
    shown: int = 0
    n_skipped: int = 0
    over_budget: int = 0  # skipped as over --max-images
    expected: int = 0  # items announced by the extractor, for the progress bar
    seen: int = 0


_END = object()  # an input's last item through the model queue, so it arrives after all its images


def image_key(image) -> bytes:
    """The same pixels (one logo on every page) get the same key, whatever their file name."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.digest()


class Run:
    """Inputs extracted `jobs` at a time on threads; their images meet in one queue, so the model thread always
    takes full batches across inputs; results come back to the calling thread in order, per input."""

    def __init__(self, model: engine.Engine, options: extract.Options, jobs: int = 4, batch_size: int | None = None):
        self.model, self.options, self.jobs = model, options, jobs
        self.batch_size = batch_size or model.default_batch_size
        self.to_model: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.known: OrderedDict = OrderedDict()  # image key -> p_medical, bounded
        self.classified = self.reused = 0
        self.model_thread = threading.Thread(target=self._model_loop, name="model", daemon=True)
        self.model_thread.start()

    def results(self, texts):
        """Yield ("skipped", state, Skipped) / ("image", state, Found, p) / ("end", state) as they come; an
        input's events come in the order its items were found, and "end" after all of them."""
        active, texts = 0, iter(texts)
        number = 0
        exhausted = False
        while True:
            while not exhausted and active < self.jobs:
                text = next(texts, None)
                if text is None:
                    exhausted = True
                    break
                state = InputState(number, text)
                number += 1
                active += 1
                yield ("start", state)
                threading.Thread(target=self._extract, args=(state,), name="extract", daemon=True).start()
            if not active:
                return
            event = self.events.get()
            if event[0] == "end":
                active -= 1
            yield event

    def close(self, wait: bool = True):
        """The model thread ends before the interpreter does (torch's threads abort the process otherwise)."""
        self.stop.set()
        self.to_model.put(None)
        if wait:
            self.model_thread.join(timeout=30)

    def _extract(self, state: InputState) -> None:
        options = dataclasses.replace(self.options, expect=lambda n: self.events.put(("expect", state, n)))
        try:
            state.kind, items = extract.open_input(state.text, options)
            for item in items:
                if self.stop.is_set():
                    return
                if isinstance(item, extract.Skipped):
                    self.events.put(("skipped", state, item))
                else:
                    self.to_model.put((state, item, image_key(item.image)))
        except Exception as exc:  # never lose the other inputs' results to one bad file
            state.error = extract.input_problem(exc)
        self.to_model.put((state, _END, None))

    def _take_batch(self) -> list | None:
        """Queue items up to a full batch of images (inputs' end marks ride along), or what came within 20 ms."""
        first = self.to_model.get()
        if first is None:
            return None
        batch, images = [first], int(first[1] is not _END)
        while images < self.batch_size:
            try:
                item = self.to_model.get(timeout=0.02)
            except queue.Empty:
                break
            if item is None:
                self.to_model.put(None)
                break
            batch.append(item)
            images += item[1] is not _END
        return batch

    def _model_loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            todo = {}
            for state, item, key in batch:
                if item is not _END and key not in self.known and key not in todo:
                    todo[key] = item.image
            failure = None
            try:
                if todo:
                    for key, p in zip(todo, self.model.predict(list(todo.values()), self.batch_size)):
                        self.known[key] = p
            except Exception as exc:
                failure = f"the model failed on a batch: {type(exc).__name__}: {extract.first_line(exc)}"
            for state, item, key in batch:
                if item is _END:
                    self.events.put(("end", state))
                elif key in self.known:
                    self.known.move_to_end(key)
                    self.events.put(("image", state, item, self.known[key]))
                else:
                    state.error = state.error or failure
            self.classified += len(todo)
            self.reused += sum(item is not _END for _, item, _ in batch) - len(todo)
            while len(self.known) > SEEN_IMAGES:
                self.known.popitem(last=False)


# ---------------------------------------------------------------- the CLI around the run

class OutputClosed(Exception):
    """stdout was closed by the reader (`| head`): stop quietly, as a Unix tool does."""


class Sink:
    """Where results go: JSON lines as they come, and/or every input's record kept for one document at the end
    (a table, JSON, CSV or the HTML report); a JSON lines run without a report keeps nothing per input."""

    def __init__(self, args, model: engine.Engine, model_path: str, summary: dict | None = None):
        self.args, self.model = args, model
        self.model_record = report.model_record(model, model_path)
        self.summary = summary or report.new_summary()  # a resumed file's counts come first
        self.entries: dict[int, dict] = {}
        self.thumbnails: dict[int, list] = {}
        self.stream = None  # opened at the first line, so a run stopped before any leaves FILE as it was
        self.keep = not args.jsonl or bool(args.report)

    def line(self, record: dict) -> None:
        if self.stream is None:
            to_file = self.args.output not in (None, "-")
            self.stream = open(self.args.output, "a" if self.args.resume else "w", encoding="utf-8") if to_file \
                else sys.stdout
        try:
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def image(self, state: InputState, found: extract.Found, p: float) -> None:
        label = self.model.label(p)
        if label == "medical":
            state.medical += 1
        else:
            state.non_medical += 1
        if self.args.only and label != self.args.only:
            return
        saved = self._save(found, label) if self.args.save_dir else None
        record = report.image_record(found, p, label, saved)
        state.shown += 1
        if self.args.jsonl:
            self.line(report.image_line(state.text, record))
        if self.keep:
            state.images.append(record)
        if self.args.report:
            self.thumbnails.setdefault(state.number, []).append(report.thumbnail(found.image))

    def _save(self, found: extract.Found, label: str) -> str | None:
        folder = os.path.join(self.args.save_dir, label) if self.args.by_label else self.args.save_dir
        try:
            return save_image(found, folder)
        except OSError as exc:
            tqdm.write(f"note: {found.source}: classified but not saved to {folder} "
                       f"({exc.strerror or exc})", file=sys.stderr)
            return None

    def skipped(self, state: InputState, item: extract.Skipped) -> None:
        record = report.skipped_record(item)
        state.n_skipped += 1
        state.over_budget += item.reason.startswith("over --max-images")
        if self.args.jsonl:
            self.line(report.skipped_line(state.text, record))
        if self.keep:
            state.skipped.append(record)

    def end(self, state: InputState) -> None:
        entry = report.input_record(state.text, state.kind, state.error, state.images, state.skipped)
        report.add_to_summary(self.summary, state.medical, state.non_medical, state.n_skipped, state.error)
        if self.args.jsonl:
            self.line(report.input_line(entry, state.shown, state.n_skipped))
        if self.keep:
            self.entries[state.number] = entry

    def finish(self, interrupted: bool) -> dict:
        """Write the document (or the JSONL summary line); returns the summary. Stopped before any input ended,
        nothing is written, so the files of an earlier run stay as they were."""
        summary = {k: v for k, v in self.summary.items() if k != "inputs"}
        if interrupted:
            summary["interrupted"] = True
            if self.stream is None and not self.entries:
                return summary
        entries = [self.entries[n] for n in sorted(self.entries)]
        document = {"model": self.model_record, "inputs": entries, "summary": summary}
        if self.args.report:
            thumbnails = [self.thumbnails.get(n, []) for n in sorted(self.entries)]
            write_atomically(self.args.report, report.to_html(document, thumbnails))
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
        if self.args.output not in (None, "-"):
            write_atomically(self.args.output, text)
            return summary
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        return summary


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return classify(args)
    except KeyboardInterrupt:  # before the first input started: nothing to write
        print("interrupted before any input was read", file=sys.stderr)
        return INTERRUPTED
    except OutputClosed:  # the reader of stdout has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return STDOUT_CLOSED


def classify(args) -> int:
    try:
        check_outputs(args)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    note = lambda message: print(f"note: {message}", file=sys.stderr)
    try:
        model = engine.open_engine(args.model, args.engine, args.device, args.backbone_weights, note)
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threshold is not None:
        model.threshold = args.threshold
    done, summary = finished_inputs(args.output) if args.resume else (set(), None)
    if done:
        note(f"resuming {args.output}: skipping the {report.plural(len(done), 'input')} it has finished")
    sink = Sink(args, model, os.path.abspath(args.model), summary)
    run = Run(model, extract_options(args, model), args.jobs, args.batch_size)
    interrupted = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        drain(run, sink, args, (text for text in iter_inputs(args) if text not in done), count_inputs(args), done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        run.close(wait=not interrupted)
    try:
        summary = sink.finish(interrupted)
    except OSError as exc:
        print(f"error: writing the results failed: {exc}", file=sys.stderr)
        return 2
    table_on_stdout = not (args.json or args.csv or args.jsonl) and args.output in (None, "-")
    if not table_on_stdout:
        print(report.summary_line(summary, sink.summary["inputs"]), file=sys.stderr)
    if interrupted:
        print("interrupted: the inputs finished so far are written"
              + ("; --resume carries on" if args.jsonl and args.output not in (None, "-") else "")
              if sink.entries or sink.stream else "interrupted before any input finished: nothing written",
              file=sys.stderr)
        return INTERRUPTED
    return 1 if summary["failed_inputs"] else 0


def drain(run: Run, sink: Sink, args, texts, total: int | None, done: set) -> None:
    """Every event of the run to the sink, with progress bars (inputs, when several; images, with the totals the
    extractors announce), the one-line error of each failed input and notes the user should see."""
    several = total is None or total > 1
    inputs_bar = tqdm(desc="inputs", unit="input", total=None if total is None else total - len(done),
                      file=sys.stderr, disable=args.quiet or not several, position=0, dynamic_ncols=True)
    images_bar = tqdm(desc="images", unit="img", total=0, file=sys.stderr, disable=args.quiet,
                      position=1 if several and not args.quiet else 0, dynamic_ncols=True)
    try:
        for event in run.results(texts):
            kind, state = event[0], event[1]
            if kind == "start":
                images_bar.set_postfix_str(report.shorten(state.text, 40), refresh=False)
                if args.crawl and extract.url_scheme(state.text) not in ("http", "https"):
                    tqdm.write(f"note: {state.text}: --crawl follows the links of http(s) pages; read alone",
                               file=sys.stderr)
            elif kind == "expect":
                state.expected += event[2]
                images_bar.total += event[2]
                images_bar.refresh()
            elif kind in ("skipped", "image"):
                sink.skipped(state, event[2]) if kind == "skipped" else sink.image(state, event[2], event[3])
                state.seen += 1
                if state.seen > state.expected:  # more than announced, or nothing announced
                    images_bar.total += 1
                images_bar.update(1)
            elif kind == "end":
                if state.expected > state.seen:  # announced more than came (ignored files, budget)
                    images_bar.total -= state.expected - state.seen
                    images_bar.refresh()
                sink.end(state)
                if state.error:
                    tqdm.write(f"error: {state.text}: {state.error}", file=sys.stderr)
                if state.over_budget:
                    tqdm.write(f"note: {state.text}: {report.plural(state.over_budget, 'image')} over --max-images "
                               f"{args.max_images} not classified (listed as skipped); raise --max-images to read "
                               "them", file=sys.stderr)
                inputs_bar.update(1)
    finally:
        inputs_bar.close()
        images_bar.close()


if __name__ == "__main__":
    code = main()
    if code in (INTERRUPTED, STDOUT_CLOSED):  # threads still downloading must not hold the exit up
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
