"""PDF extraction on PDFs built here with PyMuPDF, and hostile PDFs."""

import io
import json
import struct
import time
import zlib

import numpy as np
import pymupdf
import pytest
from PIL import Image

import extract
import pdfs as extract_pdfs
from conftest import SHARED, corpus_images, image_bytes

PHOTO = corpus_images("non_medical", "photo", 1)[0]
MRI = corpus_images("medical", "mri", 1)[0]


def run(data: bytes, **options):
    """All items of a PDF given as bytes, through the same entry point as a path."""
    kind, items = extract._file_items("test.pdf", data, extract.Options(**options))
    assert kind == "pdf"
    items = list(items)
    return [i for i in items if isinstance(i, extract.Found)], [i for i in items if isinstance(i, extract.Skipped)]


def pdf_with(*streams, pages=1) -> pymupdf.Document:
    doc = pymupdf.open()
    for _ in range(pages):
        doc.new_page()
    for i, stream in enumerate(streams):
        doc[0].insert_image(pymupdf.Rect(10, 10 + 120 * i, 210, 120 + 120 * i), stream=stream)
    return doc


def mean_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(0)


def test_jpeg_png_and_grey_images_come_out_once_each_at_full_size():
    jpeg = image_bytes(PHOTO, "JPEG")
    grey = image_bytes(MRI, "PNG", mode="L")
    found, skipped = run(pdf_with(jpeg, grey).tobytes())
    assert len(found) == 2 and not skipped
    with Image.open(PHOTO) as im:
        assert (found[0].width, found[0].height) == im.size
    assert found[0].page == 1 and [f.source for f in found] == ["test.pdf#page=1&image=1", "test.pdf#page=1&image=2"]
    assert [f.index for f in found] == [1, 2] and found[0].format == "jpeg"
    assert np.abs(mean_rgb(found[0].image) - mean_rgb(Image.open(PHOTO))).max() < 6


def test_png_alpha_is_applied_as_transparency():
    rgba = Image.new("RGBA", (80, 60), (255, 0, 0, 255))
    rgba.putalpha(Image.linear_gradient("L").resize((80, 60)))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    found, _ = run(pdf_with(buffer.getvalue()).tobytes())
    assert len(found) == 1
    assert found[0].image.mode in ("RGBA", "LA")
    alpha = np.asarray(found[0].image.getchannel("A"), dtype=float)
    assert alpha[0].mean() < 40 and alpha[-1].mean() > 215  # the gradient survived


def test_a_premultiplied_soft_mask_is_applied_so_a_shape_in_one_colour_is_not_blank():
    """A mask with /Matte (premultiplied alpha, as in pymupdf_test_natural.pdf): MuPDF gives the image an opaque
    alpha of its own, which once hid the mask and left 128 black boxes there called blank."""
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 3] = np.linspace(0, 200, 80, dtype=np.uint8)[None, :]
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_image(pymupdf.Rect(10, 10, 90, 70), pixmap=pymupdf.Pixmap(pymupdf.csRGB, 80, 60, rgba.tobytes(), True))
    xref, smask = page.get_images(full=True)[0][:2]
    doc.xref_set_key(smask, "Matte", "[0 0 0]")
    found, skipped = run(doc.tobytes())
    assert len(found) == 1 and not skipped
    alpha = np.asarray(found[0].image.getchannel("A"), dtype=float)
    assert alpha[:, 0].mean() < 10 and alpha[:, -1].mean() > 190  # the mask's gradient, not MuPDF's opaque alpha


def test_cmyk_jpeg_is_not_inverted():
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 0] = np.linspace(160, 240, 64, dtype=np.uint8)  # a gradient: one flat colour is skipped as blank
    red[..., 1:] = (40, 30)
    rgb = Image.fromarray(red)
    buffer = io.BytesIO()
    rgb.convert("CMYK").save(buffer, "JPEG")
    found, _ = run(pdf_with(buffer.getvalue()).tobytes())
    r, g, b = mean_rgb(found[0].image)
    assert found[0].image.mode == "RGB"
    assert r > 150 and g < 120 and b < 120  # still red; an inverted image would be cyan


