"""Web pages: fetching over http(s) safely, finding every image a page shows, downloading them.

The finder is pure (HTML in, URLs out); network access is in `fetch` and `page_images`.
"""

import email.utils
import os
import re
import ssl
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, unquote, unquote_to_bytes, urljoin, urlsplit
from urllib.request import url2pathname

from images import (  # noqa: F401
    IMAGE_EXTENSIONS,
    USER_AGENT,
    Found,
    ImageBudget,
    InputError,
    Options,
    Skipped,
    decode_images,
    read_file,
    sniff,
)

# The attributes lazy-loading scripts read their real URL from, most specific first.
LAZY_SRC_ATTRS = (
    "data-src",
    "data-lazy-src",
    "data-original",
    "data-lazy",
    "data-url",
    "data-hi-res-src",
    "data-full-src",
    "data-image",
    "data-img-src",
    "data-img",
    "data-echo",
    "data-pagespeed-lazy-src",
    "data-fallback-src",
    "data-large-file",
    "data-orig-file",
)
LAZY_SRCSET_ATTRS = ("data-srcset", "data-lazy-srcset", "data-original-set", "data-original-srcset")
BACKGROUND_ATTRS = ("data-bg", "data-background", "data-background-image", "data-bg-src", "data-bgset")
META_IMAGE_KEYS = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image", "twitter:image:src")
# Content types a link may be served with to count as a link to an image (octet-stream: the bytes decide).
IMAGE_TYPES = ("image/", "application/dicom", "application/octet-stream")
# Retries: waits of 0.5, 1, 2 s ... (or the server's Retry-After, when longer), all inside the download's --timeout.
BACKOFF_S = 0.5
MAX_RETRY_AFTER_S = 60.0  # a server asking for a longer wait is given up on at once
MIN_TRY_S = 0.5  # a try with less time left than this is not worth starting


