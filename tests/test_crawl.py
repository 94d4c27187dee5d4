"""Crawling a site served from 127.0.0.1: which pages are fetched, how politely, and what each result says."""

import json
import time
from urllib.parse import urlsplit

import pymupdf
import pytest

import crawl
import extract
import final_classification_script as cli
import pages
from conftest import corpus_images, image_bytes
from images import Found, InputError, Options, Skipped

MEDICAL = corpus_images("medical", "ct", 3)
PHOTOS = corpus_images("non_medical", "photo", 4)


def options(**kwargs) -> Options:
    return Options(**{"crawl_depth": 2, "delay": 0.01, **kwargs})


def run(url: str, **kwargs) -> tuple[str, list]:
    kind, items = extract.open_input(url, options(**kwargs))
    return kind, list(items)


def path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"#{parts.fragment}" if parts.fragment else "")


def found_on(items: list) -> dict:
    """image path -> the path of the page it was found on."""
    return {path(i.source): i.found_on and path(i.found_on) for i in items if isinstance(i, Found)}


def skipped(items: list) -> dict:
    return {path(i.source): i.reason for i in items if isinstance(i, Skipped)}


def html(*parts: str) -> bytes:
    return ("<!doctype html><html><body>" + "".join(parts) + "</body></html>").encode()


def sequence(*responses):
    """A route answering each request with the next response, the last one for ever after."""
    remaining = list(responses)

    def handler(request):
        request._send(*(remaining.pop(0) if len(remaining) > 1 else remaining[0]))

    return handler


def timed(server, log: list):
    """Every route also notes (path, time) of each request, to check how requests are spaced."""
    for route_path, route in list(server.routes.items()):

        def handler(request, route=route, route_path=route_path):
            log.append((route_path, time.monotonic()))
            return route(request) if callable(route) else request._send(*route)

        server.routes[route_path] = handler


def pdf_with(image) -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_image(pymupdf.Rect(50, 50, 400, 400), stream=image_bytes(image, "JPEG"))
    return doc.tobytes()


@pytest.fixture
def site(server):
    """A small site: a cycle, an off-host link, robots.txt, a flaky page, an off-site redirect, login pages,
    links that are not http(s), a stylesheet, a PDF, a 404, and a page one step too deep."""
    elsewhere = server.url.replace("127.0.0.1", "localhost")  # the same server, another host
    server.add("/img/scan.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/img/photo.jpg", image_bytes(PHOTOS[0], "JPEG"), "image/jpeg")
    server.add("/img/photo2.jpg", image_bytes(PHOTOS[1], "JPEG"), "image/jpeg")
    server.add("/img/photo3.jpg", image_bytes(PHOTOS[2], "JPEG"), "image/jpeg")
    server.add("/img/members.png", image_bytes(MEDICAL[1], "PNG"), "image/png")
    server.add("/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain")
    server.add(
        "/index.html",
        html(
            '<img src="/img/scan.png">',
            '<a href="a.html">A</a><a href="/a.html#top">A again</a>',
            '<a href="index.html">home</a><a href="#main">here</a>',
            f'<a href="{elsewhere}/offhost.html">off</a>',
            '<a href="mailto:x@example.org">m</a><a href="javascript:alert(1)">j</a><a href="file:///etc/passwd">f</a>',
            '<a href="/private/secret.html">s</a><a href="/login">in</a><a href="/members.html">members</a>',
            '<a href="/moved.html">moved</a><a href="/flaky.html">flaky</a><a href="/style.css">css</a>',
            '<a href="/doc.pdf">paper</a><a href="/gone.html">gone</a>',
        ),
    )
    server.add(
        "/a.html",
        html(
            '<img src="/img/scan.png"><img src="/img/photo.jpg">', '<a href="index.html">back</a><a href="c.html">C</a>'
        ),
    )
    server.add("/c.html", html('<img src="/img/photo3.jpg"><a href="d.html">D</a>'))
    server.add("/d.html", html('<img src="/img/scan.png">'))
    server.add(
        "/members.html",
        html(
            '<form><input name="user"><input type="Password" name="pw"></form>',
            '<img src="/img/members.png"><a href="/members-only.html">more</a>',
        ),
    )
    server.redirect("/moved.html", f"{elsewhere}/elsewhere.html")
    server.routes["/flaky.html"] = sequence(
        (503, {"Content-Type": "text/html"}, b"busy"),
        (200, {"Content-Type": "text/html"}, html('<img src="img/photo2.jpg">')),
    )
    server.add("/doc.pdf", pdf_with(MEDICAL[2]), "application/pdf")
    for never in (
        "/offhost.html",
        "/elsewhere.html",
        "/private/secret.html",
        "/login",
        "/members-only.html",
        "/style.css",
    ):
        server.add(never, html("<p>should not be read</p>"))
    return server