def test_image_reused_on_two_pages_is_reported_once_with_its_first_page():
    doc = pdf_with(pages=3)
    xref = doc[1].insert_image(pymupdf.Rect(0, 0, 100, 100), stream=image_bytes(PHOTO, "JPEG"))
    doc[2].insert_image(pymupdf.Rect(0, 0, 100, 100), xref=xref)
    found, _ = run(doc.tobytes())
    assert [f.page for f in found] == [2]


def _page_with_content(doc, content: bytes):
    page = doc.new_page()
    xref = doc.get_new_xref()
    doc.update_object(xref, "<<>>")
    doc.update_stream(xref, content)
    doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
    return page


def test_inline_images_are_found_and_tiny_ones_skipped():
    doc = pymupdf.open()
    big = np.asarray(Image.open(MRI).convert("L").resize((64, 48)))
    content = (
        b"q 200 0 0 150 50 50 cm BI /W 64 /H 48 /CS /G /BPC 8 ID " + big.tobytes() + b"\nEI Q\n"
        b"q 10 0 0 10 300 300 cm BI /W 4 /H 4 /CS /G /BPC 8 ID " + bytes(range(16)) + b"\nEI Q\n"
    )
    _page_with_content(doc, content)
    found, skipped = run(doc.tobytes())
    assert len(found) == 1 and (found[0].width, found[0].height) == (64, 48)
    assert found[0].inline and found[0].source == "test.pdf#page=1&image=1"
    assert np.abs(np.asarray(found[0].image.convert("L"), dtype=float) - big).mean() < 2
    assert any("smaller than 32 px" in s.reason for s in skipped)


def test_tiny_icon_is_skipped_with_its_size():
    icon = image_bytes(PHOTO, "PNG", size=(16, 16))
    found, skipped = run(pdf_with(icon, image_bytes(PHOTO, "JPEG")).tobytes())
    assert len(found) == 1
    assert [s.reason for s in skipped] == ["smaller than 32 px (16x16)"]


def test_min_size_option_lets_the_icon_through():
    found, _ = run(pdf_with(image_bytes(PHOTO, "PNG", size=(16, 16))).tobytes(), min_size=8)
    assert len(found) == 1


def test_pdf_without_images_is_a_normal_empty_result():
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "no pictures here")
    assert run(doc.tobytes()) == ([], [])


def test_encrypted_pdf_needing_a_password_is_one_clear_error():
    data = pdf_with(image_bytes(PHOTO, "JPEG")).tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner"
    )
    with pytest.raises(
        extract.InputError, match=r"encrypted PDF that needs a password \(--password PASSWORD opens it\)"
    ):
        run(data)


def test_encrypted_pdf_with_empty_user_password_opens():
    data = pdf_with(image_bytes(PHOTO, "JPEG")).tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="", owner_pw="owner"
    )
    found, _ = run(data)
    assert len(found) == 1


def test_truncated_pdf_gives_an_error_or_what_survived_never_a_crash():
    data = pdf_with(image_bytes(PHOTO, "JPEG"), image_bytes(MRI, "JPEG")).tobytes()
    for cut in (len(data) // 2, 200, 20):
        try:
            found, _ = run(data[:cut])
        except extract.InputError as exc:
            assert "\n" not in str(exc) and str(exc)
        else:
            assert len(found) <= 2


def test_zero_page_pdf_is_one_clear_error():
    data = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R/Size 3>>\n%%EOF\n"
    )
    with pytest.raises(extract.InputError, match="no pages"):
        run(data)


def test_not_a_pdf_at_all():
    with pytest.raises(extract.InputError, match="not a readable PDF"):
        run(b"%PDF-1.7\n" + b"\x00garbage" * 10)


