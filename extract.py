"""Turn one input (page URL, image or PDF URL, PDF path, image path, folder) into images, safely.

`open_input` yields `Found` images and `Skipped` records (everything found but
not classified, with the reason); a problem with the input as a whole raises
`InputError` with a one-line message. Nothing here knows about the model.
"""
import io
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from PIL import Image

USER_AGENT = "medical-image-classifier/1.0 (image extraction for classification; python-requests)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jp2",
                    ".ico", ".jfif")
# The attributes lazy-loading scripts read their real URL from, most specific first.
LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src",
                  "data-full-src", "data-image", "data-img-src", "data-img", "data-echo", "data-pagespeed-lazy-src",
                  "data-fallback-src", "data-large-file", "data-orig-file")
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-original-set", "data-original-srcset")
BACKGROUND_ATTRS = ("data-bg", "data-background", "data-background-image", "data-bg-src", "data-bgset")
META_IMAGE_KEYS = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image", "twitter:image:src")
MAX_HTML_BYTES = 16 * 1024 * 1024

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
    working_size: int = 1024  # decoded images are reduced to this shorter side (the CLI: the model's resize);
    # width/height stay the original's, and JPEGs are decoded at the smallest DCT scale that still covers it


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


def _reduce(image: Image.Image, size: int) -> Image.Image:
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
    return Found(source, page, _reduce(image, options.working_size), width, height,
                 data if options.keep_encoded else None, ext)


# ---------------------------------------------------------------- web

class FetchError(Exception):
    pass


@dataclass
class Response:
    url: str
    content_type: str
    data: bytes


_local = threading.local()


def _session():
    import requests

    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["User-Agent"] = USER_AGENT
    return _local.session


def url_scheme(url: str) -> str | None:
    """The lower-case scheme, '' for none, None for a URL too malformed to split."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return None


def safe_urljoin(base: str, url: str) -> str:
    try:
        return urljoin(base, url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket; reported later as an invalid URL
        return url


def is_http_url(url: str) -> bool:
    return url_scheme(url) in ("http", "https")


def fetch(url: str, options: Options, html_cap: bool = True, dead_hosts: dict | None = None) -> Response:
    """GET with timeouts, a byte cap (streamed, counted), and redirects followed by hand: http(s) only.

    `dead_hosts` (host -> reason) remembers hosts that could not be reached, so a
    page with a hundred images on one dead host waits for it once, not a hundred times.
    """
    import requests
    import urllib3

    deadline = time.monotonic() + options.timeout
    dead_hosts = {} if dead_hosts is None else dead_hosts
    for _ in range(options.max_redirects + 1):
        if not is_http_url(url):
            raise FetchError(f"refused non-http(s) URL {url[:80]}")
        host = urlsplit(url).netloc.lower()
        if host in dead_hosts:
            raise FetchError(dead_hosts[host])
        try:
            response = _session().get(url, stream=True, allow_redirects=False,
                                      timeout=(min(10.0, options.timeout), options.timeout))
        except requests.exceptions.ConnectTimeout:
            dead_hosts[host] = "unreachable (connect timed out)"
            raise FetchError(dead_hosts[host]) from None
        except requests.exceptions.Timeout:
            raise FetchError("timed out") from None
        except requests.exceptions.ConnectionError as exc:
            dead_hosts[host] = f"unreachable ({_short_reason(exc)})"
            raise FetchError(dead_hosts[host]) from None
        except requests.exceptions.RequestException as exc:
            raise FetchError(f"unreachable ({_short_reason(exc)})") from None
        with response:
            if response.is_redirect:
                url = safe_urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code >= 400:
                raise FetchError(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > options.max_bytes:
                raise FetchError(f"response of {int(declared):,} bytes is over the {options.max_bytes:,} byte cap")
            chunks, total, cap = [], 0, options.max_bytes
            while True:  # read1 returns what has arrived, so a trickling server still meets the deadline
                try:
                    chunk = response.raw.read1(64 * 1024, decode_content=True)
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                    raise FetchError(f"download failed ({_short_reason(exc)})") from None
                if not chunk:
                    break
                if not chunks and html_cap and sniff(chunk) == "html":
                    cap = min(cap, MAX_HTML_BYTES)
                chunks.append(chunk)
                total += len(chunk)
                if total > cap:
                    raise FetchError(f"response is over the {cap:,} byte cap")
                if time.monotonic() > deadline:
                    raise FetchError(f"download took longer than {options.timeout:g} s")
            return Response(response.url, response.headers.get("content-type", ""), b"".join(chunks))
    raise FetchError(f"more than {options.max_redirects} redirects")


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for pattern in (r"Name or service not known", r"Connection refused", r"timed out", r"Read timed out"):
        if re.search(pattern, text):
            return pattern.lower()
    return type(exc).__name__


def parse_srcset(value: str) -> list[tuple[str, float]]:
    """srcset -> [(url, width-or-density)], per the HTML parsing rules (URLs may contain commas)."""
    out, i, n = [], 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        start = i
        while i < n and not value[i].isspace():
            i += 1
        url = value[start:i]
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            depth, start = 0, i
            while i < n and (value[i] != "," or depth):
                depth += {"(": 1, ")": -1}.get(value[i], 0)
                i += 1
            descriptor = value[start:i].strip()
        if not url:
            continue
        size = 1.0
        match = re.search(r"(\d+(?:\.\d+)?)\s*([wx])", descriptor)
        if match:
            size = float(match.group(1)) * (1 if match.group(2) == "w" else 1000)
        out.append((url, size))
    return out


def largest_candidate(srcset: str) -> str | None:
    candidates = parse_srcset(srcset)
    return max(candidates, key=lambda c: c[1])[0] if candidates else None


CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"]*))\s*\)""", re.I)
CSS_IMAGE_DECL = re.compile(r"(?:background(?:-image)?|list-style(?:-image)?|border-image(?:-source)?|content)\s*:"
                            r"([^;}]*)", re.I)


