"""Image formats as medical users hold them: 16-bit and float greyscale, DICOM, TIFF stacks, animations;
files identified by content in folders; saved pages read from disk; unreadable inputs are failures."""

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

import extract
import images
from conftest import corpus_images, image_bytes

XRAYS = corpus_images("medical", "xray", 3)
PHOTOS = corpus_images("non_medical", "photo", 4)
OPTIONS = images.Options()


def encode(array_or_image, fmt: str, **params) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decoded(data: bytes, source: str = "x", **options) -> list:
    return list(images.decode_images(data, source, images.Options(**options)))


def found(items: list) -> list:
    return [i for i in items if isinstance(i, images.Found)]


def skipped(items: list) -> list:
    return [i for i in items if isinstance(i, images.Skipped)]


def dicom_bytes(name: str, change=None) -> bytes:
    """A pydicom test file (bundled with pydicom, no network), optionally changed before it is written."""
    path = get_testdata_file(name)
    if change is None:
        with open(path, "rb") as f:
            return f.read()
    ds = pydicom.dcmread(path)
    change(ds)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- 1. pixel depth


def test_sixteen_and_thirty_two_bit_grey_are_scaled_by_their_range_not_clipped():
    grey = np.asarray(Image.open(XRAYS[0]).convert("L"))
    for array, fmt in (
        (grey.astype(np.uint16) * 16, "PNG"),
        (grey.astype(np.uint16) * 257, "TIFF"),
        (grey.astype(np.int32) * 64 - 5000, "TIFF"),
        (grey.astype(np.float32) / 255, "TIFF"),
    ):
        [item] = decoded(encode(array, fmt))
        out = np.asarray(item.image, dtype=float)
        assert item.image.mode == "L"
        assert np.abs(out - grey).mean() < 2, (array.dtype, fmt)  # an 8-bit mapping would be near-white or black


def test_sixteen_bit_rgb_png_is_stretched_to_its_range():
    rgb = np.asarray(Image.open(PHOTOS[0]).convert("RGB").resize((64, 48)))
    samples = (rgb.astype(np.uint16) * 16).astype(">u2")  # 12-bit data in 16-bit samples: high bytes 0..15
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    [item] = decoded(png)
    out = np.asarray(item.image, dtype=float)
    assert item.image.mode == "RGB" and out.max() > 240 and abs(out.mean() - rgb.mean()) < 30  # not near-black
    assert np.corrcoef(out.ravel(), rgb.ravel())[0, 1] > 0.95


def test_the_same_xray_at_8_and_16_bits_gets_the_same_label(shipped_model):
    for path in XRAYS:
        grey = np.asarray(Image.open(path).convert("L"))
        variants = [
            encode(grey, "PNG"),
            encode(grey.astype(np.uint16) * 257, "PNG"),
            encode(grey.astype(np.uint16) * 16, "PNG"),
            encode(grey.astype(np.uint16) * 16 + 1000, "TIFF"),
        ]
        probabilities = shipped_model.predict([decoded(v)[0].image for v in variants])
        assert max(probabilities) - min(probabilities) <= 0.02, (path.name, probabilities)
        assert len({shipped_model.label(p) for p in probabilities}) == 1


# ---------------------------------------------------------------- 2. DICOM


def test_dicom_ct_is_read_with_its_rescale_and_window():
    def window(ds):
        ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window on Hounsfield units

    [item] = decoded(dicom_bytes("CT_small.dcm", window), "ct.dcm")
    assert (item.width, item.height, item.format, item.image.mode) == (128, 128, "dicom", "L")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip((hounsfield - (40 - 200)) / 400 * 255, 0, 255)
    assert np.abs(np.asarray(item.image, dtype=float) - expected).max() <= 1.0


