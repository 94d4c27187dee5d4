"""Sweep many inputs on Ray: extraction as Ray tasks, classification in a pool of model actors.

    python sweep_ray.py inputs.txt --output results.parquet
    python sweep_ray.py inputs.parquet --address ray://head:10001 --actors 8 --output results.jsonl

INPUTS is a text file (one URL, path or folder a line; blank lines and # comments ignored) or a Parquet
file with an `input` column. The output has the fields of the CLI's JSON lines, one row per image,
skipped image and input; the rows of one input come together, its `input` row last. Exit status: 0
when every input was processed, 1 when any input failed or was lost, 2 for bad arguments.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

import atomic
import engine
import extract
import final_classification_script as cli
import outputs
import panels
import phi
import pipeline
import report

HERE = os.path.dirname(os.path.abspath(__file__))
RETRIES = 3  # a worker or actor that dies (killed, out of memory, a crash in a decoder) has its work run again;
# past that its inputs are failed rows saying so (Ray Data's default, retrying for ever, hangs on a poison file)
LOST = "lost: Ray could not finish its work (a worker died on every try, or raised: see Ray's logs)"
BLOCKS_PER_CPU = 8  # inputs go to Ray tasks in blocks: a few per CPU keeps every core busy and one slow PDF
# from holding up much, without a task's overhead (tens of ms on a small machine) for every input
# Fields of the Parquet output: every field a JSON line of any type has, null where a type has none.
PARQUET_FIELDS = [
    ("type", "string"),
    ("input", "string"),
    ("source", "string"),
    ("page", "int64"),
    ("width", "int64"),
    ("height", "int64"),
    ("label", "string"),
    ("p_medical", "float64"),
    ("saved_path", "string"),
    ("format", "string"),
    ("thumbnail", "string"),
    ("reason", "string"),
    ("kind", "string"),
    ("status", "string"),
    ("error", "string"),
    ("images", "int64"),
    ("skipped", "int64"),
    ("downloads_failed", "int64"),
    ("phi_risk", "string"),  # --phi: as the CLI's CSV columns
    ("phi_found", "string"),
]


def build_parser() -> argparse.ArgumentParser:
    """Every option, with its default in --help (docs/ray.md lists the same options)."""
    p = cli.OneLineParser(
        prog="sweep_ray.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("inputs", metavar="INPUTS", help="text file, one input a line, or Parquet with an `input` column")
    p.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="OUT.parquet|OUT.jsonl",
        help="where the rows go; the format follows the extension",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster: ray://HOST:10001, auto (the cluster this machine belongs to), or HOST:6379 "
        "(default: start Ray on this machine)",
    )
    p.add_argument(
        "--model",
        default=cli.DEFAULT_MODEL,
        help="checkpoint, readable on every node (default: %(default)s, shipped with the code)",
    )
    p.add_argument(
        "--threshold",
        type=cli.probability,
        help="p_medical at or above which an image is medical (default: the model's)",
    )
    p.add_argument(
        "--actors",
        type=cli.at_least(1),
        default=1,
        help="model actors, each loading the model once (default: %(default)s)",
    )
    p.add_argument(
        "--num-gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs per actor; above 0 the actors run torch on CUDA, else ONNX Runtime on the CPU "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=cli.at_least(1),
        default=None,
        help="images per model batch (default: 16 on the CPU, 128 on CUDA)",
    )
    p.add_argument("--backbone-weights", help="local file of the backbone's ImageNet weights, for offline machines")
    cli.add_extraction_arguments(p)
    cli.add_phi_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (errors and the summary still show)")
    p.add_argument("--verbose", action="store_true", help="also Ray's own logs, warnings and up, and the actors'")
    p.set_defaults(save_dir=None, strict=False)  # the extracted files stay where they are; no --save-dir on a cluster
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.num_gpus_per_actor < 0:
        p.error("--num-gpus-per-actor must be 0 or more")
    if os.path.splitext(args.output)[1].lower() not in (".parquet", ".jsonl"):
        p.error(f"--output {args.output}: name it .parquet or .jsonl")
    cli.check_phi_arguments(p, args)
    return args


# ---------------------------------------------------------------- inputs


def read_inputs(path: str) -> list[str]:
    """The inputs, in order: a Parquet file's `input` column, else one a line of text."""
    with open(path, "rb") as f:
        parquet = f.read(4) == b"PAR1"
    if parquet:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "input" not in table.column_names:
            raise ValueError(f"{path}: Parquet file has no `input` column (it has {', '.join(table.column_names)})")
        return [str(v) for v in table.column("input").to_pylist() if v is not None]
    with open(path, encoding="utf-8", errors="replace") as f:
        return cli.read_input_lines(f)


