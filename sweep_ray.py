"""Sweep many inputs on Ray: extraction as Ray tasks, classification in a pool of model actors.

    python sweep_ray.py inputs.txt --output results.parquet
    python sweep_ray.py inputs.parquet --address ray://head:10001 --actors 8 --output results.jsonl

INPUTS is a text file (one URL, path or folder a line; blank lines and # comments ignored) or a Parquet
file with an `input` column. The output has the fields of the CLI's JSON lines, one row per image,
skipped image and input; the rows of one input come together, its `input` row last. Exit status: 0
when every input was processed, 1 when any input failed or was lost, 2 for bad arguments.
"""
import argparse
import json
import logging
import os
import sys
from typing import Iterator

import engine
import extract
import final_classification_script as cli
import report

HERE = os.path.dirname(os.path.abspath(__file__))
RETRIES = 3  # a worker or actor that dies (killed, out of memory, a crash in a decoder) has its work run again;
# past that its inputs are failed rows saying so (Ray Data's default, retrying for ever, hangs on a poison file)
LOST = "lost: Ray could not finish its work (a worker died on every try, or raised: see Ray's logs)"
BLOCKS_PER_CPU = 8  # inputs go to Ray tasks in blocks: a few per CPU keeps every core busy and one slow PDF
# from holding up much, without a task's overhead (tens of ms on a small machine) for every input
# Fields of the Parquet output: every field a JSON line of any type has, null where a type has none.
PARQUET_FIELDS = [("type", "string"), ("input", "string"), ("source", "string"), ("page", "int64"),
                  ("width", "int64"), ("height", "int64"), ("label", "string"), ("p_medical", "float64"),
                  ("saved_path", "string"), ("format", "string"), ("thumbnail", "string"), ("reason", "string"),
                  ("kind", "string"), ("status", "string"), ("error", "string"), ("images", "int64"),
                  ("skipped", "int64")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", metavar="INPUTS", help="text file, one input a line, or Parquet with an `input` column")
    p.add_argument("--output", "-o", required=True, metavar="OUT.parquet|OUT.jsonl",
                   help="where the rows go; the format follows the extension")
    p.add_argument("--address", default=None,
                   help="Ray cluster: ray://HOST:10001, auto (the cluster this machine belongs to), or HOST:6379 "
                        "(default: start Ray on this machine)")
    p.add_argument("--model", default=cli.DEFAULT_MODEL, help="checkpoint, readable on every node "
                                                              "(default: %(default)s, shipped with the code)")
    p.add_argument("--threshold", type=cli.probability,
                   help="p_medical at or above which an image is medical (default: the model's)")
    p.add_argument("--actors", type=cli.at_least(1), default=1,
                   help="model actors, each loading the model once (default: %(default)s)")
    p.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                   help="GPUs per actor; above 0 the actors run torch on CUDA, else ONNX Runtime on the CPU "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=cli.at_least(1), default=None,
                   help="images per model batch (default: 16 on the CPU, 128 on CUDA)")
    p.add_argument("--backbone-weights", help="local file of the backbone's ImageNet weights, for offline machines")
    cli.add_extraction_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(save_dir=None)  # the extracted files stay where they are; no --save-dir on a cluster
    args = p.parse_args(argv)
    if args.num_gpus_per_actor < 0:
        p.error("--num-gpus-per-actor must be 0 or more")
    if os.path.splitext(args.output)[1].lower() not in (".parquet", ".jsonl"):
        p.error(f"--output {args.output}: name it .parquet or .jsonl")
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
    return {"source": found.source, "page": found.page, "width": found.width, "height": found.height,
            "format": found.format, "thumbnail": found.thumbnail, "index": found.index, "frame": found.frame}


def extraction_rows(row: dict, options: extract.Options) -> Iterator[dict]:
    """One input -> a row per found image (its reduced RGB pixels), per skipped image, then the input's row.

    Every problem is the input's error, as in the CLI; images found before it are kept.
    """
    n, text = row["n"], row["input"]
    common = {"n": n, "input": text}
    kind, error, images, skipped = None, None, 0, 0
    try:
        kind, items = extract.open_input(text, options)
        for item in items:
            if isinstance(item, extract.Skipped):
                skipped += 1
                yield {**common, "type": "skipped", "line": json.dumps(
                    report.skipped_line(text, report.skipped_record(item))), "pixels": b"", "size": ""}
            else:
                images += 1
                pixels, size = _pixels(item.image)
                yield {**common, "type": "image", "line": json.dumps(_found_fields(item)), "pixels": pixels,
                       "size": size}
    except Exception as exc:  # noqa: BLE001 - never lose the other inputs' results to one bad file
        error = extract.input_problem(exc)
    entry = report.input_record(text, kind, error, [], [])
    yield {**common, "type": "input", "line": json.dumps(report.input_line(entry, images, skipped)), "pixels": b"",
           "size": ""}


