"""Web pages: fetching over http(s) safely, finding every image a page shows, downloading them.

The finder is pure (HTML in, URLs out); network access is in `fetch` and `page_images`.
"""
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import quote, unquote, unquote_to_bytes, urljoin, urlsplit
from urllib.request import url2pathname

from images import (IMAGE_EXTENSIONS, Found, ImageBudget, InputError, Options, Skipped, decode_images,
                    read_file, sniff)

USER_AGENT = "medical-image-classifier/1.0 (image extraction for classification; python-requests)"
# The attributes lazy-loading scripts read their real URL from, most specific first.
LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src",
                  "data-full-src", "data-image", "data-img-src", "data-img", "data-echo", "data-pagespeed-lazy-src",
                  "data-fallback-src", "data-large-file", "data-orig-file")
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-original-set", "data-original-srcset")
BACKGROUND_ATTRS = ("data-bg", "data-background", "data-background-image", "data-bg-src", "data-bgset")
META_IMAGE_KEYS = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image", "twitter:image:src")
MAX_HTML_BYTES = 16 * 1024 * 1024
# Content types a link may be served with to count as a link to an image (octet-stream: the bytes decide).
IMAGE_TYPES = ("image/", "application/dicom", "application/octet-stream")

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


def fetch(url: str, options: Options, html_cap: bool = True, dead_hosts: dict | None = None,
          images_only: bool = False) -> Response:
    """GET with timeouts, a byte cap (streamed, counted), and redirects followed by hand: http(s) only.
    `images_only`: a response served as something other than an image is refused before its body is read (a link
    that may lead to an image, or to an article).

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
            served = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if images_only and served and not served.startswith(IMAGE_TYPES):
                raise FetchError(f"served as {served[:60]}, not an image")
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


@dataclass
class PageImage:
    """One picture a page shows: the URL read for it (its largest candidate), the element's other candidates in
    the order they are tried when that one gives no image, and the larger image an enclosing link leads to, if
    any (`link_is_image`: the link's name says image; otherwise only its response can)."""
    url: str
    link: str | None = None
    link_is_image: bool = False
    fallbacks: tuple = ()


def _urlish(value: str) -> bool:
    """Whether an attribute holds a URL (lazy-loading scripts also keep JSON and templates there)."""
    value = value.strip()
    return bool(value) and not value.startswith(("{", "[", "<")) and " " not in value


def _element_candidates(elements: list[dict]) -> list[str]:
    """The URLs an <img> (with the <source>s of its <picture>) may show, best first: srcset candidates (lazy ones
    included) largest first, then lazy-loading attributes, then `src`; data: placeholders after every real URL."""
    sized, lazy, plain = [], [], []
    for attrs in elements:
        for a in ("srcset",) + LAZY_SRCSET_ATTRS:
            if isinstance(attrs.get(a), str):
                sized += parse_srcset(attrs[a])
        lazy += [attrs[a] for a in LAZY_SRC_ATTRS if isinstance(attrs.get(a), str) and _urlish(attrs[a])]
        if isinstance(attrs.get("src"), str) and attrs["src"].strip():
            plain.append(attrs["src"])
    ordered = [u for u, _ in sorted(sized, key=lambda c: -c[1])] + lazy + plain
    return sorted(ordered, key=lambda u: u.strip().lower().startswith("data:"))  # stable: real URLs first


def _enclosing_link(tag) -> str | None:
    """The href of the <a> around an image when that link holds only this one image."""
    anchor = tag.find_parent("a", href=True)
    if anchor is None or len(anchor.find_all("img")) != 1:
        return None
    href = anchor["href"].strip()
    return href if href and not href.startswith(("#", "javascript:", "mailto:", "data:")) else None


def find_images(html: str | bytes, base_url: str) -> list[PageImage]:
    """Every picture a reader of the page sees, once each, as absolute URLs (or data: URIs), in page order.

    Pure: no network. Non-http(s) URLs are kept so the caller can report them as skipped.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    base = soup.find("base", href=True)
    if base and base["href"].strip():
        resolved = safe_urljoin(base_url, base["href"].strip())
        base_url = resolved if is_http_url(resolved) else base_url  # a base of another scheme resolves nothing
    raw: list[tuple[list[str], str | None]] = []  # (candidates of one picture, best first; enclosing link)

    for meta in soup.find_all("meta"):
        key = (meta.get("property") or meta.get("name") or "").strip().lower()
        if key in META_IMAGE_KEYS and meta.get("content"):
            raw.append(([meta["content"]], None))
    for link in soup.find_all("link", href=True):
        rel = " ".join(link.get("rel") or []).lower()
        if rel == "image_src":
            raw.append(([link["href"]], None))

    in_pictures: set = set()  # the <source>s and <img> of a <picture>: one picture, read with it
    for tag in soup.find_all(True):
        name = tag.name
        attrs = tag.attrs
        if id(tag) in in_pictures:
            pass
        elif name == "picture":
            parts = tag.find_all(["source", "img"])
            in_pictures.update(id(part) for part in parts)
            candidates = _element_candidates([part.attrs for part in parts])
            if candidates:
                raw.append((candidates, _enclosing_link(tag)))
        elif name == "img" or name == "source" or name == "input" and (attrs.get("type") or "").lower() == "image":
            candidates = _element_candidates([attrs])
            if candidates:
                raw.append((candidates, _enclosing_link(tag) if name == "img" else None))
        elif name == "video" and isinstance(attrs.get("poster"), str):
            raw.append(([attrs["poster"]], None))
        elif name == "image" and isinstance(attrs.get("href") or attrs.get("xlink:href"), str):
            raw.append(([attrs.get("href") or attrs.get("xlink:href")], None))
        elif name == "style" and tag.string:
            raw += [([u], None) for u in css_image_urls(tag.string)]
        for a in BACKGROUND_ATTRS:
            value = attrs.get(a)
            if isinstance(value, str) and value.strip():
                urls = css_urls(value)
                raw += [([u], None) for u in urls or ([largest_candidate(value)] if a == "data-bgset" else [value])]
        style = attrs.get("style")
        if isinstance(style, str) and "url(" in style:
            raw += [([u], None) for u in css_image_urls(style)]

    seen, out = set(), []
    for candidates, link in raw:
        urls = list(dict.fromkeys(u for u in (_absolute(c, base_url) for c in candidates) if u))
        absolute = urls[0] if urls else None
        if not absolute:
            continue
        target = _absolute(link, base_url) if link else None
        if target in seen or target == absolute or url_scheme(target or "") not in ("http", "https", "file"):
            target = None
        if absolute in seen and not target:  # a thumbnail seen before still counts when it links elsewhere
            continue
        seen.add(absolute)
        if target:
            seen.add(target)
        is_image = bool(target) and urlsplit(target).path.lower().endswith(IMAGE_EXTENSIONS)
        out.append(PageImage(absolute, target, is_image, tuple(urls[1:])))
    return out


def _absolute(url: str | None, base_url: str) -> str | None:
    """A page's URL made absolute, without its fragment; data: URIs as they are; None for nothing."""
    url = (url or "").strip()
    if not url or url.startswith("#"):
        return None
    if url.lower().startswith("data:"):
        return url
    absolute = safe_urljoin(base_url, url).split("#")[0].strip()
    # as a browser requests it: characters outside ASCII percent-encoded (UTF-8)
    return re.sub(r"[^\x21-\x7e]+", lambda m: quote(m.group()), absolute) or None


def find_image_urls(html: str | bytes, base_url: str) -> list[str]:
    """The URL each picture of the page shows (see `find_images`)."""
    return [image.url for image in find_images(html, base_url)]


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


@dataclass
class LocalFolder:
    """A saved page (`page`, its path as given) and its folder: its file: images are read from disk, inside this
    folder tree only, each file once (`seen` holds the real paths read, shared with a folder walk that holds the
    page), and named by their path as the page's path was given."""
    page: str
    seen: set = field(default_factory=set)

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(self.page))

    def name(self, url: str) -> str:
        path = url2pathname(unquote(urlsplit(url).path))
        inside = os.path.relpath(path, self.root)
        return path if inside.startswith(os.pardir) else os.path.join(os.path.dirname(self.page), inside)

    def read_already(self, url: str) -> bool:
        return url_scheme(url) == "file" and self._path(url) in self.seen

    def _path(self, url: str) -> str:
        return os.path.realpath(url2pathname(unquote(urlsplit(url).path)))

    def read(self, url: str, options: Options) -> bytes | None:
        """The file's bytes, or None when it was read already. Raises FetchError."""
        path = self._path(url)
        if os.path.commonpath([path, os.path.realpath(self.root)]) != os.path.realpath(self.root):
            raise FetchError("outside the saved page's folder (not read)")
        if path in self.seen:
            return None
        try:
            data = read_file(path, options)
            if sniff(data) not in ("html", "pdf"):  # a linked page or PDF is still read by a folder walk
                self.seen.add(path)
            return data
        except InputError as exc:
            raise FetchError(str(exc)) from None
        except OSError as exc:
            raise FetchError(f"unreadable ({exc.strerror})") from None