def css_urls(text: str) -> list[str]:
    """Every url(...) in a CSS value, quoted or not."""
    return [next(g for g in m.groups() if g is not None) for m in CSS_URL.finditer(text)]


def css_image_urls(css: str) -> list[str]:
    """url(...)s of the declarations that paint images (backgrounds, list bullets, borders, content)."""
    return [url for decl in CSS_IMAGE_DECL.finditer(css) for url in css_urls(decl.group(1))]


def find_image_urls(html: str | bytes, base_url: str) -> list[str]:
    """Every image a reader of the page sees, as absolute URLs (or data: URIs), in page order, deduplicated.

    Pure: no network. Non-http(s) URLs are kept so the caller can report them as skipped.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    base = soup.find("base", href=True)
    if base and base["href"].strip():
        resolved = safe_urljoin(base_url, base["href"].strip())
        base_url = resolved if is_http_url(resolved) else base_url  # a base of another scheme resolves nothing
    raw: list[str] = []

    for meta in soup.find_all("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key in META_IMAGE_KEYS and meta.get("content"):
            raw.append(meta["content"])
    for link in soup.find_all("link", href=True):
        rel = " ".join(link.get("rel") or []).lower()
        if rel == "image_src":
            raw.append(link["href"])

    for tag in soup.find_all(True):
        name = tag.name
        attrs = tag.attrs
        if name == "img" or name == "source" or name == "input" and (attrs.get("type") or "").lower() == "image":
            lazy = [attrs[a] for a in LAZY_SRC_ATTRS if isinstance(attrs.get(a), str) and attrs[a].strip()]
            lazy += [c for a in LAZY_SRCSET_ATTRS if isinstance(attrs.get(a), str)
                     for c in [largest_candidate(attrs[a])] if c]
            raw += lazy
            srcset = attrs.get("srcset")
            if isinstance(srcset, str) and (best := largest_candidate(srcset)):
                raw.append(best)
            src = attrs.get("src")
            if isinstance(src, str) and src.strip() and not (lazy and src.strip().startswith("data:")):
                raw.append(src)
        elif name == "video" and isinstance(attrs.get("poster"), str):
            raw.append(attrs["poster"])
        elif name == "image" and isinstance(attrs.get("href") or attrs.get("xlink:href"), str):
            raw.append(attrs.get("href") or attrs.get("xlink:href"))
        elif name == "style" and tag.string:
            raw += css_image_urls(tag.string)
        for a in BACKGROUND_ATTRS:
            value = attrs.get(a)
            if isinstance(value, str) and value.strip():
                urls = css_urls(value)
                raw += urls or ([largest_candidate(value)] if a == "data-bgset" else [value])
        style = attrs.get("style")
        if isinstance(style, str) and "url(" in style:
            raw += css_image_urls(style)

    seen, out = set(), []
    for url in raw:
        url = (url or "").strip()
        if not url or url.startswith("#"):
            continue
        absolute = url if url.lower().startswith("data:") else safe_urljoin(base_url, url)
        absolute = absolute.split("#")[0].strip() if not absolute.lower().startswith("data:") else absolute
        if absolute and absolute not in seen:
            seen.add(absolute)
            out.append(absolute)
    return out


def decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.lower().endswith(";base64"):
        import base64

        return base64.b64decode(payload + "=" * (-len(payload) % 4))
    return unquote_to_bytes(payload)


def bounded_map(function, items: Iterable, workers: int) -> Iterator:
    """map() on a thread pool that keeps at most 2*workers results waiting, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _download_image(url: str, page_url: str, index: int, options: Options, dead_hosts: dict) -> Found | Skipped:
    if url.lower().startswith("data:"):
        source = f"{page_url}#data-uri-{index}"
        if not url.lower().startswith("data:image/"):
            return Skipped(source, "data: URI that is not an image")
        try:
            data = decode_data_uri(url)
        except Exception:
            return Skipped(source, "undecodable data: URI")
        return decode_image(data, source, options)
    if not is_http_url(url):
        scheme = url_scheme(url)
        return Skipped(url[:200], "invalid URL" if scheme is None else
                       f"unsupported URL scheme {scheme or '(none)'}: (only http and https)")
    try:
        response = fetch(url, options, html_cap=False, dead_hosts=dead_hosts)
    except FetchError as exc:
        return Skipped(url, f"download failed: {exc}")
    return decode_image(response.data, url, options)