# ---------------------------------------------------------------- the pure parts


def test_find_links_gives_http_links_once_without_fragments():
    outline = pages.find_links(
        '<base href="https://example.org/docs/"><a href="a.html#x">a</a><a href="a.html">again</a>'
        '<a href="#top">top</a><a href="mailto:a@b">m</a><a href="javascript:void(0)">j</a><a href="file:///x">f</a>'
        '<map><area href="/b.html"></map><a href="//cdn.example.net/c">c</a><a href="d?q=1">d</a>',
        "https://example.org/page.html",
    )
    assert outline.links == [
        "https://example.org/docs/a.html",
        "https://example.org/b.html",
        "https://cdn.example.net/c",
        "https://example.org/docs/d?q=1",
    ]
    assert not outline.password_field
    assert pages.find_links('<input type="password">', "https://e.org/").password_field


def test_one_site_is_one_host_and_port_whatever_the_scheme():
    assert crawl.site_of("http://Example.org/a") == crawl.site_of("https://example.org:443/b") == "example.org"
    assert crawl.site_of("http://example.org:8080/") == "example.org:8080" != crawl.site_of("http://example.org/")
    assert crawl.site_of("http://www.example.org/") != crawl.site_of("http://example.org/")
    assert crawl.page_key("http://example.org/a?x=1#f") == crawl.page_key("https://example.org:443/a?x=1")
    assert crawl.page_key("https://example.org") == crawl.page_key("https://example.org/")
    assert crawl.page_key("https://example.org/a?x=1") != crawl.page_key("https://example.org/a?x=2")


def test_login_paths():
    for url in (
        "https://e.org/login",
        "https://e.org/accounts/login/",
        "https://e.org/wp-login.php",
        "https://e.org/users/sign_in",
        "https://e.org/signin?next=/a",
        "https://e.org/user/log-in",
    ):
        assert crawl.is_login_url(url), url
    for url in ("https://e.org/blog/logging-in-tips", "https://e.org/signing", "https://e.org/login-help/faq"):
        assert not crawl.is_login_url(url), url


def test_retry_after_in_seconds_or_as_a_date():
    assert pages.retry_after_seconds("7") == 7.0
    assert pages.retry_after_seconds(None) is None and pages.retry_after_seconds("soon") is None
    assert pages.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    assert 95 < pages.retry_after_seconds(later) <= 100


# ---------------------------------------------------------------- a crawl


def test_crawl_follows_the_site_to_its_depth_and_records_every_page_it_does_not_read(site):
    kind, items = run(site.url + "/index.html", crawl_depth=2)
    assert kind == "crawl"
    assert {p: n for p, n in site.hits.items() if not p.startswith("/img/")} == {
        "/index.html": 1,
        "/robots.txt": 1,
        "/a.html": 1,
        "/c.html": 1,
        "/members.html": 1,
        "/moved.html": 1,
        "/flaky.html": 2,
        "/doc.pdf": 1,
        "/gone.html": 1,
    }  # /d.html is three links away
    assert found_on(items) == {
        "/img/scan.png": "/index.html",  # shown again on /a.html: read once
        "/doc.pdf#page=1&image=1": "/index.html",  # found on the page linking to it
        "/img/photo.jpg": "/a.html",
        "/img/photo3.jpg": "/c.html",
        "/img/photo2.jpg": "/flaky.html",
    }
    assert site.hits["/img/scan.png"] == 1 and "/img/members.png" not in site.hits
    assert skipped(items) == {
        "/private/secret.html": "page skipped: robots.txt disallows",
        "/login": "page skipped: login page",
        "/members.html": "page skipped: login page",  # fetched, then seen to ask for a password
        "/moved.html": "page skipped: redirected off-site to "
        + site.url.replace("127.0.0.1", "localhost")
        + "/elsewhere.html",
        "/gone.html": "page skipped: HTTP 404",
    }