class FetchError(Exception):
    """A download that failed, in one line. `transient`: worth another try (a connection that failed, a timeout,
    429, 5xx); `host_down`: the host cannot be reached at all (other URLs of it fail alike); `wait`: the seconds
    the server's Retry-After asks for; `status`: the HTTP status of a refused response."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        host_down: bool = False,
        wait: float | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.transient, self.host_down, self.wait, self.status = transient, host_down, wait, status


@dataclass
class Response:
    url: str
    content_type: str
    data: bytes


_local = threading.local()


def _session():
    """One session a thread (connections kept alive). Its trust_env stays on: HTTP(S)_PROXY, NO_PROXY and
    REQUESTS_CA_BUNDLE from the environment apply; headers and certificate checks come with each request."""
    import requests

    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def request_headers(options: Options, url: str) -> dict:
    """The User-Agent, then --header's (a header of the same name, in any case, replaces it), the latter only to
    the hosts they are meant for: a token for a site must not reach the image hosts and redirects it points to."""
    meant = options.header_hosts is None or urlsplit(url).netloc.lower() in options.header_hosts
    return {"User-Agent": options.user_agent, **(options.headers if meant else {})}


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


def fetch(
    url: str,
    options: Options,
    html_cap: bool = True,
    dead_hosts: dict | None = None,
    images_only: bool = False,
    refuse_redirect: Callable[[str], str | None] | None = None,
) -> Response:
    """GET with timeouts, a byte cap (streamed, counted), retries, and redirects followed by hand: http(s) only.
    `images_only`: a response served as something other than an image is refused before its body is read (a link
    that may lead to an image, or to an article). `refuse_redirect(url)`: why a redirect target is not requested
    (a crawl staying on its site), or None.

    Every try, wait and redirect of one download fits in `options.timeout`. A connect error, a timeout, 429 or a
    5xx is tried again up to `options.retries` times, after 0.5, 1, 2 s... or the server's Retry-After.
    `dead_hosts` (host -> reason) remembers hosts that could not be reached, so a page with a hundred images on
    one dead host waits for it once, not a hundred times.
    """
    deadline = time.monotonic() + options.timeout
    dead_hosts = {} if dead_hosts is None else dead_hosts
    for _ in range(options.max_redirects + 1):
        if not is_http_url(url):
            raise FetchError(f"refused non-http(s) URL {url[:80]}")
        host = urlsplit(url).netloc.lower()
        for tries in range(1, max(options.retries, 0) + 2):
            if host in dead_hosts:  # found dead by another download of the page, perhaps while this one waited
                raise FetchError(dead_hosts[host])
            try:
                outcome = _get_once(url, options, deadline, html_cap, images_only)
                break
            except FetchError as problem:
                wait = _next_wait(problem, tries, options, deadline)
                if wait is None:
                    error = _given_up(problem, tries, options)
                    if problem.host_down:
                        dead_hosts[host] = str(error)
                    raise error from None
                time.sleep(wait)
        if isinstance(outcome, Response):
            return outcome
        url = outcome
        if refuse_redirect is not None and (refused := refuse_redirect(url)):
            raise FetchError(refused)
    raise FetchError(f"more than {options.max_redirects} redirects")


def _next_wait(problem: FetchError, tries: int, options: Options, deadline: float) -> float | None:
    """Seconds to wait before the next try, or None to give up: a lasting problem, no retries left, or no room
    left in --timeout for the wait (the backoff, or the server's Retry-After when longer) and one more try."""
    if not problem.transient or tries > options.retries:
        return None
    wait = max(BACKOFF_S * 2 ** (tries - 1), problem.wait or 0.0)
    if wait > MAX_RETRY_AFTER_S or time.monotonic() + wait + MIN_TRY_S > deadline:
        return None
    return wait


def _given_up(problem: FetchError, tries: int, options: Options) -> FetchError:
    """The last try's problem, saying why no further try was made when that is not plain."""
    message = str(problem)
    if problem.transient and problem.wait is not None and tries <= options.retries:
        limit = (
            f"the {MAX_RETRY_AFTER_S:g} s the tool waits at most"
            if problem.wait > MAX_RETRY_AFTER_S
            else f"--timeout {options.timeout:g} s"
        )
        message += f" (the server asks to retry in {problem.wait:g} s, which would run past {limit})"
    elif problem.transient and tries > 1 and message.startswith("HTTP "):
        message += f" ({tries} tries)"
    return FetchError(
        message, transient=problem.transient, host_down=problem.host_down, wait=problem.wait, status=problem.status
    )


def _get_once(url: str, options: Options, deadline: float, html_cap: bool, images_only: bool) -> "Response | str":
    """One GET: the response, or the URL a redirect leads to. Raises FetchError."""
    import requests
    import urllib3

    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"download took longer than {options.timeout:g} s")
    if options.verify is False:  # asked for with --insecure: a warning on every request would only be noise
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    try:
        response = _session().get(
            url,
            stream=True,
            allow_redirects=False,
            headers=request_headers(options, url),
            verify=options.verify,
            timeout=(min(10.0, left), left),
        )
    except requests.exceptions.RequestException as exc:
        raise request_problem(exc, left, options.verify) from None
    with response:
        if response.is_redirect:
            return safe_urljoin(url, response.headers.get("location", ""))
        status = response.status_code
        if status >= 400:
            raise FetchError(
                f"HTTP {status}",
                transient=status == 429 or status >= 500 and status not in (501, 505),
                wait=retry_after_seconds(response.headers.get("retry-after")),
                status=status,
            )
        served = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if images_only and served and not served.startswith(IMAGE_TYPES):
            raise FetchError(f"served as {served[:60]}, not an image")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > options.max_bytes:
            raise FetchError(f"response of {int(declared):,} bytes is over the {options.max_bytes:,} byte cap")
        chunks, total, cap, what = [], 0, options.max_bytes, "byte cap"
        while True:  # read1 returns what has arrived, so a trickling server still meets the deadline
            try:
                chunk = response.raw.read1(64 * 1024, decode_content=True)
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise FetchError(f"interrupted after {total:,} bytes ({_short_reason(exc)})", transient=True) from None
            if not chunk:
                break
            if not chunks and html_cap and sniff(chunk) == "html":
                cap, what = options.max_page_bytes, "byte cap of a page (raise --max-page-bytes to read it)"
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise FetchError(f"response is over the {cap:,} {what}")
            if time.monotonic() > deadline:
                raise FetchError(f"download took longer than {options.timeout:g} s")
        return Response(response.url, response.headers.get("content-type", ""), b"".join(chunks))


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) -> seconds from now; None when absent or unreadable."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def request_problem(exc: Exception, waited: float, verify: bool | str = True) -> FetchError:
    """A failed request -> what happened and, where the user can do something, what to do."""
    import requests
    import urllib3

    reason = _short_reason(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return FetchError(_tls_problem(exc, verify), host_down=True)
    if isinstance(exc, requests.exceptions.ProxyError):
        return FetchError(
            f"proxy failed ({reason}); check HTTP_PROXY / HTTPS_PROXY / NO_PROXY", transient=True, host_down=True
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return FetchError("unreachable (connect timed out)", transient=True, host_down=True)
    if isinstance(exc, requests.exceptions.Timeout):
        return FetchError(f"timed out (no response in {waited:.1f} s)", transient=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        # No connection made (refused, no such host) is the host's; one dropped after connecting is this request's.
        connected = not any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in _causes(exc))
        if connected:
            return FetchError(f"connection failed ({reason})", transient=True)
        return FetchError(f"unreachable ({reason})", transient=reason != "host name not found", host_down=True)
    return FetchError(f"request failed ({reason})")


def _tls_problem(exc: Exception, verify: bool | str) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = (cause.verify_message or "verify failed").rstrip(".")
            if re.search(r"mismatch|expired|not yet valid", detail):
                return f"certificate not trusted ({detail}); use --insecure to download anyway"
            if isinstance(verify, str):
                return (
                    f"certificate not trusted by --ca-bundle {verify} ({detail}); give the CA that signed it, "
                    "or --insecure"
                )
            return f"certificate not trusted ({detail}); use --ca-bundle FILE or --insecure"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return f"TLS handshake failed ({cause.reason.lower().replace('_', ' ')})"
    return f"TLS handshake failed ({_short_reason(exc)})"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it wraps (requests wraps urllib3, which wraps ssl and socket errors)."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [
            e
            for e in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args)
            if isinstance(e, BaseException)
        ]


