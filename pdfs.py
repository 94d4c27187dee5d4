"""PDFs: the embedded raster images (not renders of pages), each once, with the page it is first drawn on."""

import itertools
import re
import struct
import time
from typing import Iterator

from PIL import Image

from images import (
    Found,
    ImageBudget,
    InputError,
    Options,
    Skipped,
    decode_image,
    first_line,
    full_size_found,
    size_problem,
)


def _pymupdf():
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    return pymupdf


def open_pdf(data: bytes, password: str | None = None):
    """Open, unlock with the empty password, else with `password`, and refuse what cannot be read, in one line
    each. The password is never part of a message."""
    pymupdf = _pymupdf()
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:
        raise InputError(f"not a readable PDF ({first_line(exc)})") from None
    if doc.needs_pass and not doc.authenticate(""):
        unlocked = bool(password) and doc.authenticate(password)
        if not unlocked:
            doc.close()
            raise InputError(
                "encrypted PDF: the --password given does not open it"
                if password
                else "encrypted PDF that needs a password (--password PASSWORD opens it)"
            )
    try:
        pages = doc.page_count
    except Exception as exc:
        raise InputError(f"damaged PDF ({first_line(exc)})") from None
    if pages == 0:
        doc.close()
        raise InputError("PDF has no pages (damaged or empty)")
    return doc


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


def _xref_image(doc, xref: int, smask: int, filters: str, source: str, page: int, options: Options) -> Found | Skipped:
    """One image XObject, decoded by PIL straight from its JPEG when that is safe, else by MuPDF."""
    jpeg = _plain_jpeg(doc, xref, smask, filters)
    if jpeg is not None:
        found = decode_image(jpeg, source, options, page)
        if isinstance(found, Found):
            return found
    pymupdf = _pymupdf()
    pymupdf.TOOLS.reset_mupdf_warnings()
    pix = pymupdf.Pixmap(doc, xref)
    decode_error = _decode_error(pymupdf.TOOLS.mupdf_warnings())
    if smask:
        if pix.alpha:  # MuPDF may give the image an opaque alpha of its own, which would refuse the mask
            pix = pymupdf.Pixmap(pix, 0)
        try:
            pix = pymupdf.Pixmap(pix, pymupdf.Pixmap(doc, smask))
        except Exception:
            pass  # a mask that does not fit is ignored, the image still shows
    found = full_size_found(
        _pixmap_to_pil(pix),
        source,
        page,
        options,
        format=PDF_FILTER_FORMATS.get(filters, filters.lower().removesuffix("decode") or "raw"),
    )
    if decode_error and isinstance(found, Skipped):  # MuPDF filled what it could not decode: not a blank image
        return Skipped(source, f"damaged image data ({decode_error}); MuPDF drew it blank", undecodable=True)
    return found


def _decode_error(warnings: str) -> str | None:
    """What MuPDF said while decoding one image (its warnings are reset before each): the first line naming an
    error, else the first line (a truncated stream only says "premature end of file"), without 'library error:'."""
    lines = [line.removeprefix("library error: ").strip() for line in warnings.splitlines() if line.strip()]
    return next((line for line in lines if "error" in line), lines[0] if lines else None)


# What a PDF image stream is stored as, by its filter, for the `format` of a result.
PDF_FILTER_FORMATS = {
    "DCTDecode": "jpeg",
    "JPXDecode": "jpeg2000",
    "JBIG2Decode": "jbig2",
    "CCITTFaxDecode": "ccitt",
    "FlateDecode": "flate",
    "RunLengthDecode": "rle",
}


JBIG2_PAGE_INFO = 48
JBIG2_REGIONS = {4, 6, 7, 20, 22, 23, 36, 38, 39, 40, 42, 43}  # segment types whose data starts with a region