# ---------------------------------------------------------------- extraction (a Ray task per block of inputs)


def _pixels(image) -> tuple[bytes, str]:
    """The reduced image's RGB bytes and its size: lossless, and nothing to encode or decode on either side."""
    rgb = engine.to_rgb(image)
    return rgb.tobytes(), f"{rgb.width}x{rgb.height}"


def _found_fields(found: extract.Found) -> dict:
    return {
        "source": found.source,
        "page": found.page,
        "width": found.width,
        "height": found.height,
        "format": found.format,
        "thumbnail": found.thumbnail,
        "index": found.index,
        "frame": found.frame,
        "panels": found.panels,
        "phi": found.phi,  # --phi: the header's or metadata's part, read at extraction
    }


def extraction_rows(row: dict, options: extract.Options) -> Iterator[dict]:
    """One input -> a row per found image (its reduced RGB pixels), per skipped image, then the input's row.

    Every problem is the input's error, as in the CLI; images found before it are kept.
    """
    n, text = row["n"], row["input"]
    common = {"n": n, "input": text}
    kind, error, images, skipped, downloads_failed = None, None, 0, 0, 0
    try:
        kind, items = extract.open_input(text, options)
        for item in items:
            if isinstance(item, extract.Finished):  # the CLI's resume marks; a sweep resumes by input
                continue
            if isinstance(item, extract.Skipped):
                skipped += 1
                downloads_failed += report.is_download_failure(item.reason)
                yield {
                    **common,
                    "type": "skipped",
                    "line": json.dumps(report.skipped_line(text, report.skipped_record(item, item.phi))),
                    "pixels": b"",
                    "size": "",
                }
            else:
                images += 1
                if not options.whole_images:
                    item.panels = panels.find_panels(item.image, options.min_size, item.width)
                pixels, size = _pixels(item.image)
                yield {
                    **common,
                    "type": "image",
                    "line": json.dumps(_found_fields(item)),
                    "pixels": pixels,
                    "size": size,
                }
    except Exception as exc:  # noqa: BLE001 - never lose the other inputs' results to one bad file
        error = extract.input_problem(exc)
    entry = report.input_record(text, kind, error, [], [], downloads_failed)
    yield {
        **common,
        "type": "input",
        "line": json.dumps(report.input_line(entry, images, skipped)),
        "pixels": b"",
        "size": "",
    }


# ---------------------------------------------------------------- classification (an actor pool)


class Classifier:
    """A Ray actor: loads the model once, then classifies the image rows of every batch it is given."""

    def __init__(
        self,
        model_path: str,
        gpu: bool,
        backbone_weights: str | None,
        threshold: float | None,
        batch_size: int | None,
        phi: bool = False,
    ):
        self.model = engine.open_engine(
            model_path, "torch" if gpu else "onnx", "cuda" if gpu else "cpu", backbone_weights
        )
        if threshold is not None:
            self.model.threshold = threshold
        self.batch_size = batch_size
        self.phi = pipeline.PhiReader() if phi else None  # --phi: OCR in the actor, after classifying

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        lines = list(batch["line"])
        at = [i for i, kind in enumerate(batch["type"]) if kind == "image"]
        found = [
            extract.Found(
                image=Image.frombytes(
                    "RGB", tuple(map(int, str(batch["size"][i]).split("x"))), bytes(batch["pixels"][i])
                ),
                **json.loads(lines[i]),
            )
            for i in at
        ]
        results = panels.predict_figures(
            self.model, [f.image for f in found], [f.panels or [] for f in found], batch_size=self.batch_size
        )
        for i, item, (p, panel_ps, whole) in zip(at, found, results):
            label = self.model.label(p)
            verdict = self.phi(item, label, pipeline.image_key(item.image)) if self.phi else None
            record = report.image_record(item, p, label, None, panel_ps, verdict, whole)
            lines[i] = json.dumps(report.image_line(str(batch["input"][i]), record))
        return {"n": batch["n"], "type": batch["type"], "line": lines}


# ---------------------------------------------------------------- the driver