def test_image_stream_that_would_decode_to_a_decompression_bomb_is_refused_unread():
    doc = pdf_with(image_bytes(PHOTO, "PNG", size=(64, 64), mode="L"))
    xref = doc[0].get_images()[0][0]
    doc.update_stream(xref, zlib.compress(b"\0" * 1_000_000), compress=False)
    doc.xref_set_key(xref, "Filter", "/FlateDecode")
    doc.xref_set_key(xref, "Width", "60000")
    doc.xref_set_key(xref, "Height", "60000")
    found, skipped = run(doc.tobytes())
    assert not found
    assert "over the pixel cap" in skipped[0].reason


def test_max_images_caps_a_pdf_and_says_so():
    doc = pdf_with(*[image_bytes(p, "JPEG") for p in corpus_images("non_medical", "photo", 3)])
    found, skipped = run(doc.tobytes(), max_images=2)
    assert len(found) == 2
    assert [s.reason for s in skipped] == ["over --max-images (2)"]


def test_keep_encoded_returns_file_bytes_for_saving():
    found, _ = run(pdf_with(image_bytes(PHOTO, "JPEG")).tobytes(), keep_encoded=True)
    assert found[0].ext == "jpg" and found[0].encoded[:2] == b"\xff\xd8"


def test_a_pdf_that_takes_too_long_stops_with_what_it_found():
    doc = pymupdf.open()
    for _ in range(3):
        doc.new_page().insert_image(pymupdf.Rect(0, 0, 100, 100), stream=image_bytes(PHOTO, "JPEG"))
    kind, items = extract._file_items("slow.pdf", doc.tobytes(), extract.Options(pdf_time_limit=0.0))
    with pytest.raises(extract.InputError, match="stopped at page 1 of 3 after 0 s"):
        list(items)


# ---------------------------------------------------------------- annotations, page ranges, passwords, identity


def _image_xobject(doc, jpeg: bytes) -> int:
    """A JPEG image XObject written by hand, drawn by nothing yet."""
    with Image.open(io.BytesIO(jpeg)) as im:
        width, height = im.size
    xref = doc.get_new_xref()
    doc.update_object(
        xref,
        f"<</Type/XObject/Subtype/Image/Width {width}/Height {height}/ColorSpace/DeviceRGB"
        f"/BitsPerComponent 8/Filter/DCTDecode/Length {len(jpeg)}>>",
    )
    doc.update_stream(xref, jpeg, compress=False)
    return xref


def _form_drawing(doc, image_xref: int) -> int:
    """A Form XObject (an appearance stream) that draws one image."""
    xref = doc.get_new_xref()
    doc.update_object(
        xref, f"<</Type/XObject/Subtype/Form/BBox[0 0 100 100]/Resources<</XObject<</Im0 {image_xref} 0 R>>>>>>"
    )
    doc.update_stream(xref, b"q 100 0 0 100 0 0 cm /Im0 Do Q")
    return xref