def page_images(html: bytes, page_url: str, options: Options) -> Iterator[Found | Skipped]:
    urls = find_image_urls(html, page_url)
    budget, dead_hosts = ImageBudget(options.max_images), {}
    # The cap applies to candidate URLs here, so images past it are never downloaded.
    yield from bounded_map(lambda pair: _download_image(pair[1], page_url, pair[0], options, dead_hosts),
                           enumerate(urls[:budget.limit]), options.workers)
    for url in urls[budget.limit:]:
        yield Skipped(url[:200], budget.reason)


# ---------------------------------------------------------------- PDF

def _pymupdf():
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    return pymupdf


def open_pdf(data: bytes):
    """Open, unlock with the empty password if needed, and refuse what cannot be read, in one line each."""
    pymupdf = _pymupdf()
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:
        raise InputError(f"not a readable PDF ({first_line(exc)})") from None
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise InputError("encrypted PDF that needs a password")
    try:
        pages = doc.page_count
    except Exception as exc:
        raise InputError(f"damaged PDF ({first_line(exc)})") from None
    if pages == 0:
        doc.close()
        raise InputError("PDF has no pages (damaged or empty)")
    return doc


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _pixmap_to_pil(pix) -> Image.Image:
    pymupdf = _pymupdf()
    if pix.colorspace is None:  # alpha-only pixmap: show it as grey
        return Image.frombytes("L", (pix.width, pix.height), pix.samples)
    if pix.colorspace.n not in (1, 3):
        pix = pymupdf.Pixmap(pymupdf.csRGB, pix)
    mode = {(1, 0): "L", (1, 1): "LA", (3, 0): "RGB", (3, 1): "RGBA"}[(pix.colorspace.n, int(pix.alpha))]
    return Image.frombytes(mode, (pix.width, pix.height), pix.samples)


def _plain_jpeg(doc, xref: int, smask: int, filters: str) -> bytes | None:
    """The JPEG file of an image PIL can decode as is (grey or RGB, no mask, no Decode array), else None."""
    if smask or filters != "DCTDecode" or doc.xref_get_key(xref, "Decode")[0] != "null":
        return None
    raw = doc.extract_image(xref)
    return raw["image"] if raw and raw.get("ext") == "jpeg" and raw.get("colorspace") in (1, 3) else None


def _xref_image(doc, xref: int, smask: int, filters: str, source: str, page: int,
                options: Options) -> Found | Skipped:
    """One image XObject, decoded by PIL straight from its JPEG when that is safe, else by MuPDF."""
    jpeg = _plain_jpeg(doc, xref, smask, filters)
    if jpeg is not None:
        found = decode_image(jpeg, source, options, page)
        if isinstance(found, Found):
            return found
    pymupdf = _pymupdf()
    pix = pymupdf.Pixmap(doc, xref)
    if smask:
        try:
            pix = pymupdf.Pixmap(pix, pymupdf.Pixmap(doc, smask))
        except Exception:
            pass  # a mask that does not fit is ignored, the image still shows
    image = _pixmap_to_pil(pix)
    encoded, ext = None, "png"
    if options.keep_encoded:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded = buffer.getvalue()
    return Found(source, page, _reduce(image, options.working_size), image.width, image.height, encoded, ext)