# ---------------------------------------------------------------- classification (an actor pool)

class Classifier:
    """A Ray actor: loads the model once, then classifies the image rows of every batch it is given."""

    def __init__(self, model_path: str, gpu: bool, backbone_weights: str | None, threshold: float | None,
                 batch_size: int | None):
        self.model = engine.open_engine(model_path, "torch" if gpu else "onnx", "cuda" if gpu else "cpu",
                                        backbone_weights)
        if threshold is not None:
            self.model.threshold = threshold
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        lines = list(batch["line"])
        at = [i for i, kind in enumerate(batch["type"]) if kind == "image"]
        found = [extract.Found(image=Image.frombytes("RGB", tuple(map(int, str(batch["size"][i]).split("x"))),
                                                      bytes(batch["pixels"][i])), **json.loads(lines[i])) for i in at]
        for i, item, p in zip(at, found, self.model.predict([f.image for f in found], self.batch_size)):
            record = report.image_record(item, p, self.model.label(p), None)
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
            extraction_rows, fn_kwargs={"options": options}, max_retries=RETRIES)
        classified = rows.map_batches(
            Classifier, fn_constructor_args=(model_on_workers(args.model, args.address), gpu, args.backbone_weights,
                                             args.threshold, args.batch_size),
            batch_size=args.batch_size or (128 if gpu else 16), compute=ray.data.ActorPoolStrategy(size=args.actors),
            num_gpus=args.num_gpus_per_actor if gpu else None, batch_format="numpy",
            max_restarts=-1, max_task_retries=RETRIES)
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

    def __init__(self, path: str):
        self.path, self.parquet, self.rows = path, path.lower().endswith(".parquet"), []
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PARQUET_FIELDS])
            self.file = pq.ParquetWriter(path, self.schema)
        else:
            self.file = open(path, "w", encoding="utf-8")

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
            columns = {name: [row.get(name) for row in self.rows] for name, _ in PARQUET_FIELDS}
            self.file.write_table(pa.Table.from_pydict(columns, schema=self.schema))
            self.rows = []

    def close(self):
        if self.parquet:
            self._flush()
        self.file.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # before any work: a run must never end with nowhere to write
        cli.check_output_file(args.output, "--output")
        cli.check_not_an_input(args.output, "--output", argparse.Namespace(inputs=[args.inputs], input_file=None))
    except cli.OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        inputs = read_inputs(args.inputs)
    except (OSError, ValueError) as exc:
        print(f"error: {args.inputs}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    try:  # the model once here, to fail early and to size the extracted images; the actors load their own
        model = engine.open_engine(args.model, "auto", "cpu", args.backbone_weights,
                                   lambda message: print(f"note: {message}", file=sys.stderr))
    except engine.EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray

    if args.quiet:
        logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        if not ray.is_initialized():
            ray.init(address=args.address or "local", runtime_env=runtime_env(args.address),  # local: a new one
                     log_to_driver=not args.quiet, logging_level=logging.WARNING if args.quiet else logging.INFO)
    except Exception as exc:  # noqa: BLE001 - unreachable cluster, refused token, bad address: one line
        print(f"error: Ray at {args.address or 'this machine'}: {type(exc).__name__}: {extract.first_line(exc)}",
              file=sys.stderr)
        return 2
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    written = failed = 0
    writer = Writer(args.output)
    try:
        for line in sweep(inputs, cli.extract_options(args, model), args):
            writer.write(line)
            if line["type"] == "input":
                written += 1
                failed += line["status"] == "failed"
                if line["error"] and not args.quiet:
                    print(f"error: {line['input']}: {line['error']}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - Ray gave up (retries spent): say what was written
        print(f"error: the sweep stopped: {type(exc).__name__}: {extract.first_line(exc)}", file=sys.stderr)
    finally:
        writer.close()
    if not args.quiet or written != len(inputs):
        print(f"{written} of {len(inputs)} inputs written to {args.output}, {failed} failed", file=sys.stderr)
    return 1 if failed or written != len(inputs) else 0


if __name__ == "__main__":
    sys.exit(main())
