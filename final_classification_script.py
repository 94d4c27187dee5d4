"""Classify every image in web pages, PDFs, image files or folders as medical or non-medical.

    python final_classification_script.py https://example.org/article paper.pdf scans/
    python final_classification_script.py --input-file urls.txt --jsonl -o out.jsonl --resume

Results go to stdout (a table, --json, --csv or --jsonl) or -o FILE; progress and errors to stderr, and the summary
line too (after a table on stdout, to stdout).
Exit status: 0 when every input was processed, 1 when any input failed, 2 for bad arguments or an unusable model
or output path, 130 when stopped by Ctrl-C or SIGTERM (the inputs finished by then are written).
"""

import argparse
import os
import re
import signal
import sys
import threading
from urllib.parse import urlsplit, urlunsplit

import engine
import extract
import phi
import report
from outputs import OutputClosed, OutputError, ResumeMismatch, Sink, WriteFailed, check_outputs, read_resume
from pipeline import Run, drain

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "best_model.pth")
LABEL_CHOICES = ("medical", "non-medical", "phi")
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


class OneLineParser(argparse.ArgumentParser):
    """An argument error in one line, never after the whole usage; --help has the rest."""

    def error(self, message):
        self.exit(2, f"error: {message} (see python {self.prog} --help)\n")


def add_extraction_arguments(p: argparse.ArgumentParser) -> None:
    """How inputs are read and fetched; sweep_ray.py takes the same options."""
    p.add_argument(
        "--min-size",
        type=at_least(0),
        default=32,
        help="skip images with a side under this many px (default: %(default)s)",
    )
    p.add_argument(
        "--max-images", type=at_least(1), default=500, help="at most this many images per input (default: %(default)s)"
    )
    p.add_argument(
        "--timeout",
        type=seconds(allow_zero=False),
        default=20.0,
        help="seconds allowed for each download (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=at_least(1), default=8, help="concurrent image downloads per page (default: %(default)s)"
    )
    p.add_argument(
        "--retries",
        type=at_least(0),
        default=2,
        help="further tries of a download after a connect error, a timeout, 429 or 5xx, with backoff, "
        "within --timeout (default: %(default)s)",
    )
    p.add_argument(
        "--user-agent",
        type=_user_agent,
        default=extract.Options.user_agent,
        metavar="TEXT",
        help="the User-Agent header sent (default: %(default)s)",
    )
    p.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header sent to the input URL's own host (never to other image hosts or "
        "redirects off it); repeatable",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--ca-bundle",
        type=_ca_bundle,
        metavar="FILE",
        help="trust the certificates in this PEM file (e.g. a private CA) instead of the system's",
    )
    tls.add_argument("--insecure", action="store_true", help="do not check HTTPS certificates")
    p.add_argument(
        "--pages", type=_page_ranges, metavar="RANGES", help="PDF pages to read, 1-based: 3-10, 1,4,7- (default: all)"
    )
    p.add_argument("--password", help="tried on an encrypted PDF the empty password does not open (never printed)")
    p.add_argument(
        "--whole-images",
        action="store_true",
        help="classify every image whole; by default a compound figure (panels parted by gutters) is also "
        "read panel by panel, and is medical when a panel (or the whole) is, by a bar that rises with their number",
    )
    p.add_argument(
        "--all-frames",
        action="store_true",
        help="classify every frame of a multi-frame DICOM (default: its middle frame)",
    )
    p.add_argument(
        "--crawl",
        type=at_least(0),
        default=0,
        metavar="DEPTH",
        help="from a page URL, also read the pages its links lead to on the same site, up to DEPTH "
        "links away (default: 0, the page alone)",
    )
    p.add_argument(
        "--max-page-bytes",
        type=at_least(1024),
        default=extract.Options.max_page_bytes,
        metavar="N",
        help="an HTML page larger than N bytes is not read (default: %(default)s, 16 MiB)",
    )
    p.add_argument(
        "--max-pages",
        type=at_least(1),
        default=100,
        metavar="N",
        help="a crawl fetches at most N pages (default: %(default)s)",
    )
    p.add_argument(
        "--delay",
        type=seconds(allow_zero=True),
        default=0.5,
        metavar="S",
        help="seconds between a crawl's requests to the site (default: %(default)s; robots.txt's "
        "Crawl-delay when longer)",
    )