def _inline_images(page, seen_digests: set, xobject_sizes: set, options: Options,
                   source: str) -> Iterator[Found | Skipped]:
    """Inline images (BI ... ID ... EI): listed by get_image_info with xref 0, bytes from the page's image blocks.

    get_image_info also gives xref 0 to XObject images nested in forms; those have
    the size of an XObject of the page and are left to the XObject path.
    """
    pymupdf = _pymupdf()
    infos = [i for i in page.get_image_info(hashes=True, xrefs=True)
             if i.get("xref") == 0 and (i["width"], i["height"]) not in xobject_sizes]
    wanted = {}
    for info in infos:
        digest = info.get("digest")
        if digest in seen_digests:
            continue
        seen_digests.add(digest)
        w, h = info["width"], info["height"]
        if min(w, h) < options.min_size:
            yield Skipped(source, f"inline image smaller than {options.min_size} px ({w}x{h})")
        elif w * h > options.max_pixels:
            yield Skipped(source, f"inline image over the pixel cap ({w}x{h})")
        else:
            wanted[info["number"]] = info
    if not wanted:
        return
    blocks = page.get_text("dict", flags=pymupdf.TEXT_PRESERVE_IMAGES)["blocks"]
    for block in blocks:
        if block.get("type") != 1 or block.get("number") not in wanted:
            continue
        found = decode_image(block["image"], source, options, page.number + 1)
        if isinstance(found, Found):
            found.source = f"{source} (inline image {block['number']})"
        yield found


PDF_REF = re.compile(r"/[^\s/<>\[\]()]+\s+(\d+)\s+0\s+R")


def _key_int(doc, xref: int, key: str) -> int:
    kind, value = doc.xref_get_key(xref, key)
    return int(value.split()[0]) if kind in ("int", "xref") else 0


def _page_images(doc, page) -> tuple[list[tuple[int, int, int, int, str]], set]:
    """(xref, smask, width, height, filter) of every image XObject a page draws, and the forms it walked.

    get_images() misses images inside some Form XObjects, patterns and soft-mask
    groups, so those are walked too, their own resources included.
    """
    images = {item[0]: (item[0], item[1], item[2], item[3], item[8]) for item in page.get_images(full=True)}
    stack, visited = [page.xref] + [x[0] for x in page.get_xobjects()], set()
    while stack:
        holder = stack.pop()
        if holder in visited:
            continue
        visited.add(holder)
        for category in ("XObject", "Pattern", "ExtGState"):
            kind, value = doc.xref_get_key(holder, f"Resources/{category}")
            if kind == "xref":
                value = doc.xref_object(int(value.split()[0]), compressed=True)
            elif kind != "dict":
                continue
            for ref in map(int, PDF_REF.findall(value)):
                subtype = doc.xref_get_key(ref, "Subtype")[1]
                if subtype == "/Image" and ref not in images:
                    images[ref] = (ref, _key_int(doc, ref, "SMask"), _key_int(doc, ref, "Width"),
                                   _key_int(doc, ref, "Height"), doc.xref_get_key(ref, "Filter")[1].lstrip("/"))
                elif subtype == "/Form" or category == "Pattern":
                    stack.append(ref)
                elif category == "ExtGState" and (group := _key_int(doc, ref, "SMask/G")):
                    stack.append(group)  # a soft-mask group is a form with resources of its own
    return list(images.values()), visited - {page.xref}


INLINE_IMAGE_OPERATOR = re.compile(rb"(?:^|[\s>\]])BI[\s/]")


def _draws_inline_images(doc, page, forms: set) -> bool:
    """Whether the page or one of its forms has a BI operator: only then are inline images looked for,
    since listing them decodes every image of the page."""
    streams = [page.read_contents()] + [doc.xref_stream(x) or b"" for x in forms if doc.xref_is_stream(x)]
    return any(INLINE_IMAGE_OPERATOR.search(s) for s in streams)


