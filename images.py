"""Image decoding: bytes -> pixels, by content never by name; and the records every extractor yields.

`Found` is one extracted image, `Skipped` one image found but not classified (with
the reason), `InputError` a problem with an input as a whole (one line). Nothing
here knows about the model or imports torch.
"""

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image

import phi
from messages import first_line  # noqa: F401 (re-exported)
from version import __version__

# Names that claim an image (or a document of ours): in a folder, such a file whose content is not
# readable is listed as skipped; any other name whose content is not readable is passed over silently.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".jp2",
    ".ico",
    ".jfif",
    ".avif",
    ".heic",
    ".dcm",
    ".dicom",
    ".pdf",
    ".svg",
)

Image.MAX_IMAGE_PIXELS = None  # decode_image checks Options.max_pixels from the header, before decoding


# Names the tool and its version to every server it downloads from (--user-agent replaces it).
USER_AGENT = f"medical-image-classifier/{__version__} (image extraction for classification; python-requests)"


@dataclass
class Options:
    min_size: int = 32
    max_images: int = 500
    timeout: float = 20.0  # seconds for one whole download, its retries and their waits included
    pdf_time_limit: float = 300.0  # seconds for one PDF; what was extracted before it ran out is kept
    pdf_page_time_limit: float = 20.0  # seconds for one page's images; those after it ran out are skipped
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000
    workers: int = 8
    max_redirects: int = 5
    keep_encoded: bool = False  # keep each image's file bytes (for --save-dir)
    working_size: int = 1024  # decoded images are reduced to this shorter side (the CLI: the model's resize);
    # width/height stay the original's, and JPEGs are decoded at the smallest DCT scale that still covers it
    all_frames: bool = False  # every frame of a multi-frame DICOM, not only the middle one
    phi: bool = False  # --phi: read what a file's header and metadata say of a person (phi.py)
    pages: tuple | None = None  # PDF pages to read: ((first, last or None), ...), 1-based; None for all
    password: str | None = field(default=None, repr=False)  # tried on a PDF the empty password does not open
    user_agent: str = USER_AGENT
    headers: dict = field(default_factory=dict, repr=False)  # sent after User-Agent (so they may replace it); never
    # printed: they may hold cookies or tokens
    header_hosts: frozenset | None = None  # the hosts `headers` go to (an input URL's own); None: every host
    retries: int = 2  # further tries of a request after a connect error, a timeout, 429 or 5xx, within `timeout`
    verify: bool | str = True  # check certificates (False: --insecure; a path: --ca-bundle, a PEM file or folder)
    crawl_depth: int = 0  # an http(s) page: follow its links on the same site this many steps (0: the page alone)
    max_pages: int = 100  # a crawl fetches at most this many pages and linked documents
    delay: float = 0.5  # seconds between a crawl's requests to one host (robots.txt's Crawl-delay when longer)
    whole_images: bool = False  # --whole-images: a compound figure is not split into its panels (panels.py)
    max_page_bytes: int = 16 * 1024 * 1024  # an HTML page larger than this is not read (--max-page-bytes)
    done: dict | None = field(default=None, repr=False)  # --resume: what an earlier run finished of this input,
    # {"files": {source: its "file" line}, "sources": the images it classified}; those files are not read again
    expect: Callable[[int], None] | None = field(default=None, repr=False)  # told how many items are coming,
    # as soon as an extractor knows (a PDF's listed images, a page's pictures, a folder's files): progress totals

    def announce(self, count: int) -> None:
        if self.expect is not None and count > 0:
            self.expect(count)


@dataclass
class Found:
    source: str
    page: int | None
    image: Image.Image
    width: int
    height: int
    encoded: bytes | None = None
    ext: str = "png"  # file extension for --save-dir, of `encoded` when kept, else PNG
    format: str | None = None  # what the image was stored as: jpeg, png, tiff, dicom, ...
    index: int | None = None  # a PDF image's place on its page (order of first drawing), 1-based
    frame: int | None = None  # a frame's place in a multi-frame file, 1-based
    thumbnail: str | None = None  # a page image reached through a link: the small image the page shows
    inline: bool = False  # a PDF inline image (BI ... ID ... EI)
    found_on: str | None = None  # in a crawl: the page that shows the image, or links to the file it came from
    panels: list | None = None  # a compound figure's panel boxes (x0, y0, x1, y1) in `image`'s pixels
    phi: dict | None = None  # --phi: what the file's DICOM header or metadata may say of a patient (phi.py)
    text_detail: Image.Image | None = None  # --phi: a large original at the size its small text is read at