def test_depth_one_reads_only_the_start_page_and_its_links(site):
    _, items = run(site.url + "/a.html", crawl_depth=1)
    assert found_on(items) == {"/img/scan.png": "/a.html", "/img/photo.jpg": "/a.html", "/img/photo3.jpg": "/c.html"}
    assert "/index.html" in site.hits and "/flaky.html" not in site.hits  # /index.html is one link away, /flaky two


def test_without_crawl_the_links_are_not_followed(site):
    kind, items = run(site.url + "/index.html", crawl_depth=0)
    assert kind == "url" and set(site.hits) == {"/index.html", "/img/scan.png"}
    assert found_on(items) == {"/img/scan.png": None}  # found_on is a crawl's: a single page's images lack it


def test_max_pages_counts_pages_fetched_and_says_where_it_stopped(server):
    for n in range(6):
        server.add(f"/p{n}.html", html(f'<a href="p{n + 1}.html">next</a><a href="x{n}.html">other</a>'))
    _, items = run(server.url + "/p0.html", crawl_depth=5, max_pages=3)
    assert {p for p in server.hits if p.endswith(".html")} == {"/p0.html", "/x0.html", "/p1.html"}
    assert skipped(items) == {
        "/x0.html": "page skipped: HTTP 404",  # asked for: it counts
        "/p2.html": "crawl stopped at --max-pages (3): this page and 1 more found were not fetched",
    }


def test_max_images_for_the_whole_crawl_stops_it(site):
    _, items = run(site.url + "/index.html", max_images=1)
    assert found_on(items) == {"/img/scan.png": "/index.html"}
    assert set(site.hits) == {"/index.html", "/img/scan.png"}  # neither robots.txt nor any other page
    assert skipped(items) == {
        "/a.html": "crawl stopped at --max-images (1): this page and 7 more found were not fetched"
    }


def test_requests_to_the_site_are_spaced_by_the_delay(site):
    log = []
    timed(site, log)
    run(site.url + "/index.html", crawl_depth=2, delay=0.15)
    requests = [t for p, t in log if not p.startswith("/img/")]  # a page's images are downloaded as for one page
    assert len(requests) == 9  # /gone.html, a 404, has no route to note it
    gaps = [b - a for a, b in zip(requests, requests[1:])]
    assert min(gaps) >= 0.15, gaps


def test_robots_crawl_delay_longer_than_the_delay_wins(server):
    server.add("/robots.txt", b"User-agent: medical-image-classifier\nCrawl-delay: 1\n", "text/plain")
    server.add("/a.html", html('<a href="b.html">b</a>'))
    server.add("/b.html", html("<p>b</p>"))
    log = []
    timed(server, log)
    run(server.url + "/a.html", delay=0.01)
    assert [p for p, _ in log] == ["/a.html", "/robots.txt", "/b.html"]
    assert log[2][1] - log[1][1] >= 1.0