def runtime_env(address: str | None) -> dict:
    """Workers import this folder's modules: on a cluster it is shipped to every node (with the shipped model)."""
    if address is None:
        return {"env_vars": {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    return {"working_dir": HERE, "excludes": [".git", ".venv", "runs", "tests", "benchmarks", "data", "*.pyc"]}


def model_on_workers(model_path: str, address: str | None) -> str:
    """A model inside this folder is shipped with the code on a cluster, so workers find it by relative path."""
    inside = os.path.commonpath([HERE, os.path.abspath(model_path)]) == HERE
    return os.path.relpath(os.path.abspath(model_path), HERE) if address and inside else os.path.abspath(model_path)


def blocks(n_inputs: int) -> int:
    import ray

    return max(1, min(n_inputs, int(ray.cluster_resources().get("CPU", 1) * BLOCKS_PER_CPU)))


def sweep(inputs: list[str], options: extract.Options, args) -> Iterator[dict]:
    """Inputs -> finished JSON lines, the lines of each input together and its `input` line last."""
    import warnings

    import ray

    items = [{"n": n, "input": text} for n, text in enumerate(inputs)]
    if not items:
        return
    ray.data.DataContext.get_current().max_errored_blocks = -1  # work that failed RETRIES times: rows, not the end
    gpu = args.num_gpus_per_actor > 0
    with warnings.catch_warnings():  # retry counts have no named parameter in Ray 2.60 (requirements-ray.txt pins it)
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        rows = ray.data.from_items(items, override_num_blocks=blocks(len(items))).flat_map(
            extraction_rows, fn_kwargs={"options": options}, max_retries=RETRIES
        )
        classified = rows.map_batches(
            Classifier,
            fn_constructor_args=(
                model_on_workers(args.model, args.address),
                gpu,
                args.backbone_weights,
                args.threshold,
                args.batch_size,
                args.phi,
            ),
            batch_size=args.batch_size or (128 if gpu else 16),
            compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_gpus=args.num_gpus_per_actor if gpu else None,
            batch_format="numpy",
            max_restarts=-1,
            max_task_retries=RETRIES,
        )
    yield from group_by_input(classified.iter_rows(), inputs)


def group_by_input(rows, inputs: list[str]) -> Iterator[dict]:
    """Rows in any order -> each input's lines together, once all have arrived (its `input` line says how many).

    An input whose rows never all came (Ray gave up on its work after RETRIES) ends as a failed input line.
    """
    waiting: dict[int, list] = {}
    ends: dict[int, dict] = {}
    left = set(range(len(inputs)))
    for row in rows:
        n, line = int(row["n"]), json.loads(row["line"])
        if line["type"] == "input":
            ends[n] = line
        else:
            waiting.setdefault(n, []).append(line)
        end = ends.get(n)
        if end is not None and len(waiting.get(n, [])) == end["images"] + end["skipped"]:
            lines = waiting.pop(n, [])
            yield from sorted(lines, key=lambda x: x["type"] != "image")  # images first, then skipped, as the CLI
            left.discard(n)
            yield ends.pop(n)
    for n in sorted(left):
        entry = report.input_record(inputs[n], None, LOST, [], [])
        yield report.input_line(entry, 0, 0)


class Writer:
    """JSON lines or Parquet (by the file's extension), row by row, so a long sweep never sits in memory."""

    CHUNK = 1000

    def __init__(self, target: outputs.Target):
        """JSON lines stream into the file (or straight through a FIFO or device); Parquet goes to a temporary
        file beside a regular target, renamed over it at the end, so a symlink's target is replaced and the link
        stays."""
        self.target, self.parquet, self.rows, self.temporary = (
            target,
            target.path.lower().endswith(".parquet"),
            [],
            None,
        )
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PARQUET_FIELDS])
            if target.through:
                target.close()
                self.file = pq.ParquetWriter(target.path, self.schema)
            else:
                handle, self.temporary = tempfile.mkstemp(
                    dir=os.path.dirname(target.real), suffix=".tmp", prefix=f".{os.path.basename(target.real)}."
                )
                os.close(handle)
                self.file = pq.ParquetWriter(self.temporary, self.schema)
        else:
            self.file = target.open_stream(resume=False)

    def write(self, line: dict):
        if not self.parquet:
            self.file.write(json.dumps(line) + "\n")
            return
        self.rows.append(line)
        if len(self.rows) >= self.CHUNK:
            self._flush()

    def _flush(self):
        import pyarrow as pa

        if self.rows:
            rows = [{**row, **report.phi_columns(row)} for row in self.rows]
            columns = {name: [row.get(name) for row in rows] for name, _ in PARQUET_FIELDS}
            self.file.write_table(pa.Table.from_pydict(columns, schema=self.schema))
            self.rows = []

    def close(self):
        if self.parquet:
            self._flush()
        self.file.close()
        if self.temporary:
            os.chmod(self.temporary, atomic.replacement_mode(self.target.real))
            os.replace(self.temporary, self.target.real)