@dataclass
class Skipped:
    source: str
    reason: str
    undecodable: bool = False  # content that claims an image format but does not decode (a damaged file)
    phi: dict | None = None  # --phi: a DICOM not classified still has its header read


@dataclass
class Finished:
    """Every item of one file of a folder (one page of a crawl) has been given: --resume need not read it again.
    `covers`: the other files a saved page read; `links`: a crawled page's same-site links, so a resumed crawl
    goes on from it without fetching it again."""

    source: str
    covers: tuple = ()
    links: tuple | None = None


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


def read_file(path: str, options: Options) -> bytes:
    """A local file's bytes, refused over four times the download cap. Raises InputError or OSError."""
    size = os.path.getsize(path)
    if size > options.max_bytes * 4:
        raise InputError(f"file of {size:,} bytes is over the {options.max_bytes * 4:,} byte cap")
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- what a file is

# Unmistakable signatures of image formats Pillow reads. Formats with a weak one (BMP's "BM", Netpbm's "P6", TGA)
# count when Pillow parses their header, so a text file that starts "BMI" is still a text file.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\xffO\xffQ",
    b"8BPS",
    b"qoif",
    b"DDS ",
    b"icns",
)
HTML_STARTS = (
    b"<!doctype",
    b"<html",
    b"<head",
    b"<body",
    b"<!--",
    b"<meta",
    b"<div",
    b"<p",
    b"<title",
    b"<?xml",
    b"<script",
    b"<link",
    b"<style",
    b"<img",
    b"<table",
    b"<h1",
    b"<a ",
)
# What a file whose content the tool does not read is, in the words of its one-line error.
CONTENT_NAMES = {"empty": "empty file", "text": "text file", "html": "HTML error page", "unknown": "unknown binary"}


