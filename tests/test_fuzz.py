"""Property-based tests: the page image finder on generated HTML, PDF extraction on mutated PDF bytes.

Bounded in time (a fixed number of examples, no deadline per example) so they run in the normal suite.
"""

import io
import os

import pymupdf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import extract
import pages
from conftest import corpus_images, image_bytes

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

url_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
urlish = st.one_of(
    url_text,
    st.sampled_from(
        [
            "a.png",
            "/b.jpg",
            "//cdn.x/c.gif",
            "data:image/png;base64,iVBOR",
            "javascript:x",
            "file:///etc/passwd",
            "  spaced.png  ",
            "x.jpg 1x, y.jpg 2x",
            "u,1.jpg 100w,u,2.jpg 200w",
            "http://[::1",
            "http://a:b:c/",
            "#frag",
            "",
            "url(q.png)",
            "%zz.png",
        ]
    ),
)
attribute = st.sampled_from(
    [
        "src",
        "srcset",
        "data-src",
        "data-srcset",
        "data-lazy-src",
        "data-original",
        "style",
        "data-bg",
        "href",
        "poster",
        "content",
        "property",
        "name",
    ]
)
tag = st.sampled_from(["img", "source", "picture", "div", "meta", "base", "style", "video", "noscript", "link", "p"])


@st.composite
def html_documents(draw):
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(tag)
        attrs = " ".join(f'{draw(attribute)}="{draw(urlish)}"' for _ in range(draw(st.integers(0, 3))))
        body = draw(st.one_of(st.just(""), url_text, st.just("background-image:url(z.png)")))
        parts.append(
            draw(
                st.sampled_from(
                    [f"<{name} {attrs}>{body}</{name}>", f"<{name} {attrs}>", f"<{name} {attrs}", f"{body}<"]
                )
            )
        )
    return "".join(parts)


@FUZZ
@given(html_documents(), st.sampled_from(["https://example.org/a/b.html", "http://127.0.0.1:8/", "https://x.y"]))
def test_finder_returns_unique_absolute_urls_for_any_html(html, base):
    urls = extract.find_image_urls(html, base)
    assert len(urls) == len(set(urls))
    for url in urls:
        assert url and url == url.strip()
        if not url.lower().startswith(("data:", "javascript:", "file:")):
            assert "://" in url or ":" in url.split("/")[0], url


@FUZZ
@given(st.binary(max_size=3000))
def test_finder_survives_arbitrary_bytes(data):
    extract.find_image_urls(data, "https://example.org/")


@FUZZ
@given(st.text(max_size=200))
def test_srcset_parser_never_fails(value):
    for url, size in pages.parse_srcset(value):
        assert url and not url.endswith(",") and size >= 0


def _seed_pdf() -> bytes:
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(10, 10, 200, 200), stream=image_bytes(corpus_images("medical", "ct", 1)[0], "JPEG"))
    rgba = Image.new("RGBA", (48, 40), (0, 128, 255, 128))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    page.insert_image(pymupdf.Rect(210, 10, 300, 100), stream=buffer.getvalue())
    page.insert_text((50, 400), "text")
    return doc.tobytes(garbage=0, deflate=False)


SEED = _seed_pdf()


@st.composite
def mutated_pdfs(draw):
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "dup"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[max(0, at - 32) : at]
        if not data:
            data = bytearray(b"%PDF-")
    return bytes(data)


@FUZZ
@given(mutated_pdfs())
def test_pdf_extraction_on_mutated_bytes_yields_images_or_one_clear_error(data):
    try:
        kind, items = extract._file_items("fuzz.pdf", data, extract.Options())
        for item in items:
            assert isinstance(item, (extract.Found, extract.Skipped))
            if isinstance(item, extract.Found):
                item.image.load()
                assert item.width > 0 and item.height > 0
    except extract.InputError as exc:
        assert str(exc) and "\n" not in str(exc)