def test_images_in_annotation_and_widget_appearances_are_found_once_each():
    photos = [image_bytes(p, "JPEG") for p in corpus_images("non_medical", "photo", 4)]
    doc = pymupdf.open()
    for _ in range(3):
        doc.new_page()
    page = doc[0]
    page.add_stamp_annot(pymupdf.Rect(50, 50, 250, 250), stamp=photos[0])  # an image stamp
    widget = pymupdf.Widget()
    widget.field_type, widget.field_name, widget.field_value = pymupdf.PDF_WIDGET_TYPE_CHECKBOX, "ok", True
    widget.rect = pymupdf.Rect(300, 300, 400, 400)
    page.add_widget(widget)
    on, off = (_form_drawing(doc, _image_xobject(doc, photo)) for photo in photos[1:3])
    [field] = list(page.widgets())
    doc.xref_set_key(field.xref, "AP/N", f"<</Yes {on} 0 R/Off {off} 0 R>>")  # the checked state shows photo 1
    hidden = page.add_stamp_annot(pymupdf.Rect(50, 300, 250, 500), stamp=photos[3])
    doc.xref_set_key(hidden.xref, "F", "2")  # Hidden: never shown, not an image of the page
    first_annot = doc.xref_get_key(page.xref, "Annots")[1].strip("[]").split()[0]
    doc.xref_set_key(doc[1].xref, "Annots", f"[{first_annot} 0 R]")  # page 1's stamp again: not reported again
    stamp = doc[2].add_stamp_annot(pymupdf.Rect(50, 50, 250, 250), stamp=photos[1])
    found, skipped = run(doc.tobytes())
    assert not skipped
    assert [(f.source, f.page) for f in found] == [
        ("test.pdf#page=1&image=1", 1),
        ("test.pdf#page=1&image=2", 1),
        ("test.pdf#page=3&image=1", 3),
    ]
    assert stamp.xref
    widths = [f.width for f in found[:2]]
    with Image.open(io.BytesIO(photos[0])) as stamp, Image.open(io.BytesIO(photos[1])) as checked:
        assert sorted(widths) == sorted([stamp.width, checked.width])


def test_pages_option_reads_only_those_pages():
    doc = pymupdf.open()
    photos = corpus_images("non_medical", "photo", 4)
    for path in photos:
        doc.new_page().insert_image(pymupdf.Rect(0, 0, 200, 200), stream=image_bytes(path, "JPEG"))
    found, _ = run(doc.tobytes(), pages=extract_pdfs.parse_pages("2-3"))
    assert [f.page for f in found] == [2, 3]
    found, _ = run(doc.tobytes(), pages=extract_pdfs.parse_pages("1,4-"))
    assert [f.page for f in found] == [1, 4]
    assert extract_pdfs.parse_pages("3-10, 12") == ((3, 10), (12, 12))
    with pytest.raises(extract.InputError, match="--pages selects none of the PDF's 4 pages"):
        run(doc.tobytes(), pages=extract_pdfs.parse_pages("7-9"))
    for bad in ("0", "5-3", "a-b", "", "1,,2"):
        with pytest.raises(ValueError):
            extract_pdfs.parse_pages(bad)


def test_password_opens_an_encrypted_pdf_and_a_wrong_one_is_one_clear_error():
    data = pdf_with(image_bytes(PHOTO, "JPEG")).tobytes(
        encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="s3cret", owner_pw="owner"
    )
    found, _ = run(data, password="s3cret")
    assert len(found) == 1
    with pytest.raises(extract.InputError) as info:
        run(data, password="wrong-guess")
    assert str(info.value) == "encrypted PDF: the --password given does not open it"
    assert "wrong-guess" not in repr(extract.Options(password="wrong-guess"))


def test_an_image_that_cannot_be_decoded_stays_a_skipped_image():
    doc = pdf_with(image_bytes(PHOTO, "JPEG"), image_bytes(MRI, "JPEG"))
    xref = doc[0].get_images()[1][0]
    doc.update_stream(xref, b"\x00" * 500, compress=False)  # a JPEG 2000 stream that is not one
    doc.xref_set_key(xref, "Filter", "/JPXDecode")
    found, skipped = run(doc.tobytes())
    assert len(found) == 1 and found[0].source == "test.pdf#page=1&image=1"
    assert len(skipped) == 1 and skipped[0].source == "test.pdf#page=1&image=2"
    assert "could not be decoded" in skipped[0].reason


