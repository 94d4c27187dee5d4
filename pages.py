"""Web pages: fetching over http(s) safely, finding every image a page shows, downloading them.

The finder is pure (HTML in, URLs out); network access is in `fetch` and `page_images`.
"""
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from images import Found, ImageBudget, Options, Skipped, decode_image, sniff

USER_AGENT = "medical-image-classifier/1.0 (image extraction for classification; python-requests)"
# The attributes lazy-loading scripts read their real URL from, most specific first.
LAZY_SRC_ATTRS = ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-url", "data-hi-res-src",
                  "data-full-src", "data-image", "data-img-src", "data-img", "data-echo", "data-pagespeed-lazy-src",
                  "data-fallback-src", "data-large-file", "data-orig-file")
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-original-set", "data-original-srcset")
BACKGROUND_ATTRS = ("data-bg", "data-background", "data-background-image", "data-bg-src", "data-bgset")
META_IMAGE_KEYS = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image", "twitter:image:src")
MAX_HTML_BYTES = 16 * 1024 * 1024

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

