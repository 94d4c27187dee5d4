"""The concurrent pipeline: inputs extracted on threads, their images meeting in one queue before one model thread,
and the events that come back drained, with progress bars, into a sink (outputs.Sink).
"""

import dataclasses
import hashlib
import queue
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from tqdm import tqdm

import engine
import extract
import panels
import phi
import report

SEEN_IMAGES = 65536  # results remembered per run by image content, so a logo on every page is classified once


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
    downloads_failed: int = 0  # skipped because their download failed
    over_budget: int = 0  # skipped as over --max-images
    expected: int = 0  # items announced by the extractor, for the progress bar
    seen: int = 0


_END = object()  # an input's last item through the model queue, so it arrives after all its images


def image_key(image) -> bytes:
    """The same pixels (one logo on every page) get the same key, whatever their file name."""
    digest = hashlib.sha256(image.tobytes())  # SHA-NI: faster here than blake2b
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.digest()[:16]


class PhiReader:
    """--phi: a classified image's verdict: its header or metadata, and the text in its pixels, read only after
    classifying, so OCR never runs on what the model calls non-medical (DICOM always), and once per image content
    (the same scan on every page of a report), as it is classified once."""

    def __init__(self):
        self.reader = phi.TextReader()
        self.texts_read: OrderedDict = OrderedDict()  # (image key, original width) -> its pixels' verdict, bounded

    def __call__(self, found: extract.Found, label: str, key: bytes) -> dict | None:
        detail, found.text_detail = found.text_detail, None  # read once here, then not held on to
        if label != "medical" and found.format != "dicom":
            return None
        seen = (key, found.width)  # boxes are in the original's pixels
        if (pixels := self.texts_read.get(seen)) is None:
            pixels = phi.pixels_phi(found.image, self.reader, found.width / found.image.width, detail)
            self.texts_read[seen] = pixels
            while len(self.texts_read) > SEEN_IMAGES:
                self.texts_read.popitem(last=False)
        self.texts_read.move_to_end(seen)
        return phi.merge(found.phi, pixels)


class Run:
    """Inputs extracted `jobs` at a time on threads; their images meet in one queue, so the model thread always
    takes full batches across inputs; results come back to the calling thread in order, per input."""

    def __init__(
        self,
        model: engine.Engine,
        options: extract.Options,
        jobs: int = 4,
        batch_size: int | None = None,
        resumed: dict | None = None,
    ):
        self.model, self.options, self.jobs = model, options, jobs
        self.resumed = resumed or {}  # input -> what an earlier run finished of it (outputs.read_resume)
        self.batch_size = batch_size or model.default_batch_size
        self.to_model: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.known: OrderedDict = OrderedDict()  # image key -> p_medical, bounded
        self.classified = self.reused = 0
        self.phi = PhiReader() if options.phi else None  # --phi: burned-in text, read after classifying
        self.model_thread = threading.Thread(target=self._model_loop, name="model", daemon=True)
        self.model_thread.start()

    def results(self, texts):
        """Yield ("start", state), ("expect", state, n), ("skipped", state, Skipped), ("image", state, Found, p,
        panels, image key, the whole view's p), ("file", state, Finished) and ("end", state) as they come; an input's items come in the
        order they were found (all through the model's queue), and "end" after all of them."""
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

    def phi_of(self, found: extract.Found, p: float, key: bytes) -> dict | None:
        return self.phi(found, self.model.label(p), key) if self.phi else None

    def close(self, wait: bool = True):
        """The model thread ends before the interpreter does (torch's threads abort the process otherwise)."""
        self.stop.set()
        self.to_model.put(None)
        if wait:
            self.model_thread.join(timeout=30)

    def _extract(self, state: InputState) -> None:
        options = dataclasses.replace(
            self.options, expect=lambda n: self.events.put(("expect", state, n)), done=self.resumed.get(state.text)
        )
        try:
            state.kind, items = extract.open_input(state.text, options)
            for item in items:
                if self.stop.is_set():
                    return
                if isinstance(item, extract.Found) and not options.whole_images:  # here, on the input's own thread
                    item.panels = panels.find_panels(item.image, self.options.min_size, item.width)
                self.to_model.put((state, item, image_key(item.image) if isinstance(item, extract.Found) else None))
        except Exception as exc:  # never lose the other inputs' results to one bad file
            state.error = extract.input_problem(exc)
        self.to_model.put((state, _END, None))

    def _take_batch(self) -> list | None:
        """Queue items up to a full batch of images (inputs' end marks ride along), or what came within 20 ms."""
        first = self.to_model.get()
        if first is None:
            return None
        batch, images = [first], int(first[2] is not None)
        while images < self.batch_size:
            try:
                item = self.to_model.get(timeout=0.02)
            except queue.Empty:
                break
            if item is None:
                self.to_model.put(None)
                break
            batch.append(item)
            images += item[2] is not None
        return batch

    def _model_loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            todo = {}
            for _state, item, key in batch:
                if key is not None and key not in self.known and key not in todo:
                    todo[key] = item
            failure = None
            try:
                if todo:
                    found = list(todo.values())
                    results = panels.predict_figures(
                        self.model,
                        [f.image for f in found],
                        [f.panels or [] for f in found],
                        batch_size=self.batch_size,
                    )
                    for key, result in zip(todo, results):
                        self.known[key] = result  # (p_medical, [(box, p) per panel], the whole view's p)
            except Exception as exc:
                failure = f"the model failed on a batch: {type(exc).__name__}: {extract.first_line(exc)}"
            for state, item, key in batch:
                if item is _END:
                    self.events.put(("end", state))
                elif key is None:
                    self.events.put(("skipped" if isinstance(item, extract.Skipped) else "file", state, item))
                elif key in self.known:
                    self.known.move_to_end(key)
                    p, panel_ps, whole = self.known[key]
                    self.events.put(("image", state, item, p, panel_ps, key, whole))
                else:
                    state.error = state.error or failure
            self.classified += len(todo)
            self.reused += sum(key is not None for _, _, key in batch) - len(todo)
            while len(self.known) > SEEN_IMAGES:
                self.known.popitem(last=False)