def sniff(data: bytes) -> str:
    """What bytes are, from their first bytes, never from a name: 'pdf', 'dicom', 'svg', 'html', 'image',
    'text', 'empty' or 'unknown'."""
    if not data.strip():
        return "empty"
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[128:132] == b"DICM":
        return "dicom"
    head = data[:1024].removeprefix(b"\xef\xbb\xbf").lstrip()
    lower = head[:512].lower()
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "svg"
    if lower.startswith(HTML_STARTS):
        return "html"
    if (
        data.startswith(IMAGE_SIGNATURES)
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or (data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"))
    ):
        return "image"
    try:
        with Image.open(io.BytesIO(data)):
            return "image"
    except Exception:
        pass
    sample = data[:4096]
    if b"\x00" not in sample:
        try:
            sample.decode("utf-8")
            return "text"
        except UnicodeDecodeError as exc:
            if exc.start >= len(sample) - 4:  # a character cut by the sample's end
                return "text"
    return "unknown"


def reduce(image: Image.Image, size: int) -> Image.Image:
    """Shrink (never enlarge) until the shorter side is `size`: all a model resizing to `size` needs.

    The longer side is rounded as torchvision's Resize and engine.prepare round it, so preparing
    the reduced image resizes nothing more: one resampling, the same pixels as from the original.
    """
    width, height = image.size
    if min(width, height) <= size:
        return image
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    return image.resize(new, Image.Resampling.BILINEAR)


# ---------------------------------------------------------------- pixel depth

WINDOW_PERCENTILES = (0.05, 99.95)  # a robust window: a few hot or dead pixels do not set the range


def window_to_uint8(values: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Any numbers -> uint8 by their actual range (a robust percentile window unless one is given), never clipped
    to the first 256 values."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if window is None:
        step = max(1, finite.size // 1_000_000)  # percentiles of a sample are as good and much faster
        window = tuple(np.percentile(finite[::step], WINDOW_PERCENTILES)) if finite.size else (0.0, 1.0)
    low, high = window
    if high <= low:
        return np.where(values > low, 255, 0).astype(np.uint8)
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _bits_per_sample(data: bytes, image: Image.Image) -> int:
    """16 for an RGB(A) image stored with 16 bits a sample (which Pillow reads as its high bytes), else 8."""
    if image.format == "PNG" and data[12:16] == b"IHDR":
        return data[24]
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, (8,))
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 8


def to_8bit(image: Image.Image, bits: int = 8) -> Image.Image:
    """16- and 32-bit grey (I;16, I, F modes) and 16-bit colour scaled to 8 bits by their actual range."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(window_to_uint8(np.asarray(image)), "L")
    if bits > 8 and image.mode in ("RGB", "RGBA"):
        # Pillow keeps the high byte of each 16-bit sample: 12-bit data would show almost black, so stretch it.
        rgb = np.asarray(image.convert("RGB"))
        stretched = Image.fromarray(window_to_uint8(rgb), "RGB")
        if image.mode == "RGBA":
            stretched.putalpha(image.getchannel("A"))
        return stretched
    return image


# ---------------------------------------------------------------- decoding


def size_problem(width: int, height: int, options: Options) -> str | None:
    """Why an image of this size is not classified (from its header, before decoding), or None."""
    if width * height > options.max_pixels:
        return f"over the pixel cap ({width}x{height} > {options.max_pixels:,} pixels)"
    if min(width, height) < options.min_size:
        return f"smaller than {options.min_size} px ({width}x{height})"
    return None


BLANK_LEVELS = 2  # an image whose every channel spans at most this many levels shows nothing


def blank_problem(image: Image.Image) -> str | None:
    """Why an image shows nothing (a lazy-loading placeholder, an empty mask, a white page), or None.

    Fully transparent, or one colour: every channel's range within BLANK_LEVELS levels, alpha included (a shape
    drawn only in the alpha channel is a picture)."""
    bands = image.getbands()
    if "A" in bands and image.getchannel("A").getextrema()[1] == 0:
        return "blank image (fully transparent)"
    if image.mode in ("L", "LA", "RGB", "RGBA") and min(image.size) >= 16:
        # means of 8x8 blocks lie within each channel's range, so blocks that already differ prove it is no
        # blank, at a 64th of the work; only an image that looks blank at that scale is looked at in full
        means = image.reduce(8).getextrema()
        if any(high - low > BLANK_LEVELS for low, high in ([means] if len(bands) == 1 else means)):
            return None
    extrema = image.getextrema()
    extrema = [extrema] if len(bands) == 1 else extrema
    if all(high - low <= BLANK_LEVELS for low, high in extrema if isinstance(low, (int, float))):
        return "blank image (one colour)"
    return None


def _shown(found: Found) -> Found | Skipped:
    problem = blank_problem(found.image)
    return Skipped(found.source, problem) if problem else found


FILE_EXTENSIONS = {"jpeg": "jpg", "mpo": "jpg", "tiff": "tif", "jpeg2000": "jp2"}


def _frame(
    image: Image.Image, data: bytes, source: str, options: Options, page: int | None, frame: int | None
) -> Found | Skipped:
    """The current frame of an open image -> Found (8 bits, reduced to the working size) or Skipped."""
    width, height = image.size
    if problem := size_problem(width, height, options):
        return Skipped(source, problem)
    fmt = (image.format or "png").lower()
    metadata = phi.metadata_phi(image) if options.phi else None
    if image.format == "JPEG":
        image.draft("RGB", (options.working_size, options.working_size))
    image.load()
    pixels = to_8bit(image, _bits_per_sample(data, image))
    if pixels is image and frame is None:  # the file as it is
        kept = reduce(pixels, options.working_size)
        return _shown(
            Found(
                source,
                page,
                kept,
                width,
                height,
                data if options.keep_encoded else None,
                FILE_EXTENSIONS.get(fmt, fmt),
                format=fmt,
                phi=metadata,
                text_detail=_text_detail(pixels, data, (width, height), kept, options),
            )
        )
    return full_size_found(pixels.copy(), source, page, options, format=fmt, frame=frame, phi=metadata)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def full_size_found(image: Image.Image, source: str, page: int | None, options: Options, **fields) -> Found | Skipped:
    """Found for decoded pixels with no file of their own: kept as PNG for --save-dir, at full size (Skipped when
    the pixels show nothing)."""
    reduced = reduce(image, options.working_size)
    if problem := blank_problem(reduced):
        return Skipped(source, problem)
    encoded = png_bytes(image) if options.keep_encoded else None
    detail = _text_detail(image, None, image.size, reduced, options)
    return Found(source, page, reduced, image.width, image.height, encoded, "png", text_detail=detail, **fields)


def _text_detail(pixels: Image.Image, data: bytes | None, original: tuple, kept: Image.Image, options: Options):
    """--phi: a large file at the size its small text is read at, or None. A JPEG that draft decoded small
    (`pixels` smaller than `original`) is decoded again from `data`, larger, for the text alone: the kept pixels,
    and so p, stay what they are without --phi."""
    if not (options.phi and phi.wants_detail(original, kept.size)):
        return None
    if pixels.size == original:
        return phi.text_detail(pixels)
    with Image.open(io.BytesIO(data)) as again:
        ratio = phi.TEXT_SIDE / max(original)
        again.draft("RGB", (math.ceil(original[0] * ratio), math.ceil(original[1] * ratio)))
        return phi.text_detail(again.convert("RGB"))


def _not_read(kind: str, source: str) -> Skipped:
    if kind == "svg":
        return Skipped(source, "SVG (vector image, not classified)")
    if kind in ("html", "pdf"):
        return Skipped(source, f"not an image ({kind.upper()} content)")
    return Skipped(source, f"not an image ({CONTENT_NAMES[kind]})")


def decode_images(data: bytes, source: str, options: Options, page: int | None = None) -> Iterator[Found | Skipped]:
    """Bytes -> each image in them: one for most files; every page of a multi-page TIFF (`#frame=N`); the
    first frame of an animation, with a record of the frames left out; DICOM by its own rules (`dicom_images`).

    Skipped records say why: SVG, not an image, pixel cap, too small, could not be decoded.
    """
    kind = sniff(data)
    if kind == "dicom":
        yield from dicom_images(data, source, options)
        return
    if kind != "image":
        yield _not_read(kind, source)
        return
    try:
        image = Image.open(io.BytesIO(data))
        frames = getattr(image, "n_frames", 1)
    except Exception as exc:
        yield Skipped(source, f"not a decodable image ({type(exc).__name__})", undecodable=True)
        return
    if image.format == "TIFF" and frames > 1:
        for index in range(frames):
            frame_source = f"{source}#frame={index + 1}"
            if index >= options.max_images:
                yield Skipped(frame_source, f"over --max-images ({options.max_images})")
                continue
            try:
                image.seek(index)
                yield _frame(image, data, frame_source, options, page, index + 1)
            except Exception as exc:
                yield Skipped(frame_source, f"frame could not be decoded ({type(exc).__name__})")
        return
    try:
        image.seek(0)
        yield _frame(image, data, source, options, page, None)
    except Exception as exc:
        yield Skipped(source, f"not a decodable image ({type(exc).__name__}: {first_line(exc)})", undecodable=True)
        return
    if frames > 1 and image.format != "MPO":  # an MPO's second frame is the other eye of a stereo pair
        what = "an animated" if getattr(image, "is_animated", False) else "a multi-frame"
        yield Skipped(source, f"{frames - 1} more frames of {what} {image.format} not classified (only the first is)")


def decode_image(data: bytes, source: str, options: Options, page: int | None = None) -> Found | Skipped:
    """Bytes of one picture (an image in a PDF, a data: URI) -> Found, or Skipped with why."""
    return next(decode_images(data, source, options, page))


# ---------------------------------------------------------------- DICOM


def _quiet_pydicom():
    """pydicom, with its warnings and log lines about odd files kept off stderr (each skip says what is wrong)."""
    import logging
    import warnings

    import pydicom

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom


def dicom_images(data: bytes, source: str, options: Options) -> Iterator[Found | Skipped]:
    """A DICOM file -> its middle frame (or every frame with `all_frames`), as a radiologist's viewer shows it:
    Modality LUT (rescale slope/intercept), then the VOI LUT or window, else a percentile window; MONOCHROME1
    inverted; palette and YBR colour converted to RGB. What cannot be decoded is one Skipped naming the
    transfer syntax."""
    try:
        pydicom = _quiet_pydicom()
    except ImportError:
        yield Skipped(source, "DICOM (pydicom is not installed: pip install pydicom)")
        return
    header = None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if options.phi:
            try:
                header = phi.dicom_phi(ds, dicom_header_cut(ds, len(data)))
            except Exception as exc:
                header = phi.verdict([], error=f"DICOM header could not be read ({first_line(exc)})")
        syntax = ds.file_meta.get("TransferSyntaxUID")
        syntax_name = getattr(syntax, "name", None) or str(syntax or "no transfer syntax")
        if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            kind = ds.get("Modality") or ds.get("SOPClassUID", "")
            yield Skipped(source, f"DICOM without pixel data ({getattr(kind, 'name', kind) or 'no image'})", phi=header)
            return
        if "Rows" not in ds or "Columns" not in ds:
            yield Skipped(source, "DICOM image without Rows and Columns", phi=header)
            return
        width, height = int(ds.Columns), int(ds.Rows)
        declared = ds.get("NumberOfFrames")  # pydicom reads 0 as 1; a file that says 0 has no image to show
        frames = int(declared) if declared not in (None, "") else 1
    except Exception as exc:
        problem = f"DICOM that cannot be read ({first_line(exc)})"
        yield Skipped(source, problem, phi=phi.verdict([], error=problem) if options.phi else None)
        return
    if frames < 1:
        yield Skipped(source, f"DICOM with {frames} frames (transfer syntax {syntax_name})")
        return
    if problem := size_problem(width, height, options):
        yield Skipped(source, problem)
        return
    indexes = range(frames) if options.all_frames else [frames // 2]
    for count, index in enumerate(indexes):
        frame_source = f"{source}#frame={index + 1}" if frames > 1 else source
        if count >= options.max_images:
            yield Skipped(frame_source, f"over --max-images ({options.max_images})")
            continue
        try:
            image = dicom_frame_to_image(ds, index)
        except Exception as exc:
            yield Skipped(
                frame_source,
                f"DICOM whose pixel data cannot be decoded (transfer syntax {syntax_name}: {first_line(exc)})",
                phi=header,
            )
            continue
        yield full_size_found(
            image, frame_source, None, options, format="dicom", frame=index + 1 if frames > 1 else None, phi=header
        )
    if frames > 1 and not options.all_frames:
        yield Skipped(
            source, f"{frames - 1} other frames of a multi-frame DICOM not classified (--all-frames classifies each)"
        )


DEFLATED = "1.2.840.10008.1.2.1.99"  # the dataset is zlib-compressed: its offsets are not the file's


def dicom_header_cut(ds, size: int) -> str | None:
    """Why a parsed DICOM was not read to its end, or None. pydicom stops silently where a file is cut, keeping
    a short last value; a file with neither pixels nor patient attributes (group 0010) says too little to judge."""
    tags = list(ds.keys())
    if not tags:
        return "DICOM header cut before its first attribute"
    last = ds.get_item(tags[-1])
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == DEFLATED
    if not deflated and tell is not None and length not in (None, 0xFFFFFFFF) and tell + length != size:
        return f"DICOM cut at byte {size}, in {last.tag}: what follows was not read"
    if "PixelData" not in ds and not any(tag.group == 0x0010 for tag in tags):
        return "DICOM header without pixel data or patient attributes (a cut file?): what may follow was not read"
    return None


def dicom_frame_to_image(ds, index: int) -> Image.Image:
    """One decoded frame of a DICOM dataset -> an 8-bit grey or RGB PIL image."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

    array = pixel_array(ds, index=index)  # YBR colour comes back as RGB
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if rgb.dtype != np.uint8:  # a 16-bit palette spans 0..65535; stored colour spans its Bits Stored
            bits = 16 if photometric == "PALETTE COLOR" else int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
            rgb = window_to_uint8(rgb, (0, 2**bits - 1))
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if array.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {array.shape}")
    values = apply_modality_lut(array, ds)
    grey = window_to_uint8(values, None if values.dtype == np.uint8 else dicom_window(values, ds))
    if photometric == "MONOCHROME1":  # 0 is white
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _first(value) -> float:
    """The first of a DICOM value that may hold several (a MultiValue), as a float."""
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else value)


def dicom_window(values: np.ndarray, ds) -> tuple[float, float] | None:
    """The file's VOI LUT as a window over Modality-LUT values, else its first window centre/width, else None
    (a percentile window)."""
    try:
        lut = ds.get("VOILUTSequence")
        if lut and lut[0].get("LUTDescriptor") and lut[0].get("LUTData") is not None:
            entries, first_value, _ = lut[0].LUTDescriptor
            return float(first_value), float(first_value + (entries or 65536) - 1)
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is not None and width is not None and _first(width) > 0:
            return _first(center) - _first(width) / 2, _first(center) + _first(width) / 2
    except Exception:
        pass  # a malformed window: the percentile window still shows the image
    return None