def test_images_are_numbered_in_the_order_the_page_draws_them():
    """image=1 is the first image the content stream draws, whatever order the resources list them in."""
    doc = pymupdf.open()
    page = doc.new_page()
    first_listed = image_bytes(corpus_images("medical", "ct", 1)[0], "PNG", size=(120, 80))
    drawn_first = image_bytes(corpus_images("non_medical", "photo", 1)[0], "PNG", size=(90, 60))
    page.insert_image(pymupdf.Rect(50, 300, 350, 500), stream=first_listed)
    page.insert_image(pymupdf.Rect(50, 50, 350, 250), stream=drawn_first, overlay=False)  # drawn before the rest
    found = [
        item
        for item in extract.pdf_images(doc.tobytes(), "x.pdf", extract.Options())
        if isinstance(item, extract.Found)
    ]
    assert [(f.source, f.width) for f in found] == [("x.pdf#page=1&image=1", 90), ("x.pdf#page=1&image=2", 120)]


def _segment(number: int, kind: int, data: bytes) -> bytes:
    """One segment of an embedded JBIG2 stream: number, type, no referred segments, page 1, data length."""
    return struct.pack(">IBBBI", number, kind, 0, 1, len(data)) + data


def jbig2_pdf(width: int, height: int) -> bytes:
    """A page drawing one 200x200 JBIG2 image whose stream declares a `width`x`height` page and generic region."""
    page_info = struct.pack(">IIIIBH", width, height, 0, 0, 0, 0)
    region = struct.pack(">IIIIB", width, height, 0, 0, 0) + bytes([0, 3, 0xFF, 0xFD, 0xFF, 2, 0xFE, 0xFE, 0xFE])
    stream = _segment(0, 48, page_info) + _segment(1, 38, region + b"\0" * 64)
    doc = pymupdf.open()
    page = doc.new_page()
    xref = doc.get_new_xref()
    doc.update_object(
        xref, "<< /Type /XObject /Subtype /Image /Width 200 /Height 200 /ColorSpace /DeviceGray /BitsPerComponent 1 >>"
    )
    doc.update_stream(xref, stream, compress=0)
    doc.xref_set_key(xref, "Filter", "/JBIG2Decode")
    doc.xref_set_key(page.xref, "Resources", f"<< /XObject << /Im1 {xref} 0 R >> >>")
    contents = doc.get_new_xref()
    doc.update_object(contents, "<< >>")
    doc.update_stream(contents, b"q 200 0 0 200 50 50 cm /Im1 Do Q")
    doc.xref_set_key(page.xref, "Contents", f"{contents} 0 R")
    return doc.tobytes()


def test_a_jbig2_bomb_is_refused_from_its_headers_before_any_decoding(tmp_path, capsys):
    """MuPDF takes about a minute on this stream before it gives up; its declared size says so at once."""
    import final_classification_script as cli

    bomb = tmp_path / "bomb.pdf"
    bomb.write_bytes(jbig2_pdf(100_000, 100_000))
    start = time.monotonic()
    code = cli.main(["--json", str(bomb), "--quiet"])
    assert time.monotonic() - start < 30
    assert code == 0
    [entry] = json.loads(capsys.readouterr().out)["inputs"]
    assert entry["images"] == [] and [s["reason"] for s in entry["skipped"]] == [
        "JBIG2 image declares a 100000x100000 bitmap, over the pixel cap (not decoded)"
    ]
    small = pymupdf.open(stream=jbig2_pdf(300, 200))
    assert extract_pdfs.jbig2_declared_size(small.xref_stream_raw(small[0].get_images()[0][0])) == (300, 200)


def test_a_page_out_of_time_skips_its_other_images_and_says_so():
    doc = pdf_with(image_bytes(PHOTO, "PNG"), image_bytes(MRI, "PNG"), image_bytes(PHOTO, "JPEG", size=(90, 90)))
    found, skipped = run(doc.tobytes(), pdf_page_time_limit=0)
    assert found == [] and len(skipped) == 3
    assert all(s.reason == "page 1 ran past 0 s: its other images are not read" for s in skipped)


DIHEDRAL = [(1, 0, 0, 1), (-1, 0, 0, 1), (1, 0, 0, -1), (-1, 0, 0, -1), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, -1, 0)]
DIHEDRAL.append((0, -1, -1, 0))