def test_robots_txt_that_cannot_be_read_allows_nothing_past_the_start_page(server):
    server.add("/robots.txt", b"oops", "text/plain", status=500)
    server.add("/a.html", html('<img src="scan.png"><a href="b.html">b</a>'))
    server.add("/scan.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    _, items = run(server.url + "/a.html", delay=0.01)
    assert found_on(items) == {"/scan.png": "/a.html"} and "/b.html" not in server.hits
    assert skipped(items) == {
        "/b.html": "page skipped: robots.txt unreadable (HTTP 500 after 3 tries): nothing past the start page"
    }


def test_busy_servers_are_asked_again_after_a_pause_then_recorded(server):
    server.add("/photo.jpg", image_bytes(PHOTOS[0], "JPEG"), "image/jpeg")
    server.add("/a.html", html('<a href="busy.html">1</a><a href="down.html">2</a><a href="never.html">3</a>'))
    server.routes["/busy.html"] = sequence(
        (429, {"Retry-After": "1"}, b""), (200, {"Content-Type": "text/html"}, html('<img src="photo.jpg">'))
    )
    server.add("/down.html", b"", status=503)
    server.add("/never.html", b"", status=429, headers={"Retry-After": "3600"})
    log = []
    timed(server, log)
    _, items = run(server.url + "/a.html", delay=0.01)
    busy = [t for p, t in log if p == "/busy.html"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 1.0  # Retry-After honoured
    assert found_on(items) == {"/photo.jpg": "/busy.html"}
    assert server.hits["/down.html"] == 3 and server.hits["/never.html"] == 1
    assert skipped(items) == {
        "/down.html": "page skipped: HTTP 503 after 3 tries",
        "/never.html": "page skipped: HTTP 429, asked to retry after 3600 s (over the 30 s a crawl waits)",
    }


def test_linked_images_are_read_once_and_a_bare_link_to_one_is_classified(server):
    server.add("/full.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/thumb.png", image_bytes(MEDICAL[0], "PNG", size=(48, 48)), "image/png")
    server.add("/xray.png", image_bytes(MEDICAL[1], "PNG"), "image/png")
    server.add(
        "/a.html",
        html(
            '<a href="full.png"><img src="thumb.png"></a><a href="full.png">full size</a>',
            '<a href="xray.png">an X-ray</a><a href="b.html">b</a>',
        ),
    )
    server.add("/b.html", html('<a href="full.png"><img src="thumb.png"></a>'))
    _, items = run(server.url + "/a.html", delay=0.01)
    assert found_on(items) == {"/full.png": "/a.html", "/xray.png": "/a.html"}
    assert server.hits["/full.png"] == 1 and server.hits["/xray.png"] == 1 and server.hits["/b.html"] == 1
    assert not skipped(items)


def test_the_site_is_where_the_start_page_lands(server):
    elsewhere = server.url.replace("127.0.0.1", "localhost")
    server.redirect("/start", f"{elsewhere}/a.html")
    server.add("/a.html", html('<img src="scan.png"><a href="b.html">b</a>'))
    server.add("/b.html", html('<img src="photo.jpg">'))
    server.add("/scan.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/photo.jpg", image_bytes(PHOTOS[0], "JPEG"), "image/jpeg")
    _, items = run(server.url + "/start", delay=0.01)
    assert {i.found_on for i in items if isinstance(i, Found)} == {f"{elsewhere}/a.html", f"{elsewhere}/b.html"}


def test_a_start_page_that_fails_is_a_failed_input(server):
    server.add("/login.html", html('<form><input type="password"></form><a href="a.html">a</a>'))
    with pytest.raises(InputError, match="^HTTP 404$"):
        run(server.url + "/missing.html")
    with pytest.raises(InputError, match="login page"):
        run(server.url + "/login.html")
    assert "/a.html" not in server.hits


def test_a_start_url_that_is_a_pdf_gives_its_images(server):
    server.add("/doc.pdf", pdf_with(MEDICAL[0]), "application/pdf")
    kind, items = run(server.url + "/doc.pdf")
    assert kind == "crawl" and found_on(items) == {"/doc.pdf#page=1&image=1": "/doc.pdf"}


# ---------------------------------------------------------------- through the CLI


def test_crawl_through_the_cli(site, capsys):
    code = cli.main(
        [site.url + "/index.html", "--crawl", "1", "--delay", "0.01", "--max-pages", "20", "--json", "--quiet"]
    )
    entry = json.loads(capsys.readouterr().out)["inputs"][0]
    assert code == 0 and entry["kind"] == "crawl" and entry["error"] is None
    assert {path(i["source"]): (i["found_on"], i["label"]) for i in entry["images"]} == {
        "/img/scan.png": (site.url + "/index.html", "medical"),
        "/doc.pdf#page=1&image=1": (site.url + "/index.html", "medical"),
        "/img/photo.jpg": (site.url + "/a.html", "non-medical"),
        "/img/photo2.jpg": (site.url + "/flaky.html", "non-medical"),
    }
    assert {path(s["source"]): s["reason"] for s in entry["skipped"]}[
        "/private/secret.html"
    ] == "page skipped: robots.txt disallows"
    assert "/c.html" not in site.hits


def test_crawl_options_are_checked(capsys):
    for bad, message in (
        (["--crawl", "-1"], "argument --crawl: must be 0 or more, not -1"),
        (["--max-pages", "0"], "argument --max-pages: must be 1 or more, not 0"),
        (["--delay", "-1"], "argument --delay: must be 0 or more, not -1"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(["https://example.org/"] + bad)
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {message} (see python final_classification_script.py --help)"
        ]
