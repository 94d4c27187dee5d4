"""Turn one input (page URL, image or PDF URL, PDF path, image path, folder) into images, safely.

`open_input` yields `Found` images and `Skipped` records (everything found but
not classified, with the reason); a problem with the input as a whole raises
`InputError` with a one-line message. Nothing here knows about the model.
"""
import os
from typing import Iterator

from images import (IMAGE_EXTENSIONS, Found, ImageBudget, InputError, Options, Skipped, decode_image,  # noqa: F401 (re-exported)
                    first_line, sniff)
from pages import FetchError, fetch, find_image_urls, page_images, url_scheme  # noqa: F401
from pdfs import pdf_images

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
