"""Run the classifier: ONNX Runtime on the CPU, torch on CUDA/MPS, one preprocessing for both.

`prepare` (Pillow and numpy only) turns any PIL image into the model's input, a uint8
(crop, crop, 3) array; training, both engines and evaluation all call it, so they cannot
drift. Normalisation lives inside the model (and so inside its ONNX graph).

The ONNX file is a derived twin of the checkpoint (`best_model.pth` -> `best_model.onnx`),
bound to it by the checkpoint's SHA-256 in the graph's metadata: an export made from
another checkpoint is never used. Nothing here imports torch; the torch engine lives in
model.py and is imported only when it is asked for.
"""

import hashlib
import importlib.util
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

CLASSES = ("medical", "non-medical")
MEDICAL = 0  # index of "medical" in CLASSES
EXPORT_FORMAT = 1  # bumped when the graph's inputs, outputs or metadata change meaning
ONNX_INPUT, ONNX_PROBABILITIES, ONNX_FEATURES = "images", "probabilities", "features"
_XDG_CACHE = os.environ.get("XDG_CACHE_HOME", "")
CACHE_DIR = os.path.join(  # an empty or relative XDG_CACHE_HOME is ignored, as the XDG spec says
    _XDG_CACHE if os.path.isabs(_XDG_CACHE) else os.path.expanduser("~/.cache"), "medical-image-classifier"
)
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


class EngineError(Exception):
    """The model cannot be run as asked; the message is one line and says what to do."""


# ---------------------------------------------------------------- preprocessing


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; grey is replicated and alpha is flattened on white, as pages show it."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")