def test_images_drawn_flipped_or_turned_come_out_as_the_page_shows_them():
    """A web capture stores pictures upside down and flips them with its `cm` (a face then read as medical): each
    image is turned the way the page shows it, checked against MuPDF's own rendering of the page, for all eight
    flips and quarter turns; a turned image's size is the shown one."""
    doc = pymupdf.open()
    for k, (a, b, c, d) in enumerate(DIHEDRAL):
        picture = Image.open(corpus_images("non_medical", "photo", 8)[k]).convert("RGB").resize((90, 60))
        picture.paste((255, 0, 0), (0, 0, 60, 12))  # marks no flip or turn leaves where they were
        picture.paste((0, 0, 255), (70, 40, 90, 60))
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        page = doc.new_page(width=400, height=400)
        page.insert_image(pymupdf.Rect(0, 0, 90, 60), stream=buffer.getvalue())
        name = page.get_images(full=True)[0][7]
        a, b, c, d = (150 * v for v in (a, b, c, d))  # drawn 150 pt square, centred on the page
        e, f = 200 - (a + c) / 2, 200 - (b + d) / 2
        doc.update_stream(page.get_contents()[0], f"q {a} {b} {c} {d} {e} {f} cm /{name} Do Q".encode())
    data = doc.tobytes()
    found, _ = run(data)
    assert len(found) == 8
    shown_doc = pymupdf.open(stream=data)
    for k, item in enumerate(found):
        page = shown_doc[k]
        pix = page.get_pixmap(clip=pymupdf.Rect(page.get_image_info()[0]["bbox"]), dpi=72)
        shown = np.asarray(Image.frombytes("RGB", (pix.width, pix.height), pix.samples).resize((32, 32)), float)
        stored = Image.open(io.BytesIO(shown_doc.extract_image(page.get_images()[0][0])["image"]))
        as_stored = np.asarray(stored.convert("RGB").resize((32, 32)), float)
        assert np.abs(np.asarray(item.image.convert("RGB").resize((32, 32)), float) - shown).mean() < 8, DIHEDRAL[k]
        if k:  # the stored pixels are not what the page shows
            assert np.abs(as_stored - shown).mean() > 20, DIHEDRAL[k]
        assert (item.width, item.height) == ((90, 60) if k < 4 else (60, 90))


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_a_jpeg_mupdf_cannot_decode_is_reported_damaged_not_blank(damage):
    """MuPDF fills a JPEG stream it cannot decode with one colour: that is damage to report, not a blank image;
    a JPEG cut short still shows its top rows and is classified."""
    doc = pdf_with(image_bytes(PHOTO, "JPEG"))
    xref = next(x for x in range(1, doc.xref_length()) if doc.xref_get_key(x, "Subtype")[1] == "/Image")
    raw = doc.xref_stream_raw(xref)
    broken = b"w" * 10 + raw[10:] if damage == "header" else raw[: len(raw) // 2]
    doc.update_stream(xref, broken, compress=False)
    doc.xref_set_key(xref, "Filter", "/DCTDecode")  # update_stream drops the filter: the stream stays a JPEG
    found, skipped = run(doc.tobytes())
    if damage == "header":
        assert not found and len(skipped) == 1 and skipped[0].undecodable
        assert skipped[0].reason == (
            "damaged image data (jpeg error: Not a JPEG file: starts with 0x77 0x77); MuPDF drew it blank"
        )
    else:
        assert len(found) == 1 and not skipped


@pytest.mark.skipif(not (SHARED / "pdfs").exists(), reason="no shared PDFs")
def test_the_shared_pdf_with_a_broken_jpeg_says_so():
    found, skipped = run((SHARED / "pdfs" / "qpdf_bad-jpeg.pdf").read_bytes())
    assert not found and [s.reason.split(" (")[0] for s in skipped] == ["damaged image data"]