def add_phi_arguments(p: argparse.ArgumentParser) -> None:
    """--phi and --phi-values, the same in sweep_ray.py."""
    p.add_argument(
        "--phi",
        action="store_true",
        help="say for each medical image (and each DICOM) what may identify a patient: DICOM patient attributes, "
        "burned-in text (OCR), EXIF/XMP/PNG text; a phi object with its risk: none, possible, likely, unknown",
    )
    p.add_argument(
        "--phi-values",
        action="store_true",
        help="with --phi: write the text found (names, IDs) into the results too; by default only its kind",
    )


def check_phi_arguments(p: argparse.ArgumentParser, args) -> None:
    """--phi-values needs --phi; --phi needs the OCR package (exit 2 saying what to install)."""
    if args.phi_values and not args.phi:
        p.error("--phi-values writes what --phi finds: give --phi too")
    if args.phi and not phi.ocr_available():
        print(f"error: {phi.INSTALL_HINT}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """Every option, with its default in --help (docs/cli.md lists the same options)."""
    p = OneLineParser(
        prog="final_classification_script.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="http(s) URL of a page, PDF, image or DICOM file; a PDF, image or DICOM path; a saved page; or a folder",
    )
    p.add_argument(
        "--input-file",
        metavar="FILE",
        help="read more inputs from FILE, one a line (# starts a comment; - reads stdin)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint to use (default: %(default)s)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--csv", action="store_true", help="print CSV, one row per image or skipped image")
    out.add_argument(
        "--jsonl",
        action="store_true",
        help="stream JSON lines: one per image, skipped image and finished input, as soon as known",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the results to FILE (- for stdout; default: stdout)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --jsonl -o FILE: skip the inputs FILE already has finished, do the rest",
    )
    p.add_argument("--save-dir", metavar="DIR", help="write every extracted image into DIR")
    p.add_argument("--by-label", action="store_true", help="with --save-dir: sort into DIR/medical and DIR/non-medical")
    p.add_argument(
        "--only",
        choices=LABEL_CHOICES,
        help="print and save only the images given this label, or (phi, which turns --phi on) the medical "
        "images whose PHI risk is possible or likely (the summary still counts all)",
    )
    add_phi_arguments(p)
    p.add_argument("--report", metavar="FILE.html", help="write a self-contained HTML page of thumbnails")
    p.add_argument(
        "--threshold",
        type=probability,
        help="p_medical at or above which an image is medical (default: the model's, chosen on validation data)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="an input whose every image download failed is a failed input (exit 1); by default it is "
        "a note and its downloads are listed as skipped",
    )
    p.add_argument(
        "--jobs",
        type=at_least(1),
        default=4,
        help="inputs extracted at the same time; their images share the model's batches (default: %(default)s)",
    )
    add_extraction_arguments(p)
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "onnx", "openvino", "torch"],
        help="auto: ONNX Runtime, and torch on a GPU once it has started; openvino: OpenVINO in fp32, the same p, "
        "faster on the model alone but not through the CLI on 2 cores (default: %(default)s)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="default: %(default)s")
    p.add_argument(
        "--batch-size",
        type=at_least(1),
        default=None,
        help="images per model batch (default: 16 on the CPU, 128 on CUDA)",
    )
    p.add_argument("--backbone-weights", help="local file of the backbone's ImageNet weights, for offline machines")
    p.add_argument("--quiet", action="store_true", help="no progress bars (errors and the summary still show)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if not args.inputs and not args.input_file:
        p.error("no input: give at least one INPUT or --input-file FILE")
    if args.resume and not (args.jsonl and args.output and args.output != "-"):
        p.error("--resume needs --jsonl and -o FILE: the file it resumes")
    if args.only == "phi":
        args.phi = True
    check_phi_arguments(p, args)
    if args.by_label and not args.save_dir:
        p.error("--by-label sorts what --save-dir saves: give --save-dir DIR too")
    return args


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


PANEL_DETAIL = 2  # images are kept this many times the model's input, so a compound figure's panels keep detail


def working_size(model: engine.Engine, whole_images: bool = False) -> int:
    """The shorter side decoded images are kept at: the model's resize, times PANEL_DETAIL unless every image is
    classified whole."""
    return max(model.preprocess["resize"], model.preprocess["crop"]) * (1 if whole_images else PANEL_DETAIL)


def extract_options(args, model: engine.Engine) -> extract.Options:
    """Decoded images are kept only as large as the model needs (its resize; twice that where a compound figure
    may be read panel by panel), never at full resolution."""
    return extract.Options(
        min_size=args.min_size,
        max_images=args.max_images,
        timeout=args.timeout,
        workers=args.workers,
        keep_encoded=bool(args.save_dir),
        pages=args.pages,
        password=args.password,
        all_frames=args.all_frames,
        phi=args.phi,
        retries=args.retries,
        user_agent=args.user_agent,
        headers=dict(args.header),
        verify=False if args.insecure else args.ca_bundle or True,
        crawl_depth=args.crawl,
        max_pages=args.max_pages,
        delay=args.delay,
        max_page_bytes=args.max_page_bytes,
        whole_images=args.whole_images,
        working_size=working_size(model, args.whole_images),
    )


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
        targets = check_outputs(args)
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
    try:
        resumed = read_resume(args.output, args.phi, args.phi_values) if args.resume else None
    except ResumeMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = resumed.done if resumed else set()
    if done:
        note(f"resuming {args.output}: skipping the {report.plural(len(done), 'input')} it has finished")
    if resumed and resumed.partial:
        files = sum(len(partial["files"]) for partial in resumed.partial.values())
        note(
            f"resuming {args.output}: skipping {report.plural(files, 'file')} (or crawled pages) already done of "
            f"{report.plural(len(resumed.partial), 'input')} cut off mid-way"
        )
    sink = Sink(args, model, os.path.abspath(args.model), resumed, targets)
    run = Run(model, extract_options(args, model), args.jobs, args.batch_size, resumed.partial if resumed else None)
    interrupted = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        drain(run, sink, args, (text for text in iter_inputs(args) if text not in done), count_inputs(args), done)
    except KeyboardInterrupt:
        interrupted = True
    except WriteFailed as exc:  # a full disk or an I/O error mid-run: the lines written so far stay whole
        run.close(wait=False)
        print(
            f"error: {exc}"
            + (
                "; the lines written are whole, --resume carries on"
                if args.resume or args.jsonl and "-o" in targets and not targets["-o"].through
                else ""
            ),
            file=sys.stderr,
        )
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        run.close(wait=not interrupted)
    try:
        summary = sink.finish(interrupted)
    except WriteFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: writing the results failed: {exc.strerror or exc}", file=sys.stderr)
        return 2
    table_on_stdout = not (args.json or args.csv or args.jsonl) and args.output in (None, "-")
    if not table_on_stdout:
        print(report.summary_line(summary, sink.summary["inputs"]), file=sys.stderr)
    if interrupted:
        print(
            "interrupted: the inputs finished so far are written"
            + ("; --resume carries on" if args.jsonl and args.output not in (None, "-") else "")
            if sink.entries or sink.stream
            else "interrupted before any input finished: nothing written",
            file=sys.stderr,
        )
        return INTERRUPTED
    return 1 if summary["failed_inputs"] else 0


if __name__ == "__main__":
    code = main()
    if code in (INTERRUPTED, STDOUT_CLOSED) or engine.still_starting():  # threads still downloading, or a GPU
        # still starting for a run the CPU has finished, must not hold the exit up
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader that has gone
                pass
        os._exit(code)
    sys.exit(code)