# Ray's own log lines: its Python loggers' ("2026-12-03 14:07:31,158<TAB>INFO ...") and its C++ core's
# ("[2026-12-03 14:07:31,183 E 26232 26232] core_worker.cc:...").
RAY_LOG_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\t[A-Z]+ |"
    rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\] )"
)


@contextlib.contextmanager
def ray_logs_hidden():
    """stderr (the descriptor, which Ray's C++ core and its processes write to as well) through a filter that drops
    Ray's own log lines and passes the rest (this tool's errors, notes, summary and progress) on as it comes."""
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward():
        pending = b""
        while chunk := os.read(read, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if not RAY_LOG_LINE.match(line):
                    os.write(real, line + b"\n")
            if pending[:1] not in (b"", b"[", b"2"):  # a progress bar's \r update passes at once
                os.write(real, pending)
                pending = b""

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # Ray's processes may keep the pipe open: what they write later is read and dropped
        thread.join(timeout=0.5)


def quiet_ray_loggers(level: int) -> None:
    for name in ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]:
        logging.getLogger(name).setLevel(level)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not engine.installed("ray"):
        print("error: sweep_ray.py needs Ray: pip install -r requirements-ray.txt", file=sys.stderr)
        return 2
    try:  # before any work: a run must never end with nowhere to write
        target = outputs.check_output_file(args.output, "--output")
        outputs.check_not_an_input(args.output, "--output", argparse.Namespace(inputs=[args.inputs], input_file=None))
    except outputs.OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        inputs = read_inputs(args.inputs)
    except (OSError, ValueError) as exc:
        print(f"error: {args.inputs}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:  # the model once here, to fail early and to size the extracted images; the actors load their own
        model = engine.open_engine(
            args.model, "auto", "cpu", args.backbone_weights, lambda message: print(f"note: {message}", file=sys.stderr)
        )
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.nullcontext() if args.verbose else ray_logs_hidden():
        return _sweep_main(args, target, inputs, model)


def _sweep_main(args, target: outputs.Target, inputs: list[str], model: engine.Engine) -> int:
    import ray
    import ray.data  # noqa: F401 - it sets up its own loggers, quietened below

    ray_level = logging.WARNING if args.verbose else logging.ERROR  # Ray's own INFO lines are not for users
    quiet_ray_loggers(ray_level)
    try:
        if not ray.is_initialized():
            ray.init(
                address=args.address or "local",
                runtime_env=runtime_env(args.address),  # local: a new one
                log_to_driver=args.verbose,
                logging_level=ray_level,
            )
            quiet_ray_loggers(ray_level)  # ray.init sets its own
    except Exception as exc:  # noqa: BLE001 - unreachable cluster, refused token, bad address: one line
        print(
            f"error: Ray at {args.address or 'this machine'}: {type(exc).__name__}: {extract.first_line(exc)}",
            file=sys.stderr,
        )
        return 2
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    written = failed = 0
    totals: dict = {}
    writer = Writer(target)
    try:
        for line in sweep(inputs, cli.extract_options(args, model), args):
            if "phi" in line:  # values only where the results go, and only with --phi-values
                line["phi"] = phi.public(line["phi"], args.phi_values)
                report.count_phi(totals, line["phi"])
            writer.write(line)
            if line["type"] == "input":
                written += 1
                failed += line["status"] == "failed"
                if line["error"]:
                    print(f"error: {line['input']}: {line['error']}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - Ray gave up (retries spent): say what was written
        print(f"error: the sweep stopped: {type(exc).__name__}: {extract.first_line(exc)}", file=sys.stderr)
    finally:
        writer.close()
    print(
        f"{written} of {len(inputs)} inputs written to {args.output}, {failed} failed"
        + ("" if written == len(inputs) else f"; {len(inputs) - written} not written (the sweep stopped)")
        + (f"; {report.phi_counts(report.phi_tally(totals))}" if args.phi else ""),
        file=sys.stderr,
    )
    return 1 if failed or written != len(inputs) else 0


if __name__ == "__main__":
    sys.exit(main())
