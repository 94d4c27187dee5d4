"""Web extraction: the pure URL finder, and pages served from 127.0.0.1."""

import base64
import time

import pytest
from PIL import Image

import extract
import images
import pages
from conftest import corpus_images, endless, image_bytes, slow, trickle

PHOTOS = corpus_images("non_medical", "photo", 6)
SCANS = corpus_images("medical", "ct", 4)
BASE = "https://example.org/articles/page.html"


def urls(html: str, base: str = BASE) -> list[str]:
    return extract.find_image_urls(html, base)


# ---------------------------------------------------------------- the finder, pure


def test_img_src_resolves_against_page_url():
    assert urls('<img src="a.png"><img src="/b.jpg"><img src="//cdn.example.net/c.gif">') == [
        "https://example.org/articles/a.png",
        "https://example.org/b.jpg",
        "https://cdn.example.net/c.gif",
    ]


def test_base_href_wins_over_page_url():
    assert urls('<base href="https://static.example.com/img/"><img src="x.png">') == [
        "https://static.example.com/img/x.png"
    ]


def test_base_href_of_another_scheme_is_ignored():
    assert urls('<base href="A:"><img src="0">') == ["https://example.org/articles/0"]


def test_srcset_takes_the_largest_candidate_even_with_commas_in_urls():
    html = (
        '<img srcset="https://i.example/w_100,c_fill/a.jpg 100w, https://i.example/w_800,c_fill/a.jpg 800w,'
        ' https://i.example/w_400,c_fill/a.jpg 400w">'
    )
    assert urls(html) == ["https://i.example/w_800,c_fill/a.jpg"]
    assert urls('<img srcset="a.png 1x, b.png 2x" src="a.png">') == ["https://example.org/articles/b.png"]


def test_parse_srcset_follows_the_html_rules():
    assert pages.parse_srcset("a.jpg, b.jpg 2x") == [("a.jpg", 1.0), ("b.jpg", 2000.0)]
    assert pages.parse_srcset("a.jpg,b.jpg 2x") == [("a.jpg,b.jpg", 2000.0)]  # no space: one URL with a comma
    assert pages.parse_srcset("f(1,2).jpg 10w, g.jpg 20w") == [("f(1,2).jpg", 10.0), ("g.jpg", 20.0)]
    assert pages.parse_srcset(" x.png 300w ,\n y.png 600w") == [("x.png", 300.0), ("y.png", 600.0)]
    assert pages.parse_srcset("") == []


def test_picture_sources():
    html = (
        '<picture><source srcset="big.webp 1200w, small.webp 600w" type="image/webp"><img src="fallback.jpg"></picture>'
    )
    assert urls(html) == ["https://example.org/articles/big.webp"]  # one picture, read at its largest
    [picture] = pages.find_images(html, BASE)
    assert picture.fallbacks == ("https://example.org/articles/small.webp", "https://example.org/articles/fallback.jpg")


def test_lazy_attributes_win_over_placeholder_src():
    html = (
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="real1.jpg">'
        '<img data-lazy-src="real2.jpg"><img data-original="real3.jpg">'
        '<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-srcset="r4-small.jpg 300w, r4-big.jpg 900w">'
    )
    assert urls(html) == [
        f"https://example.org/articles/{n}" for n in ("real1.jpg", "real2.jpg", "real3.jpg", "r4-big.jpg")
    ]


def test_css_backgrounds_in_style_attributes_and_blocks():
    html = (
        '<style>.hero { background-image: url("hero.jpg") } @font-face { src: url(font.woff) }'
        " .x{background: #fff url('/bg.png') no-repeat}</style>"
        '<div style="background-image:url(card.webp)"></div><div data-bg="lazybg.jpg"></div>'
    )
    assert urls(html) == [
        "https://example.org/articles/hero.jpg",
        "https://example.org/bg.png",
        "https://example.org/articles/card.webp",
        "https://example.org/articles/lazybg.jpg",
    ]


def test_open_graph_and_twitter_images():
    html = (
        '<meta property="og:image" content="https://example.org/og.jpg">'
        '<meta name="twitter:image" content="/tw.png"><img src="/og.jpg#frag">'
    )
    assert urls(html) == ["https://example.org/og.jpg", "https://example.org/tw.png"]


def test_data_uris_kept_and_duplicates_dropped():
    png = "data:image/png;base64," + base64.b64encode(image_bytes(PHOTOS[0], "PNG", size=(40, 40))).decode()
    html = f'<img src="{png}"><img src="a.jpg"><img src="./a.jpg"><img src="{png}">'
    assert urls(html) == [png, "https://example.org/articles/a.jpg"]