def test_monochrome1_is_inverted():
    [normal] = decoded(dicom_bytes("CT_small.dcm"))
    [inverted] = decoded(
        dicom_bytes("CT_small.dcm", lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    )
    assert np.array_equal(np.asarray(inverted.image), 255 - np.asarray(normal.image))


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_and_other_transfer_syntaxes_decode_to_the_same_pixels(name):
    [reference] = decoded(dicom_bytes("MR_small.dcm"))
    [item] = decoded(dicom_bytes(name))
    assert np.array_equal(np.asarray(item.image), np.asarray(reference.image))


@pytest.mark.parametrize(
    "name",
    [
        "examples_palette.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "examples_jpeg2k.dcm",
        "SC_rgb_rle_16bit.dcm",
    ],
)
def test_colour_dicom_comes_out_rgb(name):
    [item] = decoded(dicom_bytes(name))
    pixels = np.asarray(item.image, dtype=float)
    assert item.image.mode == "RGB" and pixels.std() > 10
    if name.startswith("SC_rgb"):  # dcmtk's test pattern: red, green and blue bands, whatever the encoding
        assert pixels[..., 0].max() > 200 and pixels[..., 2].max() > 200


def test_multi_frame_dicom_gives_the_middle_frame_or_every_frame():
    items = decoded(dicom_bytes("examples_ybr_color.dcm"), "us.dcm")
    assert [i.source for i in found(items)] == ["us.dcm#frame=16"] and found(items)[0].frame == 16
    assert [s.reason for s in skipped(items)] == [
        "29 other frames of a multi-frame DICOM not classified (--all-frames classifies each)"
    ]
    every = decoded(dicom_bytes("SC_rgb_rle_2frame.dcm"), "two.dcm", all_frames=True)
    assert [i.source for i in every] == ["two.dcm#frame=1", "two.dcm#frame=2"]


def test_hostile_dicom_is_one_clear_skip_never_a_traceback():
    ct = dicom_bytes("CT_small.dcm")

    def no_frames(ds):
        ds.NumberOfFrames = 0

    cases = {
        "truncated": ct[: len(ct) // 2],
        "truncated pixels": dicom_bytes("MR_truncated.dcm"),
        "wrong syntax": ct.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0", 1),
        "zero frames": dicom_bytes("CT_small.dcm", no_frames),  # "wrong syntax" says RLE, holds raw pixels
        "garbage after the preamble": ct[:132] + bytes(range(256)) * 20,
        "no image": dicom_bytes("rtplan.dcm"),
    }
    for case, data in cases.items():
        items = decoded(data, "bad.dcm")
        assert len(items) == 1 and isinstance(items[0], images.Skipped), case
        assert "DICOM" in items[0].reason and "\n" not in items[0].reason, (case, items[0].reason)
    assert "RLE Lossless" in decoded(cases["wrong syntax"])[0].reason
    assert "Explicit VR Little Endian" in decoded(cases["truncated pixels"])[0].reason
    assert "0 frames" in decoded(cases["zero frames"])[0].reason


# ---------------------------------------------------------------- 3. frames


def test_every_page_of_a_tiff_stack_up_to_max_images():
    pages = [Image.open(p).convert("L").resize((64, 64)) for p in XRAYS]
    stack = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    items = decoded(stack, "scan.tif")
    assert [(i.source, i.frame) for i in items] == [(f"scan.tif#frame={n}", n) for n in (1, 2, 3)]
    for item, page in zip(items, pages):
        assert np.array_equal(np.asarray(item.image), np.asarray(page))
    capped = decoded(stack, "scan.tif", max_images=2)
    assert len(found(capped)) == 2 and skipped(capped)[0].source == "scan.tif#frame=3"


def test_animation_gives_its_first_frame_and_says_how_many_were_left():
    frames = [Image.open(p).convert("RGB").resize((64, 64)) for p in PHOTOS]
    for fmt in ("GIF", "WEBP"):
        items = decoded(encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100), "a")
        assert len(found(items)) == 1
        assert [s.reason for s in skipped(items)] == [
            f"3 more frames of an animated {fmt} not classified (only the first is)"
        ]


# ---------------------------------------------------------------- 4, 5, 8: inputs by content


def items_of(text: str, **options):
    kind, items = extract.open_input(text, extract.Options(**options))
    items = list(items)
    return kind, found(items), skipped(items)


def test_folder_reads_by_content_and_lists_image_named_files_that_are_not(tmp_path):
    (tmp_path / "photo.dat").write_bytes(image_bytes(PHOTOS[0], "JPEG"))
    (tmp_path / "scan").write_bytes(dicom_bytes("CT_small.dcm"))
    (tmp_path / "picture.avif").write_bytes(image_bytes(PHOTOS[1], "AVIF"))
    (tmp_path / "notes.txt").write_text("not an image, passed over")
    (tmp_path / "archive.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "fake.png").write_text("this is text")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "error.jpg").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (tmp_path / "cut.png").write_bytes(image_bytes(PHOTOS[2], "PNG")[:3000])  # an image that does not decode
    (tmp_path / "BMI.txt").write_text("BMI 24.1, weight 70 kg")  # starts like a BMP, is text: passed over
    kind, got, skips = items_of(str(tmp_path))
    assert kind == "folder"
    assert sorted((i.source.rsplit("/", 1)[1], i.format) for i in got) == [
        ("photo.dat", "jpeg"),
        ("picture.avif", "avif"),
        ("scan", "dicom"),
    ]
    reasons = {s.source.rsplit("/", 1)[1]: s.reason for s in skips}
    assert reasons.pop("cut.png").startswith("not a decodable image")
    assert reasons == {
        "empty.jpg": "empty file: not an image, PDF, DICOM or web page",
        "error.jpg": "HTML error page: not an image, PDF, DICOM or web page",
        "fake.png": "text file: not an image, PDF, DICOM or web page",
    }


@pytest.mark.parametrize(
    "content, message",
    [
        (b"Dear reviewer, the PDF follows.\n", "text file: not an image, PDF, DICOM or web page"),
        (b"", "empty file: not an image, PDF, DICOM or web page"),
        (bytes(range(256)) * 8, "unknown binary: not an image, PDF, DICOM or web page"),
        (b"<html><body><h1>403 Forbidden</h1></body></html>", "HTML error page: not an image, PDF, DICOM or web page"),
    ],
)
def test_a_local_file_that_is_nothing_readable_is_a_failed_input(tmp_path, content, message):
    path = tmp_path / "paper.pdf"
    path.write_bytes(content)
    with pytest.raises(extract.InputError) as info:
        items_of(str(path))
    assert str(info.value) == message


def test_a_truncated_image_file_is_a_failed_input(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(image_bytes(XRAYS[0], "PNG")[:2000])
    with pytest.raises(extract.InputError, match="damaged or truncated image"):
        items_of(str(path))


def test_url_whose_content_is_nothing_readable_is_a_failed_input(server):
    server.add("/empty", b"", "image/png")
    server.add("/blob", bytes(range(256)) * 8, "application/octet-stream")
    server.add("/scan.dcm", dicom_bytes("CT_small.dcm"), "application/octet-stream")
    with pytest.raises(extract.InputError, match="^empty file"):
        items_of(server.url + "/empty")
    with pytest.raises(extract.InputError, match="^unknown binary"):
        items_of(server.url + "/blob")
    kind, got, _ = items_of(server.url + "/scan.dcm")
    assert kind == "image" and [i.format for i in got] == ["dicom"]


def test_saved_page_reads_its_folder_and_downloads_absolute_urls(tmp_path, server, monkeypatch):
    server.add("/remote.jpg", image_bytes(PHOTOS[2], "JPEG"), "image/jpeg")
    site = tmp_path / "site"
    (site / "page_files").mkdir(parents=True)
    (site / "page_files" / "scan.png").write_bytes(image_bytes(XRAYS[0], "PNG"))
    (tmp_path / "secret.png").write_bytes(image_bytes(PHOTOS[3], "PNG"))
    (site / "page.htm").write_text(
        f'<!DOCTYPE html><img src="page_files/scan.png"><img src="../secret.png">'
        f'<img src="file:///etc/hostname"><img src="{server.url}/remote.jpg">'
    )
    kind, got, skips = items_of(str(site / "page.htm"))
    assert kind == "page"
    assert sorted(i.source for i in got) == sorted([str(site / "page_files" / "scan.png"), server.url + "/remote.jpg"])
    monkeypatch.chdir(tmp_path)  # images are named as the page was: a relative page gives relative paths
    kind, got, _ = items_of("site/page.htm")
    assert sorted(i.source for i in got) == sorted(["site/page_files/scan.png", server.url + "/remote.jpg"])
    assert {s.reason for s in skips} == {"outside the saved page's folder (not read)"} and len(skips) == 2
    kind, got, skips = items_of(str(site))  # in a folder walk the page's own images are not read twice
    assert kind == "folder" and len(got) == 2 and len(skips) == 2


def test_extraction_of_every_kind_never_imports_torch(tmp_path):
    import subprocess
    import sys

    (tmp_path / "scan.dcm").write_bytes(dicom_bytes("CT_small.dcm"))
    (tmp_path / "photo.png").write_bytes(image_bytes(PHOTOS[0], "PNG"))
    (tmp_path / "page.html").write_text('<html><img src="photo.png"></html>')
    code = (
        f"import sys, extract; kind, items = extract.open_input({str(tmp_path)!r}, extract.Options()); "
        "n = sum(not isinstance(i, extract.Finished) for i in items); print(n, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(extract.__file__).rsplit("/", 1)[0]
    )
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]


def test_max_images_is_shared_by_a_folder_and_the_pages_in_it(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(PHOTOS[i], "PNG", size=(64, 64)))
    (tmp_path / "a.html").write_text('<img src="0.png"><img src="1.png"><img src="2.png">')
    kind, got, skips = items_of(str(tmp_path), max_images=2)  # the files first, then the page showing them
    assert len(got) == 2 and [(s.source.rsplit("/", 1)[1], s.reason) for s in skips] == [
        ("2.png", "over --max-images (2)")
    ]