REASONS = (
    (r"Temporary failure in name resolution", "name lookup failed"),
    (
        r"Name or service not known|nodename nor servname|No address associated|getaddrinfo failed|"
        r"NameResolutionError",
        "host name not found",
    ),
    (r"Connection refused", "connection refused"),
    (r"Connection reset", "connection reset"),
    (r"Remote end closed connection", "closed without a response"),
    (r"IncompleteRead", "connection closed early"),
    (r"Network is unreachable", "network is unreachable"),
    (r"No route to host", "no route to host"),
    (r"timed out", "timed out"),
)


def _short_reason(exc: Exception) -> str:
    text = " ".join(f"{type(c).__name__} {c}" for c in _causes(exc))
    return next((reason for pattern, reason in REASONS if re.search(pattern, text)), type(exc).__name__)


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
CSS_IMAGE_DECL = re.compile(
    r"(?:background(?:-image)?|list-style(?:-image)?|border-image(?:-source)?|content)\s*:"
    r"([^;}]*)",
    re.I,
)


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


# File names lazy-loading scripts put in `src` until the real image loads.
PLACEHOLDER_NAME = re.compile(
    r"(^|[/_.-])(blank|spacer|placeholder|transparent|pixel|lazy|lazyload|loading|loader|"
    r"1x1|dummy|empty|grey|gray|clear)([_.-][^/]*)?\.(gif|png|svg|jpe?g|webp)$",
    re.I,
)


def is_placeholder(url: str) -> bool:
    """A data: URI or a placeholder file: what a lazy-loading page shows before its real image."""
    url = url.strip()
    if url.lower().startswith("data:"):
        return True
    try:
        path = urlsplit(url).path
    except ValueError:  # an unbalanced IPv6 bracket ("a://["): no path to judge; reported later as an invalid URL
        return False
    return bool(PLACEHOLDER_NAME.search(path))


