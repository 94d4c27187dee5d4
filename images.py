"""Image decoding: bytes -> pixels, by content never by name; and the records every extractor yields.

`Found` is one extracted image, `Skipped` one image found but not classified (with
the reason), `InputError` a problem with an input as a whole (one line). Nothing
here knows about the model or imports torch.
"""
import io
from dataclasses import dataclass

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2",
                    ".ico", ".jfif")

Image.MAX_IMAGE_PIXELS = None  # decode_image checks Options.max_pixels from the header, before decoding


@dataclass
class Options:
    min_size: int = 32
    max_images: int = 500
    timeout: float = 20.0  # seconds for one whole download
    pdf_time_limit: float = 300.0  # seconds for one PDF; what was extracted before it ran out is kept
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000
    workers: int = 8
    max_redirects: int = 5
    keep_encoded: bool = False  # keep each image's file bytes (for --save-dir)
    working_size: int = 1024  # decoded images are reduced to this longest side; width/height stay the original


@dataclass
class Found:
    source: str
    page: int | None
    image: Image.Image
    width: int
    height: int
    encoded: bytes | None = None
    ext: str = "png"


@dataclass
class Skipped:
    source: str
    reason: str


class InputError(Exception):
    """The input as a whole could not be processed; the message is one line."""


class ImageBudget:
    """--max-images for one input: past the limit, found images become skipped records."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.reason = f"over --max-images ({limit})"

    @property
    def full(self) -> bool:
        return self.used >= self.limit

    def admit(self, item: "Found | Skipped") -> "Found | Skipped":
        if isinstance(item, Found):
            if self.full:
                return Skipped(item.source, self.reason)
            self.used += 1
        return item


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


# ---------------------------------------------------------------- decoding

def sniff(data: bytes) -> str:
    """'pdf', 'svg', 'html' or 'image?' from the first bytes, never from a name."""
    head = data[:1024].lstrip()
    if b"%PDF-" in data[:1024]:
        return "pdf"
    lower = head[:512].lower()
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "svg"
    if lower.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<!--", b"<meta", b"<div", b"<p", b"<title",
                         b"<?xml", b"<script")):
        return "html"
    return "image?"


def reduce(image: Image.Image, size: int) -> Image.Image:
    if max(image.size) > size:
        image = image.copy() if image.readonly else image
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image


def decode_image(data: bytes, source: str, options: Options, page: int | None = None) -> Found | Skipped:
    """Bytes -> Found, or Skipped with why (SVG, not an image, pixel cap, too small)."""
    kind = sniff(data)
    if kind == "svg":
        return Skipped(source, "SVG (vector image, not classified)")
    if kind in ("html", "pdf"):
        return Skipped(source, f"not an image ({kind.upper()} content)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > options.max_pixels:
            return Skipped(source, f"over the pixel cap ({width}x{height} > {options.max_pixels:,} pixels)")
        if min(width, height) < options.min_size:
            return Skipped(source, f"smaller than {options.min_size} px ({width}x{height})")
        fmt = (image.format or "png").lower()
        if image.format == "JPEG":
            image.draft("RGB", (options.working_size, options.working_size))
        image.seek(0)
        image.load()
    except Exception as exc:
        return Skipped(source, f"not a decodable image ({type(exc).__name__})")
    ext = {"jpeg": "jpg", "mpo": "jpg", "tiff": "tif", "jpeg2000": "jp2"}.get(fmt, fmt)
    return Found(source, page, reduce(image, options.working_size), width, height,
                 data if options.keep_encoded else None, ext)