def jbig2_declared_size(data: bytes) -> tuple[int, int] | None:
    """The largest bitmap (page or region) the segment headers of an embedded JBIG2 stream declare, read without
    decoding anything: MuPDF spends a minute on a stream that declares 100000x100000 before it gives up."""
    largest, at = None, 0
    while at + 11 <= len(data):
        number, flags, referred = struct.unpack_from(">IBB", data, at)
        at += 6
        count = referred >> 5
        if count == 7:  # the long form: a 4-byte count, then retention bits
            if at + 3 > len(data):
                break
            count = struct.unpack_from(">I", data, at - 1)[0] & 0x1FFFFFFF
            at += 3 + (count + 8) // 8
        at += count * (1 if number <= 256 else 2 if number <= 65536 else 4)
        at += 4 if flags & 0x40 else 1  # page association
        if at + 4 > len(data):
            break
        length = struct.unpack_from(">I", data, at)[0]
        at += 4
        kind = flags & 0x3F
        if (kind == JBIG2_PAGE_INFO or kind in JBIG2_REGIONS) and at + 8 <= len(data):
            width, height = struct.unpack_from(">II", data, at)
            if height == 0xFFFFFFFF:  # a striped page of unknown height: its width alone is known
                height = 1
            if largest is None or width * height > largest[0] * largest[1]:
                largest = (width, height)
        if length == 0xFFFFFFFF:  # an immediate region of unknown length: nothing after it is read here
            break
        at += length
    return largest


def declared_problem(doc, xref: int, filters: str, options: Options) -> str | None:
    """A reason not to decode an image whose stream declares more pixels than the cap, whatever its dictionary says."""
    if filters != "JBIG2Decode":  # a chain of filters: the raw stream is not JBIG2 yet
        return None
    try:
        size = jbig2_declared_size(doc.xref_stream_raw(xref) or b"")
    except Exception:
        return None
    if size and size[0] * size[1] > options.max_pixels:
        return f"JBIG2 image declares a {size[0]}x{size[1]} bitmap, over the pixel cap (not decoded)"
    return None


def parse_pages(text: str) -> tuple[tuple[int, int | None], ...]:
    """'3-10', '1,4,7-', '5' -> ((first, last or None), ...), 1-based and inclusive. Raises ValueError."""
    ranges = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or int(first) < 1 or (last and int(last) < int(first)):
            raise ValueError(f"not a page range: {part!r} (use e.g. 3-10, 1,4,7- or 5)")
        ranges.append((int(first), int(last) if last else (None if dash else int(first))))
    return tuple(ranges)


def selected_pages(ranges: tuple | None, count: int) -> list[int]:
    """0-based page numbers of a document of `count` pages that `ranges` (see parse_pages) select, in order."""
    if not ranges:
        return list(range(count))
    return [n for n in range(count) if any(first <= n + 1 <= (last or count) for first, last in ranges)]


def _inline_images(
    page, seen_digests: set, xobject_sizes: set, options: Options, source: str
) -> Iterator[Found | Skipped]:
    """Inline images (BI ... ID ... EI): listed by get_image_info with xref 0, bytes from the page's image blocks.

    get_image_info also gives xref 0 to XObject images nested in forms; those have
    the size of an XObject of the page and are left to the XObject path.
    """
    pymupdf = _pymupdf()
    infos = [
        i
        for i in page.get_image_info(hashes=True, xrefs=True)
        if i.get("xref") == 0 and (i["width"], i["height"]) not in xobject_sizes
    ]
    results: dict = {}  # number -> item, yielded in drawing order
    for info in infos:
        digest = info.get("digest")
        if digest in seen_digests:
            continue
        seen_digests.add(digest)
        w, h = info["width"], info["height"]
        if min(w, h) < options.min_size:
            results[info["number"]] = Skipped(source, f"inline image smaller than {options.min_size} px ({w}x{h})")
        elif w * h > options.max_pixels:
            results[info["number"]] = Skipped(source, f"inline image over the pixel cap ({w}x{h})")
        else:
            results[info["number"]] = None
    if None in results.values():
        for block in page.get_text("dict", flags=pymupdf.TEXT_PRESERVE_IMAGES)["blocks"]:
            if block.get("type") == 1 and block.get("number") in results and results[block["number"]] is None:
                results[block["number"]] = decode_image(block["image"], source, options, page.number + 1)
    yield from (item for item in results.values() if item is not None)


