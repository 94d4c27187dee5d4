"""Crawl one site: walk its pages breadth-first from a start page, politely, and read the images of each.

The site is the start page's host and port (after its redirects; http and https alike). Only its pages are
followed; the images they show are read wherever they are, as for one page. robots.txt is read once per host and
honoured for every page the crawl finds (the start page, named by the user, is read as it is without --crawl);
requests for pages are spaced by the delay, or robots.txt's Crawl-delay when longer; a 429 or 5xx is tried again
after a pause (Retry-After when it says, capped), then recorded. Nothing here knows about the model.
"""

import dataclasses
import math
import re
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from images import Finished, Found, ImageBudget, InputError, Options, Skipped
from pages import FetchError, Response, download_pictures, fetch, find_images, find_links, is_html_response, parse_html

MAX_TRIES = 3  # a page answered 429 or 5xx is asked this many times in all
MIN_BACKOFF = 0.5  # seconds before the first retry when the server does not say (doubling each time)
MAX_WAIT = 30.0  # the longest pause before a retry; a Retry-After beyond it gives the page up
LOGIN_PATH = re.compile(r"/(?:\w+[-_])?(?:log[-_]?in|sign[-_]?in|log[-_]?on)(?:\.\w+)?/?$", re.I)
# Links to these are not pages (nor PDFs or images): never fetched.
NOT_PAGES = (
    ".css",
    ".js",
    ".mjs",
    ".json",
    ".rss",
    ".atom",
    ".txt",
    ".csv",
    ".ics",
    ".vcf",
    ".zip",
    ".gz",
    ".tgz",
    ".bz2",
    ".xz",
    ".7z",
    ".rar",
    ".tar",
    ".mp3",
    ".wav",
    ".ogg",
    ".flac",
    ".m4a",
    ".mp4",
    ".m4v",
    ".webm",
    ".avi",
    ".mov",
    ".mkv",
    ".wmv",
    ".flv",
    ".swf",
    ".woff",
    ".woff2",
    ".ttf",
    ".otf",
    ".eot",
    ".exe",
    ".dmg",
    ".msi",
    ".apk",
    ".iso",
    ".bin",
    ".doc",
    ".docx",
    ".xls",
    ".xlsx",
    ".ppt",
    ".pptx",
    ".odt",
    ".ods",
    ".odp",
    ".rtf",
    ".epub",
)

# A linked file that is not a page (PDF, image, DICOM, ...): (its URL, its bytes, the crawl's image budget) -> items.
ReadDocument = Callable[[str, bytes, ImageBudget], Iterator[Found | Skipped]]


def site_of(url: str) -> str | None:
    """host[:port], the port only when it is not its scheme's default, so http://h/ and https://h/ are one site."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (host if port in (None, default) else f"{host}:{port}") if host else None


def page_key(url: str) -> tuple:
    """One key for every spelling of one page's URL: its site, path and query (scheme and fragment aside)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return (None, url, "")
    return (site_of(url), parts.path or "/", parts.query)


def is_login_url(url: str) -> bool:
    return bool(LOGIN_PATH.search(urlsplit(url).path))