def test_non_http_schemes_are_returned_for_reporting_not_fetched():
    found = urls('<img src="file:///etc/passwd"><img src="ftp://x/y.png"><img src="javascript:alert(1)">')
    assert found == ["file:///etc/passwd", "ftp://x/y.png", "javascript:alert(1)"]


def test_malformed_urls_found_by_fuzzing_are_kept_for_reporting():
    assert urls('<img src="A://["><img src="http://[::1">') == ["A://[", "http://[::1"]
    assert urls('<img src="a #x"><img src="a">') == ["https://example.org/articles/a"]
    [skipped] = pages._download_image("http://[::1", BASE, 0, extract.Options(), {})
    assert skipped.reason == "invalid URL"


def test_links_around_pictures_and_single_images_only():
    html = (
        '<a href="/full/1.jpg"><picture><source srcset="1.webp"><img src="1.jpg"></picture></a>'
        '<a href="/gallery.html"><img src="2.jpg"><img src="3.jpg"></a>'
    )
    found = pages.find_images(html, BASE)
    assert [(p.url.rsplit("/", 1)[1], p.link, p.link_is_image) for p in found] == [
        ("1.webp", "https://example.org/full/1.jpg", True),
        ("2.jpg", None, False),
        ("3.jpg", None, False),
    ]


def test_noscript_fallbacks_are_found():
    assert urls('<noscript><img src="ns.jpg"></noscript>') == ["https://example.org/articles/ns.jpg"]


# ---------------------------------------------------------------- served pages


def collect(url: str, **options):
    kind, items = extract.open_input(url, extract.Options(**options))
    items = list(items)
    found = {i.source: i for i in items if isinstance(i, extract.Found)}
    skipped = {i.source: i.reason for i in items if isinstance(i, extract.Skipped)}
    return kind, found, skipped


def test_served_page_with_every_pattern(server):
    for i, path in enumerate(PHOTOS[:5]):
        server.add(f"/img/{i}.jpg", image_bytes(path, "JPEG"), "image/jpeg")
    server.add("/img/scan.png", image_bytes(SCANS[0], "PNG"), "image/png")
    server.add("/img/pixel.gif", image_bytes(PHOTOS[0], "GIF", size=(1, 1)), "image/gif")
    server.add("/img/fake.jpg", b"<html><body>not an image</body></html>", "text/html")
    server.add(
        "/img/logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="99" height="99"></svg>', "image/svg+xml"
    )
    server.redirect("/img/moved.jpg", "/img/4.jpg?via=redirect")
    server.add("/img/slow.jpg", b"")
    server.routes["/img/slow.jpg"] = slow(3.0, image_bytes(PHOTOS[1], "JPEG"), "image/jpeg")
    inline = base64.b64encode(image_bytes(SCANS[1], "PNG")).decode()
    page = f"""<html><head><meta property="og:image" content="/img/0.jpg">
      <style>.hero {{ background-image: url('/img/1.jpg') }}</style></head><body>
      <img src="/img/scan.png"><img srcset="/img/2.jpg 800w, /img/missing-small.jpg 200w">
      <picture><source srcset="/img/3.jpg 1000w"><img src="/img/3.jpg"></picture>
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" data-src="/img/moved.jpg">
      <img src="/img/pixel.gif"><img src="/img/404.png"><img src="/img/fake.jpg"><img src="/img/logo.svg">
      <img src="/img/slow.jpg"><img src="data:image/png;base64,{inline}"><img src="file:///etc/passwd">
      </body></html>"""
    server.add("/page.html", page.encode())
    kind, found, skipped = collect(server.url + "/page.html", timeout=1.0)
    u = server.url
    assert kind == "url"
    assert set(found) == {
        f"{u}/img/0.jpg",
        f"{u}/img/1.jpg",
        f"{u}/img/scan.png",
        f"{u}/img/2.jpg",
        f"{u}/img/3.jpg",
        f"{u}/img/moved.jpg",
        f"{u}/page.html#data-uri-11",
    }
    with open(SCANS[0], "rb"):
        pass
    assert (found[f"{u}/img/scan.png"].width, found[f"{u}/img/scan.png"].height) == __import__("PIL.Image").Image.open(
        SCANS[0]
    ).size
    assert skipped[f"{u}/img/pixel.gif"] == "smaller than 32 px (1x1)"
    assert skipped[f"{u}/img/404.png"] == "download failed: HTTP 404"
    assert skipped[f"{u}/img/fake.jpg"] == "not an image (HTML content)"
    assert skipped[f"{u}/img/logo.svg"].startswith("SVG")
    assert skipped[f"{u}/img/slow.jpg"].startswith("download failed") and "timed out" in skipped[f"{u}/img/slow.jpg"]
    assert skipped["file:///etc/passwd"].startswith("unsupported URL scheme file")
    assert server.hits.get("/img/4.jpg") == 1  # the redirect was followed