PDF_REF = re.compile(r"/[^\s/<>\[\]()]+\s+(\d+)\s+0\s+R")


def _key_int(doc, xref: int, key: str) -> int:
    kind, value = doc.xref_get_key(xref, key)
    return int(value.split()[0]) if kind in ("int", "xref") else 0


def _refs(doc, xref: int, key: str) -> list[int]:
    """The object numbers an array or dictionary under `key` refers to (directly or through a reference)."""
    kind, value = doc.xref_get_key(xref, key)
    if kind == "xref":
        target = int(value.split()[0])
        if not doc.xref_is_stream(target):
            value = doc.xref_object(target, compressed=True)
        else:
            return [target]
    elif kind not in ("array", "dict"):
        return []
    return [int(n) for n in re.findall(r"(\d+)\s+0\s+R", value)]


def _appearance_streams(doc, page) -> list[int]:
    """The normal appearance streams (/AP /N) of the page's annotations and form-field widgets that show: the
    current state's (/AS) where there are several, none of a hidden annotation."""
    streams = []
    for annot in _refs(doc, page.xref, "Annots"):
        if _key_int(doc, annot, "F") & 2:  # Hidden
            continue
        kind, value = doc.xref_get_key(annot, "AP/N")
        if kind == "xref":
            streams.append(int(value.split()[0]))
        elif kind == "dict":
            state = doc.xref_get_key(annot, "AS")[1]
            chosen = doc.xref_get_key(annot, f"AP/N{state}") if state.startswith("/") else ("null", "")
            streams += [int(chosen[1].split()[0])] if chosen[0] == "xref" else _refs(doc, annot, "AP/N")
    return streams


DRAW_OPERATOR = re.compile(rb"/([^\s/\[\]<>(){}%]+)\s+Do\b")


def _draw_order(page, listed: list) -> list:
    """The page's images in the order its content stream first draws them (`/Name Do`); those it does not
    draw itself (nested, or in annotations) after them, in the order found.

    Read from the content stream: get_image_info(xrefs=True) would decode and hash every image.
    """
    if len(listed) < 2:
        return listed
    try:
        names = {item[7]: item[0] for item in page.get_images(full=True) if item[-1] == 0}
        content = page.read_contents()
    except Exception:
        return listed
    order: dict = {}
    for name in DRAW_OPERATOR.findall(content):
        xref = names.get(name.decode("latin-1"))
        if xref:
            order.setdefault(xref, len(order))
    ranked = sorted(enumerate(listed), key=lambda pair: order.get(pair[1][0], len(order) + pair[0]))
    return [item for _, item in ranked]


def _page_images(doc, page) -> tuple[list[tuple[int, int, int, int, str]], set]:
    """(xref, smask, width, height, filter) of every image XObject a page draws, and the forms it walked.

    get_images() misses images inside some Form XObjects, patterns and soft-mask
    groups, so those are walked too, their own resources included.
    """
    images = {item[0]: (item[0], item[1], item[2], item[3], item[8]) for item in page.get_images(full=True)}
    stack, visited = [page.xref] + [x[0] for x in page.get_xobjects()] + _appearance_streams(doc, page), set()
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
                    images[ref] = (
                        ref,
                        _key_int(doc, ref, "SMask"),
                        _key_int(doc, ref, "Width"),
                        _key_int(doc, ref, "Height"),
                        doc.xref_get_key(ref, "Filter")[1].lstrip("/"),
                    )
                elif subtype == "/Form" or category == "Pattern":
                    stack.append(ref)
                elif category == "ExtGState" and (group := _key_int(doc, ref, "SMask/G")):
                    stack.append(group)  # a soft-mask group is a form with resources of its own
    return list(images.values()), visited - {page.xref}