def is_not_page(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(NOT_PAGES)


def is_busy(error: FetchError) -> bool:
    """A refusal worth asking again later: 429 Too Many Requests or a server error."""
    return error.status is not None and (error.status == 429 or error.status >= 500)


class HostClock:
    """Spaces requests to each host: one may start `delay` seconds after the previous one to that host ended."""

    def __init__(self, delay: float):
        self.delay, self.delays, self.last = delay, {}, {}

    def slow_down(self, host: str, delay: float):
        self.delays[host] = max(self.delays.get(host, self.delay), delay)

    @contextmanager
    def turn(self, host: str):
        pause = self.last.get(host, -math.inf) + self.delays.get(host, self.delay) - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        try:
            yield
        finally:
            self.last[host] = time.monotonic()


@dataclass
class Link:
    url: str
    depth: int  # steps from the start page
    linked_from: str | None  # the page whose link led here


class Crawler:
    """The state of one crawl: the host clock, robots.txt per host, and hosts found unreachable."""

    def __init__(self, options: Options):
        self.options, self.clock, self.dead_hosts = options, HostClock(options.delay), {}
        # Pages are asked again here, in the host's turn and with the crawl's longer pauses, not inside fetch.
        self.page_options = dataclasses.replace(options, retries=0)
        self.robots: dict[str, tuple[RobotFileParser, str]] = {}  # host -> (rules, why nothing is allowed)
        self.refused: set = set()  # pages robots.txt or the site's rules kept the crawl from asking for

    def fetch(self, url: str, refuse_redirect: Callable[[str], str | None] | None = None) -> Response:
        """pages.fetch in the host's turn; a 429 or 5xx is asked again after a pause. Raises FetchError."""
        host = site_of(url) or ""
        for attempt in range(MAX_TRIES):
            with self.clock.turn(host):
                try:
                    return fetch(url, self.page_options, dead_hosts=self.dead_hosts, refuse_redirect=refuse_redirect)
                except FetchError as exc:
                    error = exc
            if not is_busy(error):
                raise error
            asked = error.wait
            if asked is not None and asked > MAX_WAIT:
                raise FetchError(
                    f"{error}, asked to retry after {asked:.0f} s (over the {MAX_WAIT:.0f} s a crawl waits)",
                    status=error.status,
                ) from None
            if attempt < MAX_TRIES - 1:
                time.sleep(asked if asked is not None else max(self.options.delay, MIN_BACKOFF) * 2**attempt)
        if error.status == 429:  # the host asked for fewer requests: the rest of the crawl asks half as often
            self.clock.slow_down(
                host, min(MAX_WAIT, 2 * max(self.clock.delays.get(host, self.options.delay), MIN_BACKOFF))
            )
        raise FetchError(f"{error} after {MAX_TRIES} tries", status=error.status) from None

    def rules(self, url: str) -> tuple[RobotFileParser, str]:
        """The host's robots.txt, read once: missing (4xx) allows everything; unreadable (429, 5xx, unreachable)
        allows nothing, as RFC 9309 says. Its Crawl-delay, when longer than the delay, spaces the host's requests."""
        host = site_of(url) or ""
        if host not in self.robots:
            parts = urlsplit(url)
            rules, problem = RobotFileParser(), ""
            try:
                response = self.fetch(f"{parts.scheme}://{parts.netloc}/robots.txt")
                rules.parse(response.data.decode("utf-8", "replace").splitlines())
            except FetchError as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    rules.allow_all = True
                else:
                    rules.disallow_all, problem = True, f"robots.txt unreadable ({exc}): nothing past the start page"
            self.clock.slow_down(host, float(rules.crawl_delay(self.options.user_agent) or 0))
            self.robots[host] = (rules, problem)
        return self.robots[host]

    def refusal(self, url: str) -> str | None:
        """Why a page of the site is not to be fetched (a login page, robots.txt), or None."""
        if is_login_url(url):
            return "login page"
        rules, problem = self.rules(url)
        return None if rules.can_fetch(self.options.user_agent, url) else problem or "robots.txt disallows"

    def redirect_refusal(self, site: str) -> Callable[[str], str | None]:
        def refuse(url: str) -> str | None:
            if site_of(url) != site:
                return f"redirected off-site to {url[:200]}"
            why = self.refusal(url)
            return f"redirected to {url[:200]}: {why}" if why else None

        return refuse


def crawl(start: str, options: Options, read_document: ReadDocument) -> Iterator[Found | Skipped | Finished]:
    """The images of the start page and of the site's pages it leads to, up to `options.crawl_depth` links away
    and `options.max_pages` fetched; each Found says the page it was found on, each page not read is one Skipped.
    An image is read once per crawl, with the first page that shows it. The start page failing raises InputError.
    After each page asked for comes its Finished mark (with its links); under --resume a finished page is not
    fetched again, its recorded links are followed instead."""
    crawler, budget = Crawler(options), ImageBudget(options.max_images)
    done = (options.done or {}).get("files", {})
    queue, site, fetched = deque([Link(start, 0, None)]), None, 0
    queued = {page_key(start)}  # pages fetched or waiting
    classified = {page_key(url) for url in (options.done or {}).get("sources", ())}  # never fetched again
    budget.used = len(classified)
    pictures_read: set = set()  # (picture, link) of the pictures read, not read again on later pages
    while queue:
        if fetched >= options.max_pages or budget.full:
            limit = (
                f"--max-pages ({options.max_pages})"
                if fetched >= options.max_pages
                else f"--max-images ({options.max_images})"
            )
            yield Skipped(
                queue[0].url, f"crawl stopped at {limit}: this page and {len(queue) - 1} more found were not fetched"
            )
            return
        link = queue.popleft()
        if page_key(link.url) in classified:
            continue
        if link.url in done:  # finished by the run resumed: its links, as recorded
            fetched += 1
            site, page_url = site or site_of(start), link.url
            links = done[link.url].get("links") or []
        else:
            links = []
            site, page_url = yield from _read_page(
                link, site, crawler, options, budget, read_document, queued, classified, pictures_read, links
            )
            fetched += link.url not in crawler.refused
            yield Finished(link.url, links=tuple(links))
        if link.depth < options.crawl_depth:
            for url in links:
                key = page_key(url)
                if site_of(url) == site and not is_not_page(url) and key not in queued and key not in classified:
                    queued.add(key)
                    queue.append(Link(url, link.depth + 1, page_url))


def _read_page(
    link: Link,
    site: str | None,
    crawler: "Crawler",
    options: Options,
    budget: ImageBudget,
    read_document: ReadDocument,
    queued: set,
    classified: set,
    pictures_read: set,
    links: list,
):
    """One page of a crawl: its items yielded, its same-site links appended to `links`; returns the site and the
    page's URL after redirects."""
    if site is not None and (why := crawler.refusal(link.url)):
        crawler.refused.add(link.url)
        yield Skipped(link.url, f"page skipped: {why}")
        return site, link.url
    try:
        response = crawler.fetch(link.url, site and crawler.redirect_refusal(site))
    except FetchError as exc:
        if site is None:
            raise InputError(str(exc)) from None
        yield Skipped(link.url, f"page skipped: {exc}")
        return site, link.url
    site = site or site_of(response.url)
    queued.add(page_key(response.url))
    if not is_html_response(response):
        yield from _document_items(response, link.linked_from or response.url, budget, read_document)
        return site, response.url
    tree = parse_html(response.data)  # one parse for the links and the pictures
    outline = find_links(tree, response.url)
    if outline.password_field or is_login_url(response.url):
        if link.depth == 0:
            raise InputError("login page (it asks for a password): nothing to crawl")
        yield Skipped(link.url, "page skipped: login page")
        return site, response.url
    pictures = [
        p
        for p in find_images(tree, response.url)
        if page_key(p.url) not in classified and (page_key(p.url), p.link and page_key(p.link)) not in pictures_read
    ]
    pictures_read.update((page_key(p.url), p.link and page_key(p.link)) for p in pictures)
    for item in download_pictures(pictures, response.url, options, budget=budget):
        if isinstance(item, Found):
            item.found_on = response.url
            classified.add(page_key(item.source))
        yield item
    if link.depth < options.crawl_depth:
        links.extend(url for url in outline.links if site_of(url) == site)
    return site, response.url


def _document_items(
    response: Response, found_on: str, budget: ImageBudget, read_document: ReadDocument
) -> Iterator[Found | Skipped]:
    """A linked PDF, image or other file: its images, each found on the page that links to it."""
    try:
        for item in read_document(response.url, response.data, budget):
            if isinstance(item, Found):
                item.found_on = found_on
            yield item
    except InputError as exc:  # a damaged or encrypted PDF, or one out of time: what it gave is kept
        yield Skipped(response.url, str(exc))