def drain(run: Run, sink, args, texts, total: int | None, done: set) -> None:
    """Every event of the run to the sink, with progress bars (inputs, when several; images, with the totals the
    extractors announce), the one-line error of each failed input and notes the user should see."""
    several = total is None or total > 1
    inputs_bar = tqdm(
        desc="inputs",
        unit="input",
        total=None if total is None else total - len(done),
        file=sys.stderr,
        disable=args.quiet or not several,
        position=0,
        dynamic_ncols=True,
    )
    images_bar = tqdm(
        desc="images",
        unit="img",
        total=0,
        file=sys.stderr,
        disable=args.quiet,
        position=1 if several and not args.quiet else 0,
        dynamic_ncols=True,
    )
    try:
        for event in run.results(texts):
            kind, state = event[0], event[1]
            if kind == "start":
                sink.start(state)
                images_bar.set_postfix_str(report.shorten(state.text, 40), refresh=False)
                if args.crawl and extract.url_scheme(state.text) not in ("http", "https"):
                    tqdm.write(
                        f"note: {state.text}: --crawl follows the links of http(s) pages; read alone", file=sys.stderr
                    )
            elif kind == "expect":
                state.expected += event[2]
                images_bar.total += event[2]
                images_bar.refresh()
            elif kind == "file":
                sink.file(state, event[2])
            elif kind in ("skipped", "image"):
                if kind == "skipped":
                    sink.skipped(state, event[2])
                else:
                    sink.image(state, *event[2:5], phi=run.phi_of(event[2], event[3], event[5]), p_whole=event[6])
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
                elif problem := report.all_downloads_failed(state.medical + state.non_medical, state.downloads_failed):
                    tqdm.write(f"note: {state.text}: {problem}; --strict makes that a failed input", file=sys.stderr)
                if state.over_budget:
                    tqdm.write(
                        f"note: {state.text}: {report.plural(state.over_budget, 'image')} over --max-images "
                        f"{args.max_images} not classified (listed as skipped); raise --max-images to read "
                        "them",
                        file=sys.stderr,
                    )
                inputs_bar.update(1)
        for bar in (inputs_bar, images_bar):  # a run that ended ends its bars at what came: 100%, never short
            if not bar.disable:
                bar.total = bar.n
                bar.refresh()
    finally:
        inputs_bar.close()
        images_bar.close()