# How a draw's matrix (a, b, c, d: where the image's columns and rows go on the page, y down) shows the stored
# pixels: the transpose that turns them the way a reader sees them.
ORIENTATIONS = {
    (True, True): None,  # columns right, rows down: as stored
    (False, True): Image.Transpose.FLIP_LEFT_RIGHT,
    (True, False): Image.Transpose.FLIP_TOP_BOTTOM,
    (False, False): Image.Transpose.ROTATE_180,
}
SWAPPED_ORIENTATIONS = {  # columns run down or up the page
    (True, True): Image.Transpose.TRANSPOSE,  # columns down, rows right
    (False, True): Image.Transpose.ROTATE_90,  # columns up, rows right
    (True, False): Image.Transpose.ROTATE_270,  # columns down, rows left
    (False, False): Image.Transpose.TRANSVERSE,
}


def orientation(a: float, b: float, c: float, d: float) -> Image.Transpose | None:
    """The transpose that shows an image as a draw with this matrix does (None: as stored)."""
    if abs(a) >= abs(b):
        return ORIENTATIONS[(a > 0, d > 0)]
    return SWAPPED_ORIENTATIONS[(b > 0, c > 0)]


def _may_turn_images(streams: list[bytes]) -> bool:
    """Whether a `cm` in these streams flips or turns what it draws: only then are the draws' matrices read
    (get_image_info runs the whole page). Each `cm`'s six operands are read just before it, no regex over the
    whole stream (megabytes of numbers in some PDFs)."""
    for stream in streams:
        at = stream.find(b"cm")
        while at != -1:
            after = stream[at + 2 : at + 3]
            if at and stream[at - 1 : at].isspace() and not (after.isalnum() or after == b"_"):
                try:
                    a, b, c, d = map(float, stream[max(0, at - 160) : at].split()[-6:-2])
                except ValueError:  # not six numbers: not a matrix
                    pass
                else:
                    if a < 0 or d < 0 or b != 0 or c != 0:
                        return True
            at = stream.find(b"cm", at + 2)
    return False


def _content_streams(doc, page, forms: set) -> list[bytes]:
    """The page's content and its forms' streams, decompressed: what draws its images."""
    return [page.read_contents()] + [doc.xref_stream(x) or b"" for x in forms if doc.xref_is_stream(x)]


def _orientations(page, streams: list[bytes]) -> dict:
    """(width, height) -> the transpose of the images of that size the page draws flipped or turned, where every
    draw of that size agrees (an image drawn both ways is kept as stored)."""
    if not _may_turn_images(streams):
        return {}
    by_size: dict = {}
    for info in page.get_image_info():
        by_size.setdefault((info["width"], info["height"]), set()).add(orientation(*info["transform"][:4]))
    return {size: ops.pop() for size, ops in by_size.items() if len(ops) == 1 and None not in ops}


def turned(found: Found, op: Image.Transpose | None) -> Found:
    """The image as the page shows it (its --save-dir file stays as the PDF stores it)."""
    if op is None:
        return found
    found.image = found.image.transpose(op)
    if found.text_detail is not None:
        found.text_detail = found.text_detail.transpose(op)
    if op in SWAPPED_ORIENTATIONS.values():
        found.width, found.height = found.height, found.width
    return found


INLINE_IMAGE_OPERATOR = re.compile(rb"(?:^|[\s>\]])BI[\s/]")


def _draws_inline_images(streams: list[bytes]) -> bool:
    """Whether the page or one of its forms has a BI operator: only then are inline images looked for,
    since listing them decodes every image of the page."""
    return any(INLINE_IMAGE_OPERATOR.search(s) for s in streams)


def _listed_count(doc, numbers) -> int:
    """Images the selected pages list (each once), for the progress bar: nested and inline ones come on top."""
    try:
        return len({item[0] for number in numbers for item in doc[number].get_images(full=True)})
    except Exception:
        return 0