def _element_candidates(elements: list[dict]) -> list[str]:
    """The URLs an <img> (with the <source>s of its <picture>) may show, best first: srcset candidates (lazy ones
    included) largest first, then lazy-loading attributes, then `src`; data: URIs after every real URL. Where a
    lazy attribute names the real image, a placeholder `src` (data: or a placeholder file) is no candidate: it
    never stands in for the real image, whose failure is then reported."""
    sized, lazy, plain = [], [], []
    for attrs in elements:
        lazy_sized = []
        for a in LAZY_SRCSET_ATTRS:
            if isinstance(attrs.get(a), str):
                lazy_sized += parse_srcset(attrs[a])
        if isinstance(attrs.get("srcset"), str):
            sized += parse_srcset(attrs["srcset"])
        sized += lazy_sized
        lazy_urls = [attrs[a] for a in LAZY_SRC_ATTRS if isinstance(attrs.get(a), str) and _urlish(attrs[a])]
        lazy += lazy_urls
        if isinstance(attrs.get("src"), str) and attrs["src"].strip():
            if not ((lazy_urls or lazy_sized) and is_placeholder(attrs["src"])):
                plain.append(attrs["src"])
    if sized or lazy:  # a placeholder srcset beside a real lazy URL stands in for nothing either
        sized = [c for c in sized if not is_placeholder(c[0])] if lazy else sized
    ordered = [u for u, _ in sorted(sized, key=lambda c: -c[1])] + lazy + plain
    return sorted(ordered, key=lambda u: u.strip().lower().startswith("data:"))  # stable: real URLs first


def _enclosing_link(tag) -> str | None:
    """The href of the <a> around an image when that link holds only this one image."""
    anchor = tag.find_parent("a", href=True)
    if anchor is None or len(anchor.find_all("img")) != 1:
        return None
    href = anchor["href"].strip()
    return href if href and not href.startswith(("#", "javascript:", "mailto:", "data:")) else None


def _base_url(soup, page_url: str) -> str:
    """What the page's relative URLs resolve against: its `<base href>`, else its own URL."""
    base = soup.find("base", href=True)
    if base and base["href"].strip():
        resolved = safe_urljoin(page_url, base["href"].strip())
        return resolved if is_http_url(resolved) else page_url  # a base of another scheme resolves nothing
    return page_url


def parse_html(html):
    """A page's parse tree; a tree already parsed is returned as it is, so a crawler that wants both the images
    and the links of a page parses it once."""
    from bs4 import BeautifulSoup

    return html if isinstance(html, BeautifulSoup) else BeautifulSoup(html, "html.parser")


def find_images(html, base_url: str) -> list[PageImage]:
    """Every picture a reader of the page sees, once each, as absolute URLs (or data: URIs), in page order.
    `html`: its bytes, text or `parse_html` tree.

    Pure: no network. Non-http(s) URLs are kept so the caller can report them as skipped.
    """
    soup = parse_html(html)
    base_url = _base_url(soup, base_url)
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


@dataclass
class PageLinks:
    """What a crawler needs of a page: where its links lead, and whether it asks for a password."""

    links: list[str]
    password_field: bool


def find_links(html, base_url: str) -> PageLinks:
    """The http(s) URLs of the page's `<a href>` and `<area href>`, absolute, without fragments, once each, in
    page order (mailto:, javascript:, file: and the like are left out). `html` as for find_images. Pure: no
    network."""
    soup = parse_html(html)
    base_url = _base_url(soup, base_url)
    urls = (_absolute(tag["href"], base_url) for tag in soup.find_all(["a", "area"], href=True))
    password = soup.find("input", attrs={"type": re.compile(r"^\s*password\s*$", re.I)}) is not None
    return PageLinks(list(dict.fromkeys(u for u in urls if u and is_http_url(u))), password)


def is_html_response(response: Response) -> bool:
    """A page: HTML by content, or text served as HTML."""
    kind = sniff(response.data)
    return kind == "html" or (kind in ("text", "unknown") and "html" in response.content_type.lower())


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
    """A saved page (`page`, its path as given) and its folder: its file: images are read from disk, inside
    `boundary` only (the folder given as the input, else the page's own folder), each file once (`seen` holds the
    real paths read, shared with a folder walk that holds the page), and named by their path as the page's path
    was given."""

    page: str
    seen: set = field(default_factory=set)
    boundary: str | None = None

    @property
    def root(self) -> str:
        return os.path.realpath(self.boundary or os.path.dirname(os.path.abspath(self.page)))

    def name(self, url: str) -> str:
        path = url2pathname(unquote(urlsplit(url).path))
        page_folder = os.path.dirname(os.path.abspath(self.page))
        if os.path.relpath(os.path.realpath(path), self.root).startswith(os.pardir):
            return path
        return os.path.normpath(os.path.join(os.path.dirname(self.page), os.path.relpath(path, page_folder)))

    def read_already(self, url: str) -> bool:
        return url_scheme(url) == "file" and self._path(url) in self.seen

    def _path(self, url: str) -> str:
        return os.path.realpath(url2pathname(unquote(urlsplit(url).path)))

    def read(self, url: str, options: Options) -> bytes | None:
        """The file's bytes, or None when it was read already. Raises FetchError."""
        path = self._path(url)
        if os.path.commonpath([path, self.root]) != self.root:
            raise FetchError(
                "outside the saved page's folder (not read)"
                if self.boundary is None
                else f"outside the input folder {self.boundary} (not read)"
            )
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