def test_url_that_is_an_image_or_a_pdf_is_handled_as_such_whatever_its_name(server):
    import pymupdf

    server.add("/download?id=1", b"")
    server.add("/picture", image_bytes(SCANS[2], "JPEG"), "application/octet-stream")
    doc = pymupdf.open()
    doc.new_page().insert_image(pymupdf.Rect(0, 0, 200, 200), stream=image_bytes(PHOTOS[2], "JPEG"))
    server.add("/paper.html", doc.tobytes(), "text/html")  # a lying extension and type
    kind, found, _ = collect(server.url + "/picture")
    assert kind == "image" and len(found) == 1
    kind, found, _ = collect(server.url + "/paper.html")
    assert kind == "pdf" and list(found) == [server.url + "/paper.html#page=1&image=1"]


def test_redirect_loop_is_one_clear_error(server):
    server.redirect("/a", "/b")
    server.redirect("/b", "/a")
    with pytest.raises(extract.InputError, match="more than 5 redirects"):
        collect(server.url + "/a")


def test_redirect_to_a_file_url_is_refused(server):
    server.redirect("/sneaky", "file:///etc/passwd")
    with pytest.raises(extract.InputError, match="refused non-http"):
        collect(server.url + "/sneaky")


def test_response_that_never_ends_hits_the_byte_cap(server):
    server.routes["/endless"] = endless
    with pytest.raises(extract.InputError, match="byte cap"):
        collect(server.url + "/endless", max_bytes=2_000_000)


def test_server_sending_one_byte_a_second_hits_the_deadline(server):
    server.routes["/trickle"] = trickle
    start = time.monotonic()
    with pytest.raises(extract.InputError, match="longer than 2 s"):
        collect(server.url + "/trickle", timeout=2.0)
    assert time.monotonic() - start < 6


def test_oversized_response_refused_from_its_content_length(server):
    server.add("/huge.jpg", b"x" * 10, "image/jpeg", headers={"Content-Length": "999999999"})
    with pytest.raises(extract.InputError, match="over the .* byte cap"):
        collect(server.url + "/huge.jpg")


