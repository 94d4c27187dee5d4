"""No placeholder classified, no failure hidden: lazy pages whose real images 404, blank images, --strict."""

import io
import json

import numpy as np
import pymupdf
from PIL import Image

from conftest import corpus_images, image_bytes
from test_cli_safety import error_lines, run

PHOTO, SCAN = corpus_images("non_medical", "photo", 1)[0], corpus_images("medical", "ct", 1)[0]
TRANSPARENT_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_placeholders_never_stand_in_and_failed_lazy_images_are_listed(server):
    server.add("/img/real.jpg", image_bytes(PHOTO, "JPEG"), "image/jpeg")
    server.add("/img/spacer.gif", _png(Image.new("RGBA", (400, 400), (0, 0, 0, 0))), "image/gif")
    server.add("/img/tiny.png", _png(Image.new("RGB", (1, 1), (255, 255, 255))), "image/png")
    server.add("/img/clear.png", _png(Image.new("RGBA", (400, 400), (0, 0, 0, 0))), "image/png")
    server.add(
        "/page.html",
        f'''<html><body>
        <img src="{TRANSPARENT_GIF}" data-src="/img/missing.jpg" width="400" height="400">
        <img src="/img/spacer.gif" data-src="/img/real.jpg">
        <img src="/img/tiny.png" data-lazy-src="/img/gone.png">
        <img src="/img/clear.png">
        </body></html>'''.encode(),
    )
    done = run(["--json", server.url + "/page.html", "--quiet"])
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)["inputs"]
    assert [im["source"] for im in entry["images"]] == [server.url + "/img/real.jpg"]
    reasons = {s["source"].rsplit("/", 1)[1]: s["reason"] for s in entry["skipped"]}
    assert reasons == {
        "missing.jpg": "download failed: HTTP 404",
        "gone.png": "download failed: HTTP 404",
        "clear.png": "blank image (fully transparent)",
    }
    assert entry["downloads_failed"] == 2
    assert server.hits.get("/img/spacer.gif") is None, "a placeholder beside a lazy URL is never fetched"


def test_a_page_whose_every_download_fails_says_so_and_strict_makes_it_a_failure(server):
    server.add(
        "/dead.html",
        b'<img data-src="/a.jpg" src="/blank.gif"><img src="/b.png"><a href="/c.jpg"><img src="/d.png"></a>',
    )
    done = run(["--json", server.url + "/dead.html", "--quiet"])
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)["inputs"]
    assert entry["error"] is None and entry["images"] == [] and entry["downloads_failed"] == 4
    assert [s["reason"] for s in entry["skipped"] if s["reason"].startswith("linked")] == [
        "linked image: download failed: HTTP 404; the thumbnail could not be read either"
    ]
    assert (
        f"note: {server.url}/dead.html: every image download failed (4 downloads; listed as skipped); "
        "--strict makes that a failed input" in done.stderr
    )
    table = run([server.url + "/dead.html", "--quiet"]).stdout
    assert "note: every image download failed (4 downloads; listed as skipped)" in table
    strict = run(["--jsonl", server.url + "/dead.html", "--quiet", "--strict"])
    assert strict.returncode == 1
    assert error_lines(strict.stderr) == [
        f"error: {server.url}/dead.html: every image download failed (4 downloads; listed as skipped)"
    ]
    line = [json.loads(x) for x in strict.stdout.splitlines() if '"type": "input"' in x][0]
    assert line["status"] == "failed" and line["downloads_failed"] == 4


def test_blank_images_in_a_pdf_and_a_folder_are_skipped_not_classified(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(10, 10, 200, 200), stream=_png(Image.new("RGB", (300, 300), (255, 255, 255))))
    page.insert_image(pymupdf.Rect(10, 220, 200, 400), stream=image_bytes(SCAN, "JPEG"))
    folder = tmp_path / "folder"
    folder.mkdir()
    doc.save(folder / "paper.pdf")
    noise = np.full((100, 100), 128, np.uint8)
    noise[::2] = 130  # two levels apart: still one colour to the eye
    (folder / "grey.png").write_bytes(_png(Image.fromarray(noise)))
    (folder / "clear.png").write_bytes(_png(Image.new("RGBA", (200, 200), (255, 0, 0, 0))))
    (folder / "photo.jpg").write_bytes(image_bytes(PHOTO, "JPEG"))
    done = run(["--json", str(folder), "--quiet"])
    assert done.returncode == 0, done.stderr
    [entry] = json.loads(done.stdout)["inputs"]
    assert sorted(im["source"].rsplit("/", 1)[1] for im in entry["images"]) == ["paper.pdf#page=1&image=2", "photo.jpg"]
    assert sorted((s["source"].rsplit("/", 1)[1], s["reason"]) for s in entry["skipped"]) == [
        ("clear.png", "blank image (fully transparent)"),
        ("grey.png", "blank image (one colour)"),
        ("paper.pdf#page=1&image=1", "blank image (one colour)"),
    ]


def test_a_url_with_an_unbalanced_bracket_is_no_placeholder_and_no_crash():
    """Found by the fuzz test: urlsplit raises on "A://[", which must not stop a page's other images."""
    import pages

    assert not pages.is_placeholder("A://[")
    assert pages.is_placeholder("data:image/gif;base64,R0lGOD")
    html = '<img src="" src=""><img src="A://["><img data-src="0"><img src="/real.png">'
    found = pages.find_image_urls(html, "https://example.org/a/b.html")
    assert "https://example.org/real.png" in found