def pdf_images(data: bytes, name: str, options: Options, budget: ImageBudget | None = None
               ) -> Iterator[Found | Skipped]:
    """Embedded raster images of a PDF, each once (first page it appears on), in page order."""
    doc = open_pdf(data=data)
    seen_xrefs, seen_digests, smasks = set(), set(), set()
    budget = budget or ImageBudget(options.max_images)
    deadline = time.monotonic() + options.pdf_time_limit
    try:
        for page in doc:
            source = f"{name}#page={page.number + 1}"
            if time.monotonic() > deadline:
                raise InputError(f"stopped at page {page.number + 1} of {doc.page_count} after "
                                 f"{options.pdf_time_limit:g} s; the images before it are reported")
            try:
                listed, forms = _page_images(doc, page)
            except Exception as exc:
                yield Skipped(source, f"page could not be read ({first_line(exc)})")
                continue
            smasks.update(item[1] for item in listed if item[1])
            for xref, smask, width, height, filters in listed:
                if xref in seen_xrefs or xref in smasks:
                    continue
                seen_xrefs.add(xref)
                if doc.xref_get_key(xref, "ImageMask")[1] == "true":
                    yield Skipped(source, f"stencil mask ({width}x{height} 1-bit shape, not a picture)")
                    continue
                if min(width, height) < options.min_size:
                    yield Skipped(source, f"smaller than {options.min_size} px ({width}x{height})")
                    continue
                if width * height > options.max_pixels:
                    yield Skipped(source, f"over the pixel cap ({width}x{height} > {options.max_pixels:,} pixels)")
                    continue
                if budget.full:  # checked before decoding, so a 10,000-image PDF is not decoded in vain
                    yield Skipped(source, budget.reason)
                    continue
                try:
                    item = _xref_image(doc, xref, smask, filters, source, page.number + 1, options)
                except Exception as exc:
                    item = Skipped(source, f"image {xref} could not be decoded ({first_line(exc)})")
                yield budget.admit(item)
            try:
                if _draws_inline_images(doc, page, forms):
                    xobject_sizes = {(w, h) for _, _, w, h, _ in listed}
                    for item in _inline_images(page, seen_digests, xobject_sizes, options, source):
                        yield budget.admit(item)
            except Exception as exc:
                yield Skipped(source, f"inline images could not be read ({first_line(exc)})")
    except InputError:
        raise
    except Exception as exc:  # a page tree that breaks while walking it
        raise InputError(f"damaged PDF ({first_line(exc)})") from None
    finally:
        doc.close()


# ---------------------------------------------------------------- inputs

def _file_items(path: str, data: bytes, options: Options, budget: ImageBudget | None = None
                ) -> tuple[str, Iterator[Found | Skipped]]:
    budget = budget or ImageBudget(options.max_images)
    if sniff(data) == "pdf":
        return "pdf", pdf_images(data, path, options, budget)
    return "image", iter([budget.admit(decode_image(data, path, options))])


def _read_file(path: str, options: Options) -> bytes:
    size = os.path.getsize(path)
    if size > options.max_bytes * 4:
        raise InputError(f"file of {size:,} bytes is over the {options.max_bytes * 4:,} byte cap")
    with open(path, "rb") as f:
        return f.read()


def _folder_items(root: str, options: Options) -> Iterator[Found | Skipped]:
    budget = ImageBudget(options.max_images)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not (name.lower().endswith(IMAGE_EXTENSIONS + (".pdf", ".svg"))):
                continue
            try:
                yield from _file_items(path, _read_file(path, options), options, budget)[1]
            except (InputError, OSError) as exc:
                yield Skipped(path, str(exc) if isinstance(exc, InputError) else f"unreadable ({exc.strerror})")


def _raise(error: Exception) -> Iterator:
    raise error
    yield  # a generator, so the error comes where the items would


def open_input(text: str, options: Options) -> tuple[str, Iterator[Found | Skipped]]:
    """Input string -> (kind, items). Raises InputError when the input itself is unusable."""
    scheme = url_scheme(text) or ""
    if scheme in ("http", "https"):
        try:
            response = fetch(text, options)
        except FetchError as exc:
            return "url", _raise(InputError(str(exc)))
        kind = sniff(response.data)
        if kind == "pdf":
            return "pdf", pdf_images(response.data, response.url, options)
        if kind == "html" or "html" in response.content_type.lower():
            return "url", page_images(response.data, response.url, options)
        return "image", iter([decode_image(response.data, response.url, options)])
    if len(scheme) > 1 and not os.path.exists(text):
        raise InputError(f"unsupported URL scheme {scheme}: (only http and https, or a local path)")
    if os.path.isdir(text):
        return "folder", _folder_items(text, options)
    if not os.path.isfile(text):
        raise InputError("no such file, folder or URL")
    try:
        data = _read_file(text, options)
    except OSError as exc:
        raise InputError(f"unreadable ({exc.strerror})") from None
    return _file_items(text, data, options)