def _read_image_url(url: str, options: Options, dead_hosts: dict, local: LocalFolder | None,
                    images_only: bool = False) -> bytes | None:
    """The bytes of an image URL: http(s), or a file: URL of a saved page (None: read already). Raises FetchError."""
    if local is not None and url_scheme(url) == "file":
        return local.read(url, options)
    if not is_http_url(url):
        scheme = url_scheme(url)
        raise FetchError("invalid URL" if scheme is None else
                         f"unsupported URL scheme {scheme or '(none)'}: (only http and https)")
    return fetch(url, options, html_cap=False, dead_hosts=dead_hosts, images_only=images_only).data


def _source(url: str, local: "LocalFolder | None") -> str:
    """How a page image is named in results: its URL, or for a saved page's own file its path."""
    if local is not None and url_scheme(url) == "file":
        return local.name(url)
    return url[:200] if not is_http_url(url) else url


def _read_candidate(url: str, page_url: str, index: int, options: Options, dead_hosts: dict,
                    local: LocalFolder | None, images_only: bool = False) -> list[Found | Skipped]:
    """One URL (or data: URI) of a picture -> its items; [] when a saved page's file was read already."""
    if url.lower().startswith("data:"):
        source = f"{local.page if local else page_url}#data-uri-{index}"
        if not url.lower().startswith("data:image/"):
            return [Skipped(source, "data: URI that is not an image")]
        try:
            data = decode_data_uri(url)
        except Exception:
            return [Skipped(source, "undecodable data: URI")]
        return list(decode_images(data, source, options))
    try:
        data = _read_image_url(url, options, dead_hosts, local, images_only)
    except FetchError as exc:
        reason = str(exc)
        refused = reason == "invalid URL" or reason.startswith(("unsupported URL", "outside"))
        return [Skipped(_source(url, local), reason if refused else f"download failed: {reason}")]
    return [] if data is None else list(decode_images(data, _source(url, local), options))