def prepare(image: Image.Image, preprocess: dict) -> np.ndarray:
    """PIL image -> the model's uint8 input (crop, crop, 3).

    `fit` "crop" (the default): the shorter side resized to `resize`, then the centre `crop`
    square, as torchvision's Resize + CenterCrop do. "letterbox": the whole image scaled to
    fit `crop` and centred on a white square, so wide figures keep their sides.
    """
    image = to_rgb(image)
    resize, crop = preprocess["resize"], preprocess["crop"]
    resample = RESAMPLE[preprocess.get("interpolation", "bilinear")]
    width, height = image.size
    if preprocess.get("fit", "crop") == "letterbox":
        scale = crop / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (crop, crop), (255, 255, 255))
        canvas.paste(image.resize(size, resample), ((crop - size[0]) // 2, (crop - size[1]) // 2))
        return np.asarray(canvas)
    if width <= height:
        size = (resize, max(resize, int(resize * height / width)))
    else:
        size = (max(resize, int(resize * width / height)), resize)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    if size != (width, height) and resample == Image.Resampling.BILINEAR and crop <= resize:
        # bilinear (every shipped recipe): only the crop is resampled, from the part of the image it covers,
        # 1.3-1.6x faster; the same pixels as resizing the whole image and then cropping, within one grey level
        sx, sy = width / size[0], height / size[1]
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return np.asarray(image.resize((crop, crop), resample, box=box))
    if size != (width, height):
        image = image.resize(size, resample)
    return np.asarray(image.crop((left, top, left + crop, top + crop)))


def normalization(preprocess: dict) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel so that uint8 x * scale - shift == (x / 255 - mean) / std."""
    mean, std = np.asarray(preprocess["mean"], np.float32), np.asarray(preprocess["std"], np.float32)
    return 1.0 / (255.0 * std), mean / std


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def prepare_pool() -> ThreadPoolExecutor:
    """Threads that decode and resize while the model runs (Pillow releases the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="prepare")
        return _pool


# ---------------------------------------------------------------- engines


class Engine:
    """What the CLI, evaluation and tests call: predict() over PIL images, the one inference path."""

    name = "engine"
    pad_batches = False  # run every batch at the full batch size (a GPU then never meets a new shape)
    default_batch_size = 16

    def __init__(self, arch: str, preprocess: dict, threshold: float, classes: Sequence[str] = CLASSES):
        self.arch, self.preprocess, self.threshold = arch, dict(preprocess), float(threshold)
        self.classes = tuple(classes)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, crop, crop, 3) -> class probabilities (N, 2)."""
        raise NotImplementedError

    def predict(self, images: Iterable[Image.Image], batch_size: int | None = None) -> list[float]:
        """PIL images -> the probability that each is medical; preparation overlaps the model."""
        batch_size = batch_size or self.default_batch_size
        prepared = prepare_pool().map(lambda im: prepare(im, self.preprocess), images)
        out: list[float] = []
        batch: list[np.ndarray] = []
        for array in prepared:
            batch.append(array)
            if len(batch) == batch_size:
                out += self._run_batch(batch, batch_size)
        if batch:
            out += self._run_batch(batch, batch_size)
        return out

    def _run_batch(self, batch: list, batch_size: int) -> list[float]:
        n = len(batch)
        if self.pad_batches and n < batch_size:
            batch += [batch[-1]] * (batch_size - n)
        probabilities = self.run(np.stack(batch))[:n, MEDICAL]
        batch.clear()
        return [float(p) for p in probabilities]

    def label(self, p_medical: float) -> str:
        return self.classes[MEDICAL] if p_medical >= self.threshold else self.classes[1 - MEDICAL]


class HandoffEngine(Engine):
    """`first` (ONNX Runtime, ready at once) classifies until `build_later` (torch on a GPU, which takes seconds to
    start) is ready on its thread; then the GPU takes over. A run the CPU finishes sooner never waits for CUDA."""

    def __init__(self, first: Engine, build_later: Callable[[], Engine | None], note: Callable[[str], None]):
        super().__init__(first.arch, first.preprocess, first.threshold, first.classes)
        self.first, self.later = first, None
        self.default_batch_size = first.default_batch_size
        self.thread = threading.Thread(target=self._start, args=(build_later, note), name="gpu start", daemon=True)
        self.thread.start()
        _handoffs.append(self)

    def _start(self, build_later, note) -> None:
        try:
            self.later = build_later()
        except Exception as exc:  # a GPU that fails to start: the CPU goes on, and says so once
            import images

            note(f"the GPU did not start ({images.first_line(exc)}); classifying on the CPU")

    @property
    def name(self) -> str:
        return f"{self.first.name}, then {self.later.name}" if self.later else self.first.name

    @property
    def starting(self) -> bool:
        return self.thread.is_alive()

    def predict(self, images, batch_size: int | None = None) -> list[float]:
        engine = self.later or self.first
        return engine.predict(images, batch_size if engine is self.first else None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return (self.later or self.first).run(batch)


_handoffs: list = []  # every HandoffEngine made in this process, so the CLI can leave without waiting for a GPU


def still_starting() -> bool:
    """Whether a GPU is still starting on its thread (the CLI then exits at once, not after CUDA's start-up)."""
    return any(h.starting for h in _handoffs)


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (torch alone takes 1-2 s)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def onnxruntime_available() -> bool:
    return installed("onnxruntime")


def torch_available() -> bool:
    return installed("torch")


def _ort_session(path: str, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Threads that sleep when idle: spinning ones took the cores that extraction and decoding need (the 200-image
    # PDF ran about 1.1x faster without; the model alone runs at the same speed)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OnnxEngine(Engine):
    """The exported graph on ONNX Runtime's CPU provider."""

    name = "onnx"

    def __init__(self, path: str, session, metadata: dict):
        super().__init__(
            metadata["arch"],
            json.loads(metadata["preprocess"]),
            float(metadata["threshold"]),
            json.loads(metadata["classes"]),
        )
        self.path, self.session = path, session

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([ONNX_PROBABILITIES], {ONNX_INPUT: batch})[0]


STATIC_BATCHES = (4, 16)  # OpenVINO's shapes: a batch is padded to the next (a dynamic shape ran slower here)
OPENVINO_CACHE = os.path.join(CACHE_DIR, "openvino")


class OpenVinoEngine(Engine):
    """The same exported graph on OpenVINO's CPU plugin, in fp32: the same p as ONNX Runtime (within 5e-5), and
    on this project's AVX-512 Xeons about 1.4x its speed on the model alone. Lower precisions move p too far to be
    used (bf16: up to 0.13, int8: up to 0.5; docs/engines.md). Batches run at static shapes, padded up to the next
    (the CLI's model thread takes small batches when extraction is slower than the model); each shape is compiled
    once, when first needed, and kept in OpenVINO's model cache (CACHE_DIR/openvino) for the next run.

    `auto` never picks it: through the whole CLI on 2 cores it is no faster than ONNX Runtime (extraction and
    decoding then share the cores with the model), and its import and compilation slow a short run."""

    name = "openvino"
    precision = "f32"

    def __init__(self, export: OnnxEngine, threads: int | None = None):
        import openvino

        super().__init__(export.arch, export.preprocess, export.threshold, export.classes)
        self.path, self.threads = export.path, threads or os.cpu_count() or 1
        self.core = openvino.Core()
        try:
            os.makedirs(OPENVINO_CACHE, exist_ok=True)
            self.core.set_property({"CACHE_DIR": OPENVINO_CACHE})
        except (OSError, RuntimeError):  # a cache folder that cannot be written: compiled each run, as before
            pass
        self.requests: dict[int, object] = {}
        self._request(STATIC_BATCHES[-1])  # compiled now, so an unreadable graph fails here, not mid-run

    def _request(self, batch_size: int):
        """The infer request for one static batch size, compiled the first time it is asked for."""
        if batch_size not in self.requests:
            graph = self.core.read_model(self.path)
            crop = self.preprocess["crop"]
            graph.reshape({0: [batch_size, crop, crop, 3]})
            config = {
                "INFERENCE_PRECISION_HINT": self.precision,
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads,
            }
            try:
                compiled = self.core.compile_model(graph, "CPU", config)
            except RuntimeError:  # perhaps the cache (a full disk, a damaged entry): once more without it
                self.core.set_property({"CACHE_DIR": ""})
                compiled = self.core.compile_model(graph, "CPU", config)
            self.requests[batch_size] = compiled.create_infer_request()
        return self.requests[batch_size]

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        size = next((s for s in STATIC_BATCHES if s >= n), n)
        if size > n:
            batch = np.concatenate([batch, np.repeat(batch[-1:], size - n, axis=0)])
        return self._request(size).infer({0: batch})[ONNX_PROBABILITIES][:n]


def onnx_runner(
    path: str, output: str = ONNX_FEATURES, threads: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A function uint8 batch -> one named output of an ONNX file (train.py's feature pass)."""
    session = _ort_session(path, threads)
    return lambda batch: session.run([output], {ONNX_INPUT: batch})[0]


# ---------------------------------------------------------------- the export twin


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_path(checkpoint_path: str) -> str:
    """best_model.pth -> best_model.onnx, beside it."""
    stem, ext = os.path.splitext(checkpoint_path)
    return (stem if ext == ".pth" else checkpoint_path) + ".onnx"


def cached_export_path(digest: str) -> str:
    """Where an export goes when the checkpoint's folder cannot be written."""
    return os.path.join(CACHE_DIR, f"{digest[:32]}.onnx")


def export_metadata(
    arch: str, preprocess: dict, threshold: float, classes: Sequence[str], digest: str, info: dict | None = None
) -> dict:
    """The strings stored in the graph, enough to run it without the checkpoint."""
    return {
        "export_format": str(EXPORT_FORMAT),
        "arch": arch,
        "preprocess": json.dumps(preprocess),
        "threshold": repr(float(threshold)),
        "classes": json.dumps(list(classes)),
        "checkpoint_sha256": digest,
        "info": json.dumps(info or {}),
    }


def open_export(path: str, digest: str, threads: int | None = None) -> tuple[OnnxEngine | None, str]:
    """(engine, "") when `path` is a valid export of the checkpoint with this digest, else (None, why not)."""
    if not os.path.isfile(path):
        return None, "no ONNX export"
    try:
        session = _ort_session(path, threads)
        metadata = session.get_modelmeta().custom_metadata_map
    except Exception as exc:
        return None, f"unreadable ONNX export ({type(exc).__name__})"
    if metadata.get("export_format") != str(EXPORT_FORMAT):
        return None, f"ONNX export of another format ({metadata.get('export_format', 'none')})"
    if metadata.get("checkpoint_sha256") != digest:
        return None, "stale ONNX export (made from another checkpoint)"
    return OnnxEngine(path, session, metadata), ""


CHECKPOINT_HINT = "give a .pth file written by train.py"
CONTENT_WORDS = {
    "pdf": "a PDF",
    "dicom": "a DICOM file",
    "svg": "an SVG image",
    "html": "an HTML page",
    "image": "an image",
    "text": "a text file",
    "empty": "an empty file",
    "unknown": "an unknown binary file",
}


def not_a_checkpoint(path: str, what: str) -> str:
    return f"{path}: not a model checkpoint ({what}); {CHECKPOINT_HINT}"


def checkpoint_problem(path: str) -> str | None:
    """Why `path` cannot be a checkpoint, judged from its bytes, as one line; None when torch should read it.

    torch itself answers a text file with a byte value and a PDF with a page on weights_only.
    """
    import zipfile

    import images

    if not os.path.exists(path):
        return f"{path}: no such file; {CHECKPOINT_HINT}"
    if os.path.isdir(path):
        return not_a_checkpoint(path, "a folder")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: it holds a data.pkl
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("data.pkl") for name in archive.namelist()):
                    return None
            return not_a_checkpoint(path, "a zip archive that torch did not write")
        except (zipfile.BadZipFile, OSError):
            return not_a_checkpoint(path, "a damaged or truncated zip archive")
    if head.startswith(b"\x80"):  # a pickle: torch's legacy format
        return None
    if path.lower().endswith(".onnx"):
        return not_a_checkpoint(path, "an ONNX export, which the CLI finds beside its .pth")
    return not_a_checkpoint(path, CONTENT_WORDS.get(images.sniff(head), "an unknown binary file"))


def gpu_likely() -> bool:
    """A cheap guess, without importing torch, at whether torch would find a GPU here."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version"):
        return True
    return sys.platform == "darwin" and os.uname().machine == "arm64"


def open_engine(
    model_path: str,
    engine: str = "auto",
    device: str = "auto",
    backbone_weights: str | None = None,
    note: Callable[[str], None] = lambda message: None,
) -> Engine:
    """The engine to classify with: a valid ONNX export on the CPU, else torch; `note` hears every fallback.

    auto: torch where a CUDA/MPS device is asked for; where one may be found, ONNX Runtime while torch starts on
    it (HandoffEngine); ONNX Runtime otherwise; openvino only when asked for (OpenVinoEngine says why). A checkpoint
    without a valid export gets one made once (beside it, or in the user's cache folder) when torch
    is installed; if that fails, torch runs it.
    """
    if engine in ("onnx", "openvino") and device in ("cuda", "mps"):
        raise EngineError(f"the {engine} engine runs on the CPU; use --engine torch (or auto) for --device {device}")
    if engine in ("onnx", "openvino") and not onnxruntime_available():
        raise EngineError(f"--engine {engine} needs onnxruntime: pip install -r requirements-cli.txt")
    if engine == "openvino" and not installed("openvino"):
        raise EngineError("--engine openvino needs OpenVINO: pip install -r requirements-openvino.txt")
    problem = checkpoint_problem(model_path)
    if problem:
        raise EngineError(problem)
    use_torch = engine == "torch" or device in ("cuda", "mps") or not onnxruntime_available()
    if engine == "auto" and device in ("auto", "cpu") and not onnxruntime_available():
        note("onnxruntime is not installed: running the model on torch, several times slower on a CPU")
    start_gpu = engine == "auto" and device == "auto" and torch_available() and gpu_likely()
    on_engine = _on_openvino if engine == "openvino" else lambda export: export  # the export on the engine asked for
    if use_torch:
        return _torch_engine(model_path, device, backbone_weights)
    digest = file_digest(model_path)
    reasons = []
    for candidate in (export_path(model_path), cached_export_path(digest)):
        found, why = open_export(candidate, digest)
        if found and start_gpu:
            return HandoffEngine(found, lambda: _gpu_engine(model_path, backbone_weights), note)
        if found:
            return on_engine(found)
        reasons.append(why)
    if start_gpu:
        import model as model_lib

        if model_lib.select_device("auto").type != "cpu":
            return _torch_engine(model_path, "auto", backbone_weights)
    if not torch_available():
        raise EngineError(
            f"{model_path} has {reasons[0]} at {export_path(model_path)}, and torch, which makes one, "
            f"is not installed: pip install -r requirements.txt and run once more"
        )
    import model as model_lib

    classifier = model_lib.load_model(model_path, "cpu", backbone_weights)
    note(f"{reasons[0]} for {model_path}: making one (once, a few seconds)")
    for target in (export_path(model_path), cached_export_path(digest)):
        try:
            model_lib.export_onnx(classifier, target, digest)
        except OSError as exc:
            note(f"could not write {target} ({exc.strerror or type(exc).__name__})")
            continue
        found, why = open_export(target, digest)
        if found:
            note(f"wrote {target}")
            return on_engine(found)
        note(f"the export at {target} does not load ({why})")
    note("running the model on torch instead of ONNX Runtime")
    return model_lib.TorchEngine(classifier)


def _on_openvino(export: OnnxEngine) -> OpenVinoEngine:
    try:
        return OpenVinoEngine(export)
    except Exception as exc:  # a broken install, a graph its ONNX reader refuses: one line, not a traceback
        import images

        raise EngineError(f"OpenVINO cannot run {export.path}: {images.first_line(exc)}; use --engine onnx") from exc


def _gpu_engine(model_path: str, backbone_weights: str | None) -> Engine | None:
    """The torch engine on the GPU `auto` finds, warmed up; None where torch finds none (the CPU engine stays)."""
    import model as model_lib

    device = model_lib.select_device("auto")
    if device.type == "cpu":
        return None
    gpu = _torch_engine(model_path, device.type, backbone_weights)
    gpu.run(np.zeros((gpu.default_batch_size, gpu.preprocess["crop"], gpu.preprocess["crop"], 3), np.uint8))
    return gpu


def _torch_engine(model_path: str, device: str, backbone_weights: str | None) -> Engine:
    if not torch_available():
        raise EngineError(
            "torch is not installed (needed for --engine torch and GPUs): pip install -r requirements.txt"
        )
    import model as model_lib  # its ModelError is an EngineError

    return model_lib.TorchEngine(model_lib.load_model(model_path, model_lib.select_device(device), backbone_weights))
