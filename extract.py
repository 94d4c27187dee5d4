"""Turn one input (page URL, image or PDF URL, PDF path, image path, folder, a site to crawl) into images, safely.

`open_input` yields `Found` images and `Skipped` records (everything found but
not classified, with the reason); a problem with the input as a whole raises
`InputError` with a one-line message. Nothing here knows about the model.
"""

import dataclasses
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from crawl import crawl
from images import (  # noqa: F401
    CONTENT_NAMES,
    IMAGE_EXTENSIONS,
    Finished,
    Found,
    ImageBudget,
    InputError,
    Options,
    Skipped,
    decode_images,
    first_line,
    read_file,
    sniff,
)
from pages import (  # noqa: F401 (re-exported)
    FetchError,
    LocalFolder,
    fetch,
    find_image_urls,
    is_html_response,
    page_images,
    url_scheme,
)
from pdfs import pdf_images

READ_KINDS = ("pdf", "dicom", "image", "svg", "html")  # content the tool reads; anything else is not an input
HEAD_BYTES = 8192  # enough of a file to tell what it is


# ---------------------------------------------------------------- inputs


def _is_page(name: str, kind: str) -> bool:
    """HTML content is a saved page unless the name claims an image or PDF (then it is an error page)."""
    return kind == "html" and not name.lower().endswith(IMAGE_EXTENSIONS)


def _not_read(kind: str) -> str:
    """The one-line problem of content the tool does not read."""
    return f"{CONTENT_NAMES.get(kind, kind)}: not an image, PDF, DICOM or web page"


def _image_items(
    data: bytes, source: str, options: Options, budget: ImageBudget, standalone: bool
) -> Iterator[Found | Skipped]:
    for item in decode_images(data, source, options):
        if standalone and isinstance(item, Skipped) and item.undecodable:
            raise InputError(f"damaged or truncated image: {item.reason}")
        yield budget.admit(item)


def _content_items(
    name: str,
    data: bytes,
    options: Options,
    budget: ImageBudget | None = None,
    standalone: bool = True,
    local: LocalFolder | None = None,
) -> tuple[str, Iterator[Found | Skipped]]:
    """Bytes of one file or URL response -> (kind, items), by content. Content the tool does not read raises
    InputError when `standalone`; in a folder it is one Skipped. HTML here is a saved page (`local` set) or an
    error page."""
    budget = budget or ImageBudget(options.max_images)
    kind = sniff(data)
    if kind == "pdf":
        return "pdf", pdf_images(data, name, options, budget)
    if kind == "html" and local is not None and _is_page(name, kind):
        return "page", page_images(data, Path(os.path.abspath(name)).as_uri(), options, local, budget)
    if kind in ("image", "dicom", "svg"):
        return "image", _image_items(data, name, options, budget, standalone)
    if standalone:
        raise InputError(_not_read(kind))
    return "image", iter([Skipped(name, _not_read(kind))])


def _file_items(
    path: str,
    data: bytes,
    options: Options,
    budget: ImageBudget | None = None,
    standalone: bool = True,
    seen: set | None = None,
    boundary: str | None = None,
) -> tuple[str, Iterator[Found | Skipped]]:
    local = LocalFolder(path, set() if seen is None else seen, boundary)
    return _content_items(path, data, options, budget, standalone, local)


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD_BYTES)


def _folder_items(root: str, options: Options) -> Iterator[Found | Skipped | Finished]:
    """Every file whose content is an image, PDF, DICOM or page, whatever its name; a file named as an image whose
    content is not is listed as skipped; other files are passed over silently. A file a saved page of the folder
    showed is not read again, and a saved page may show any file of the folder given (a mirrored site's ../img/).
    After each file read comes its Finished mark; under --resume the files an earlier run finished are not read."""
    done = (options.done or {}).get("files", {})
    budget, seen = ImageBudget(options.max_images), set()
    budget.used = len((options.done or {}).get("sources", ()))
    for record in done.values():
        seen.update(os.path.realpath(path) for path in [record["file"], *record.get("covers", ())])
    options.announce(sum(len(files) for _, _, files in os.walk(root)) - len(done))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.realpath(path) in seen or not os.path.isfile(path):  # a FIFO or device would block the walk
                continue
            before = set(seen)
            try:
                kind = sniff(_head(path))
                if kind not in READ_KINDS and not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                seen.add(os.path.realpath(path))
                yield from _file_items(path, read_file(path, options), options, budget, False, seen, root)[1]
            except (InputError, OSError) as exc:
                yield Skipped(path, str(exc) if isinstance(exc, InputError) else f"unreadable ({exc.strerror})")
            yield Finished(path, tuple(sorted(seen - before - {os.path.realpath(path)})))


def _raise(error: Exception) -> Iterator:
    raise error
    yield  # a generator, so the error comes where the items would


def input_problem(exc: Exception) -> str:
    """The one-line error of an input that stopped: its InputError's message, or what went unexpectedly wrong."""
    return str(exc) if isinstance(exc, InputError) else f"unexpected {type(exc).__name__}: {first_line(exc)}"


def open_input(text: str, options: Options) -> tuple[str, Iterator[Found | Skipped]]:
    """Input string -> (kind, items). Raises InputError when the input itself is unusable."""
    scheme = url_scheme(text) or ""
    if scheme in ("http", "https") and options.headers and options.header_hosts is None:
        # --header's are for the site the user named, never for the image hosts and redirects it points to
        options = dataclasses.replace(options, header_hosts=frozenset({urlsplit(text).netloc.lower()}))
    if scheme in ("http", "https") and options.crawl_depth > 0:
        return "crawl", crawl(
            text, options, lambda name, data, budget: _content_items(name, data, options, budget, standalone=False)[1]
        )
    if scheme in ("http", "https"):
        try:
            response = fetch(text, options)
        except FetchError as exc:
            return "url", _raise(InputError(str(exc)))
        if is_html_response(response):
            if not _is_page(urlsplit(response.url).path, "html"):  # a .pdf or .png URL that gave a web page
                raise InputError(_not_read("html"))
            return "url", page_images(response.data, response.url, options)
        return _content_items(response.url, response.data, options)
    if len(scheme) > 1 and not os.path.exists(text):
        raise InputError(f"unsupported URL scheme {scheme}: (only http and https, or a local path)")
    if os.path.isdir(text):
        return "folder", _folder_items(text, options)
    if not os.path.isfile(text):
        raise InputError("no such file, folder or URL")
    try:
        data = read_file(text, options)
    except OSError as exc:
        raise InputError(f"unreadable ({exc.strerror})") from None
    return _file_items(text, data, options)