def pdf_images(
    data: bytes, name: str, options: Options, budget: ImageBudget | None = None
) -> Iterator[Found | Skipped]:
    """Embedded raster images of a PDF, annotation appearances included, each once (first page it is drawn on),
    in page order; `name#page=3&image=2` is the second image first drawn on page 3."""
    doc = open_pdf(data, options.password)
    seen_xrefs, seen_digests, smasks = set(), set(), set()
    budget = budget or ImageBudget(options.max_images)
    deadline = time.monotonic() + options.pdf_time_limit
    numbers = selected_pages(options.pages, doc.page_count)
    if not numbers:
        count = doc.page_count
        doc.close()
        raise InputError(f"--pages selects none of the PDF's {count} pages")
    try:
        options.announce(_listed_count(doc, numbers))
        for number in numbers:
            page = doc[number]
            page_source = f"{name}#page={number + 1}"
            counter = itertools.count(1)

            def numbered(item: Found | Skipped, inline: bool = False) -> Found | Skipped:  # this page's only
                index = next(counter)  # noqa: B023
                item.source = f"{page_source}&image={index}"  # noqa: B023
                if isinstance(item, Found):
                    item.index, item.inline = index, inline
                return budget.admit(item)

            if time.monotonic() > deadline:
                raise InputError(
                    f"stopped at page {number + 1} of {doc.page_count} after "
                    f"{options.pdf_time_limit:g} s; the images before it are reported"
                )
            page_deadline = time.monotonic() + options.pdf_page_time_limit
            try:
                listed, forms = _page_images(doc, page)
            except Exception as exc:
                yield Skipped(page_source, f"page could not be read ({first_line(exc)})")
                continue
            smasks.update(item[1] for item in listed if item[1])
            try:
                streams = _content_streams(doc, page, forms)  # read once: for turned images and inline ones
            except Exception:  # read again, and reported, where inline images are looked for
                streams = None
            try:
                turns = _orientations(page, streams) if streams is not None else {}
            except Exception:  # the draws could not be traced: images as stored
                turns = {}
            for xref, smask, width, height, filters in _draw_order(page, listed):
                if xref in seen_xrefs or xref in smasks:
                    continue
                seen_xrefs.add(xref)
                if doc.xref_get_key(xref, "ImageMask")[1] == "true":
                    yield numbered(Skipped(page_source, f"stencil mask ({width}x{height} 1-bit shape, not a picture)"))
                    continue
                if problem := size_problem(width, height, options) or declared_problem(doc, xref, filters, options):
                    yield numbered(Skipped(page_source, problem))
                    continue
                if time.monotonic() > page_deadline:
                    yield numbered(
                        Skipped(
                            page_source,
                            f"page {number + 1} ran past {options.pdf_page_time_limit:g} s:"
                            " its other images are not read",
                        )
                    )
                    continue
                if budget.full:  # checked before decoding, so a 10,000-image PDF is not decoded in vain
                    yield numbered(Skipped(page_source, budget.reason))
                    continue
                try:
                    item = _xref_image(doc, xref, smask, filters, page_source, number + 1, options)
                    if isinstance(item, Found):
                        item = turned(item, turns.get((width, height)))
                except Exception as exc:
                    item = Skipped(page_source, f"image {xref} could not be decoded ({first_line(exc)})")
                yield numbered(item)
            try:
                if _draws_inline_images(streams if streams is not None else _content_streams(doc, page, forms)):
                    xobject_sizes = {(w, h) for _, _, w, h, _ in listed}
                    for item in _inline_images(page, seen_digests, xobject_sizes, options, page_source):
                        yield numbered(item, inline=True)
            except Exception as exc:
                yield Skipped(page_source, f"inline images could not be read ({first_line(exc)})")
    except InputError:
        raise
    except Exception as exc:  # a page tree that breaks while walking it
        raise InputError(f"damaged PDF ({first_line(exc)})") from None
    finally:
        doc.close()