def _read_image_url(
    url: str, options: Options, dead_hosts: dict, local: LocalFolder | None, images_only: bool = False
) -> bytes | None:
    """The bytes of an image URL: http(s), or a file: URL of a saved page (None: read already). Raises FetchError."""
    if local is not None and url_scheme(url) == "file":
        return local.read(url, options)
    if not is_http_url(url):
        scheme = url_scheme(url)
        raise FetchError(
            "invalid URL" if scheme is None else f"unsupported URL scheme {scheme or '(none)'}: (only http and https)"
        )
    return fetch(url, options, html_cap=False, dead_hosts=dead_hosts, images_only=images_only).data


def _source(url: str, local: "LocalFolder | None") -> str:
    """How a page image is named in results: its URL, or for a saved page's own file its path."""
    if local is not None and url_scheme(url) == "file":
        return local.name(url)
    return url[:200] if not is_http_url(url) else url


def _read_candidate(
    url: str,
    page_url: str,
    index: int,
    options: Options,
    dead_hosts: dict,
    local: LocalFolder | None,
    images_only: bool = False,
) -> list[Found | Skipped]:
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


def _download_image(
    image: "PageImage | str",
    page_url: str,
    index: int,
    options: Options,
    dead_hosts: dict,
    local: LocalFolder | None = None,
) -> list[Found | Skipped]:
    """One picture of a page -> its items: through its link when that leads to an image, else its best
    candidate, else the next candidate that gives an image (the best one's problem is reported when none does)."""
    image = image if isinstance(image, PageImage) else PageImage(image)
    linked = None
    if image.link:
        items = _read_candidate(
            image.link, page_url, index, options, dead_hosts, local, images_only=not image.link_is_image
        )
        if any(isinstance(item, Found) for item in items):
            for item in items:
                if isinstance(item, Found):
                    item.thumbnail = _source(image.url, local)
            return items
        if image.link_is_image and items:  # a link named as an image that does not give one is worth a line
            linked = items[0]
    first, shown = None, None
    for url in (image.url,) + image.fallbacks:
        items = _read_candidate(url, page_url, index, options, dead_hosts, local)
        if any(isinstance(item, Found) for item in items):
            shown = items
            break
        first = items if first is None else first
    if linked is not None:  # what happened instead, as it happened
        outcome = "the thumbnail is classified instead" if shown else "the thumbnail could not be read either"
        notes = [Skipped(linked.source, f"linked image: {linked.reason}; {outcome}")]
    else:
        notes = []
    return notes + (shown or first or [])


def page_images(
    html: bytes, page_url: str, options: Options, local: LocalFolder | None = None, budget: ImageBudget | None = None
) -> Iterator[Found | Skipped]:
    """Every picture of a page, downloaded on a bounded thread pool. For a saved page (`page_url` a file: URL),
    `local` is its folder: its file: images are read from disk inside that folder only. `budget`: --max-images
    shared with the folder the page is in."""
    yield from download_pictures(find_images(html, page_url), page_url, options, local, budget)


def download_pictures(
    pictures: list[PageImage],
    page_url: str,
    options: Options,
    local: LocalFolder | None = None,
    budget: ImageBudget | None = None,
) -> Iterator[Found | Skipped]:
    """The pictures `find_images` found on a page (or those a crawl has not read yet) -> their items."""
    budget, dead_hosts = budget or ImageBudget(options.max_images), {}
    room = max(budget.limit - budget.used, 0)
    options.announce(len(pictures))
    # The cap applies to candidate pictures here, so those past it are never downloaded.
    for items in bounded_map(
        lambda pair: _download_image(pair[1], page_url, pair[0], options, dead_hosts, local),
        enumerate(pictures[:room]),
        options.workers,
    ):
        for item in items:
            yield budget.admit(item)
    for picture in pictures[room:]:
        if not (local and local.read_already(picture.url)):  # a folder's file listed already
            yield Skipped(_source(picture.link or picture.url, local), budget.reason)