def _download_image(image: "PageImage | str", page_url: str, index: int, options: Options, dead_hosts: dict,
                    local: LocalFolder | None = None) -> list[Found | Skipped]:
    """One picture of a page -> its items: through its link when that leads to an image, else its best
    candidate, else the next candidate that gives an image (the best one's problem is reported when none does)."""
    image = image if isinstance(image, PageImage) else PageImage(image)
    notes = []
    if image.link:
        items = _read_candidate(image.link, page_url, index, options, dead_hosts, local,
                                images_only=not image.link_is_image)
        if any(isinstance(item, Found) for item in items):
            for item in items:
                if isinstance(item, Found):
                    item.thumbnail = _source(image.url, local)
            return items
        if image.link_is_image and items:  # a link named as an image that does not give one is worth a line
            notes.append(Skipped(items[0].source, f"linked image: {items[0].reason}; the thumbnail is classified "
                                                  "instead"))
    first = None
    for url in (image.url,) + image.fallbacks:
        items = _read_candidate(url, page_url, index, options, dead_hosts, local)
        if any(isinstance(item, Found) for item in items):
            return notes + items
        first = items if first is None else first
    return notes + (first or [])


def page_images(html: bytes, page_url: str, options: Options, local: LocalFolder | None = None,
                budget: ImageBudget | None = None) -> Iterator[Found | Skipped]:
    """Every picture of a page, downloaded on a bounded thread pool. For a saved page (`page_url` a file: URL),
    `local` is its folder: its file: images are read from disk inside that folder only. `budget`: --max-images
    shared with the folder the page is in."""
    pictures = find_images(html, page_url)
    budget, dead_hosts = budget or ImageBudget(options.max_images), {}
    room = max(budget.limit - budget.used, 0)
    options.announce(len(pictures))
    # The cap applies to candidate pictures here, so those past it are never downloaded.
    for items in bounded_map(lambda pair: _download_image(pair[1], page_url, pair[0], options, dead_hosts, local),
                             enumerate(pictures[:room]), options.workers):
        for item in items:
            yield budget.admit(item)
    for picture in pictures[room:]:
        if not (local and local.read_already(picture.url)):  # a folder's file listed already
            yield Skipped(_source(picture.link or picture.url, local), budget.reason)