def test_fifty_megabyte_html_page_is_refused_clearly(server):
    body = b"<html><body>" + b"<p>filler text</p>" * (50 * 1024 * 1024 // 18) + b"</body></html>"
    server.add("/big.html", body)
    with pytest.raises(extract.InputError, match="over the 16,777,216 byte cap of a page .*--max-page-bytes"):
        collect(server.url + "/big.html")


def test_max_page_bytes_raises_the_cap_of_a_large_page(server):
    picture = image_bytes(PHOTOS[3], "PNG", size=(40, 40))
    server.add("/i.png", picture, "image/png")
    body = b'<html><body><img src="/i.png">' + b"<p>filler text</p>" * (20 * 1024 * 1024 // 18) + b"</body></html>"
    server.add("/big.html", body)
    with pytest.raises(extract.InputError, match="byte cap of a page"):
        collect(server.url + "/big.html")
    kind, found, skipped = collect(server.url + "/big.html", max_page_bytes=32 * 1024 * 1024)
    assert len(found) == 1 and not skipped


def test_ten_thousand_image_tags_are_capped_by_max_images(server):
    server.add("/i.png", image_bytes(PHOTOS[3], "PNG", size=(40, 40)), "image/png")
    page = "".join(f'<img src="/i.png?n={n}">' for n in range(10_000))
    server.add("/many.html", page.encode())
    kind, found, skipped = collect(server.url + "/many.html", max_images=20)
    assert len(found) == 20
    over = [r for r in skipped.values() if r == "over --max-images (20)"]
    assert len(over) == 9_980


def test_a_dead_host_is_tried_once_per_page(server):
    page = "".join(f'<img src="http://127.0.0.1:9/{n}.png">' for n in range(5))
    server.add("/dead.html", page.encode())
    kind, found, skipped = collect(server.url + "/dead.html")
    assert not found and len(skipped) == 5
    assert set(skipped.values()) == {"download failed: unreachable (connection refused)"}


def test_unreachable_host_is_a_clear_error():
    with pytest.raises(extract.InputError, match="unreachable"):
        collect("http://127.0.0.1:9/nothing-listens-here")


def test_image_declaring_a_decompression_bomb_is_refused_from_its_header():
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    skipped = images.decode_image(bomb, "bomb.png", extract.Options())
    assert isinstance(skipped, extract.Skipped)
    assert skipped.reason == "over the pixel cap (100000x100000 > 100,000,000 pixels)"


# ---------------------------------------------------------------- one image per element, links to full size


def test_one_picture_given_as_src_and_srcset_is_read_once(server):
    server.add("/big.jpg", image_bytes(PHOTOS[0], "JPEG"), "image/jpeg")
    server.add("/small.jpg", image_bytes(PHOTOS[0], "JPEG", size=(40, 40)), "image/jpeg")
    page = "".join(f'<img src="/small.jpg?n={n}" srcset="/small.jpg?n={n} 1x, /big.jpg?n={n} 2x">' for n in range(20))
    page += (
        '<picture><source media="(min-width: 800px)" srcset="/big.jpg?p 900w"><source srcset="/small.jpg?p 300w">'
        '<img src="/small.jpg?p"></picture>'
    )
    server.add("/twenty.html", page.encode())
    kind, found, skipped = collect(server.url + "/twenty.html")
    assert len(found) == 21 and not skipped
    assert server.hits.get("/small.jpg") is None and server.hits["/big.jpg"] == 21


def test_a_candidate_that_gives_no_image_falls_back_to_the_next(server):
    server.add("/real.jpg", image_bytes(PHOTOS[1], "JPEG"), "image/jpeg")
    server.add("/only-src.html", b'<img data-src="/gone.jpg" src="/real.jpg">')
    kind, found, skipped = collect(server.url + "/only-src.html")
    assert list(found) == [server.url + "/real.jpg"] and not skipped
    assert server.hits["/gone.jpg"] == 1


def test_a_link_to_a_larger_image_is_classified_instead_of_its_thumbnail(server):
    server.add("/full.jpg", image_bytes(PHOTOS[2], "JPEG"), "image/jpeg")
    server.add("/thumb.jpg", image_bytes(PHOTOS[2], "JPEG", size=(48, 48)), "image/jpeg")
    server.add("/view", image_bytes(SCANS[0], "PNG"), "image/png")  # served as an image, whatever its name
    server.add("/scan-thumb.png", image_bytes(SCANS[0], "PNG", size=(48, 48)), "image/png")
    server.add("/article.html", b"<html>an article</html>")
    server.add("/photo.jpg", image_bytes(PHOTOS[3], "JPEG"), "image/jpeg")
    server.add("/story-thumb.jpg", image_bytes(PHOTOS[4], "JPEG"), "image/jpeg")
    server.add(
        "/g.html",
        b'<a href="/full.jpg"><img src="/thumb.jpg"></a><a href="/view?id=7"><img src="/scan-thumb.png">'
        b'</a><a href="/article.html"><img src="/story-thumb.jpg"></a>'
        b'<a href="/missing.jpg"><img src="/photo.jpg"></a>',
    )
    kind, found, skipped = collect(server.url + "/g.html")
    u = server.url
    assert {s: f.thumbnail for s, f in found.items()} == {
        f"{u}/full.jpg": f"{u}/thumb.jpg",
        f"{u}/view?id=7": f"{u}/scan-thumb.png",
        f"{u}/story-thumb.jpg": None,
        f"{u}/photo.jpg": None,
    }
    assert found[f"{u}/full.jpg"].width == Image.open(PHOTOS[2]).width
    assert skipped == {
        f"{u}/missing.jpg": "linked image: download failed: HTTP 404; the thumbnail is classified instead"
    }
    assert server.hits.get("/thumb.jpg") is None and server.hits.get("/scan-thumb.png") is None


def test_a_thumbnail_shown_twice_still_leads_to_its_full_image(server):
    """The same small picture alone and inside a link to the large one: both are reported, once each."""
    server.add("/full.jpg", image_bytes(PHOTOS[2], "JPEG"), "image/jpeg")
    server.add("/thumb.jpg", image_bytes(PHOTOS[2], "JPEG", size=(48, 48)), "image/jpeg")
    server.add("/g.html", b'<img src="/thumb.jpg"><a href="/full.jpg"><img src="/thumb.jpg"></a><img src="/thumb.jpg">')
    kind, found, skipped = collect(server.url + "/g.html")
    u = server.url
    assert {s: f.thumbnail for s, f in found.items()} == {f"{u}/thumb.jpg": None, f"{u}/full.jpg": f"{u}/thumb.jpg"}
    assert server.hits.get("/thumb.jpg") == 1 and server.hits.get("/full.jpg") == 1
