"""--phi: DICOM headers (pydicom's own test files, before and after an independent de-identifier), text drawn
into real corpus images, EXIF written with Pillow, through the library and the CLI in every format."""

import copy
import csv
import io
import json
import os
import struct

import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.data import get_testdata_file

import final_classification_script as cli
import phi
from conftest import corpus_images

IDENTIFYING = [
    "DOE^JOHN",
    "Jane Smith",
    "SMITH, JOHN",
    "Patient: Maria Garcia",
    "MRN 5834021",
    "ID 00482913",
    "Acc# A1234567",
    "DOB 03/12/1961",
]
HARMLESS = ["L", "R", "5 cm", "AP", "T1", "W:400 L:40", "A", "B", "SAGITTAL T2 FLAIR", "10 mm", "x40", "PA ERECT"]


def font(size: int):
    """Pillow's own font (no system fonts on a bare machine), at a size scanners use."""
    return ImageFont.load_default(size=size)


def drawn(path, lines, size=14, fill="white") -> Image.Image:
    image = Image.open(path).convert("RGB").resize((512, 512))
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((8, 6 + i * (size + 6)), text, font=font(size), fill=fill)
    return image


def test_text_lines_are_told_apart():
    for text in IDENTIFYING:
        assert phi.text_finding(text)[1] == phi.LIKELY, text
    assert phi.text_finding("12/03/2019") == ("date", phi.POSSIBLE)
    assert phi.text_finding("2019-03-12 14:32") == ("date", phi.POSSIBLE)
    for text in HARMLESS:
        assert phi.text_finding(text) is None, text


def test_dicom_header_every_identifying_attribute_and_none_after_dicognito():
    from dicognito.anonymizer import Anonymizer

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    result = phi.dicom_phi(ds)
    attributes = {f["attribute"] for f in result["found"]}
    assert result["risk"] == phi.LIKELY
    assert {"PatientName", "PatientID", "OtherPatientIDsSequence > PatientID", "InstitutionName"} <= attributes
    assert "PatientBirthDate" not in attributes  # present but empty
    anonymized = copy.deepcopy(ds)
    Anonymizer().anonymize(anonymized)
    changed = {
        e.keyword
        for e in ds
        if e.keyword and str(e.value).strip() and anonymized[e.keyword].value != e.value  # what it had to replace
    } - {"SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "InstanceCreatorUID"}
    assert changed and changed <= attributes | {"OtherPatientIDsSequence"}, changed - attributes
    after = phi.dicom_phi(anonymized)
    assert after == {"risk": "none", "found": [], "deidentified": "DICOGNITO"}


def test_dicom_without_patient_attributes_is_at_most_possible():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for element in list(ds.iterall()):
        if element.tag.group == 0x0010 or element.keyword == "AccessionNumber":
            element.value = ""
    result = phi.dicom_phi(ds)
    assert result["risk"] == phi.POSSIBLE
    assert all(f["risk"] == phi.POSSIBLE for f in result["found"])


def test_exif_and_png_text():
    image = Image.new("RGB", (64, 64), "grey")
    exif = image.getexif()
    exif[0x013B] = "Dr A. Person"
    exif[0x8825] = {2: (1.0, 2.0, 3.0)}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    fields = {f["field"] for f in phi.metadata_phi(Image.open(buffer))["found"]}
    assert {"EXIF Artist", "EXIF GPSInfo"} <= fields
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "Jane Roe")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    found = phi.metadata_phi(Image.open(buffer))["found"]
    assert [(f["field"], f["value"]) for f in found] == [("text Author", "Jane Roe")]
    assert phi.metadata_phi(Image.new("RGB", (64, 64)))["risk"] == phi.NONE


def test_unreadable_images_are_unknown():
    assert phi.pixels_phi(Image.new("RGB", (20, 200)), phi.TextReader())["risk"] == phi.UNKNOWN

    class Broken(phi.TextReader):
        def read(self, image):
            raise ValueError("bad\nsecond line")

    result = phi.pixels_phi(Image.new("RGB", (200, 200)), Broken())
    assert result["risk"] == phi.UNKNOWN and result["error"] == "text could not be read (ValueError: bad)"


@pytest.fixture
def files(tmp_path):
    xrays = corpus_images("medical", "xray", 2)
    named = drawn(xrays[0], ["DOE^JOHN", "ID 00482913"])
    exif = named.getexif()
    exif[0x013B] = "Dr A. Person"
    named.save(tmp_path / "named.jpg", exif=exif, quality=95)
    drawn(xrays[1], ["R", "5 cm"]).save(tmp_path / "harmless.png")
    (tmp_path / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    syntax = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\x00"
    sequence = b"\x10\x00\x10\x00SQ\x00\x00" + struct.pack("<I", 0xFFFFFFF0) + b"abc"  # longer than the file
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + syntax + sequence)
    return tmp_path


def run(args, capsys):
    code = cli.main(args + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_jsonl_csv_report(files, capsys, shipped_model_path):
    inputs = [str(files / n) for n in ("named.jpg", "harmless.png", "ct.dcm", "broken.dcm")]
    code, out, _ = run(["--json", "--phi", *inputs], capsys)
    document = json.loads(out)
    images = {os.path.basename(im["source"]): im for e in document["inputs"] for im in e["images"]}
    named = images["named.jpg"]["phi"]
    assert named["risk"] == "likely"
    assert {(f["in"], f["kind"]) for f in named["found"]} >= {
        ("pixels", "name"),
        ("pixels", "id"),
        ("metadata", "person"),
    }
    assert all("value" not in f for f in named["found"]) and "DOE" not in out  # no values unless asked
    assert images["harmless.png"]["phi"] == {"risk": "none", "found": []}
    assert images["ct.dcm"]["phi"]["risk"] == "likely"
    broken = document["inputs"][3]
    assert broken["skipped"][0]["phi"]["risk"] == "unknown", broken
    assert document["summary"]["phi"] == {"none": 1, "possible": 0, "likely": 2, "unknown": 1}

    code, out, err = run(["--jsonl", "--phi", "--phi-values", "--only", "phi", *inputs[:2]], capsys)
    lines = [json.loads(line) for line in out.splitlines()]
    shown = [line for line in lines if line["type"] == "image"]
    assert [os.path.basename(line["source"]) for line in shown] == ["named.jpg"]
    assert "DOE^JOHN" in {f.get("value") for f in shown[0]["phi"]["found"]} and "DOE" not in err
    assert lines[-1]["phi"]["likely"] == 1 and lines[-1]["images"] == 2

    code, out, _ = run(["--csv", "--phi", inputs[0]], capsys)
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["phi_risk"] == "likely" and "pixels:name" in row["phi_found"]

    report = files / "r.html"
    code, out, _ = run(["--phi", "--report", str(report), inputs[0]], capsys)
    assert 'class="phi likely"' in report.read_text() and "PHI likely" in out

    code, out, _ = run(["--json", inputs[0]], capsys)  # without --phi nothing changes
    assert "phi" not in out


def test_cli_without_the_ocr_package(files, capsys, monkeypatch):
    monkeypatch.setattr(phi, "ocr_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--phi", str(files / "named.jpg")])
    assert exit_info.value.code == 2
    assert "pip install -r requirements-phi.txt" in capsys.readouterr().err


def test_resume_counts_earlier_verdicts_and_text_is_read_once_per_image(files, capsys, monkeypatch):
    reads = []
    read = phi.TextReader.read
    monkeypatch.setattr(phi.TextReader, "read", lambda self, image: reads.append(image.size) or read(self, image))
    out = files / "out.jsonl"
    named, harmless, ct = (str(files / n) for n in ("named.jpg", "harmless.png", "ct.dcm"))
    copy_of_named = files / "again.jpg"
    copy_of_named.write_bytes((files / "named.jpg").read_bytes())
    code, _, _ = run(["--jsonl", "--phi", "-o", str(out), named, str(copy_of_named)], capsys)
    assert code == 0 and len(reads) == 1  # the same pixels under two names: read once, reported twice
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["phi"]["risk"] for line in first if line["type"] == "image"] == ["likely", "likely"]

    code, _, _ = run(["--jsonl", "--phi", "--resume", "-o", str(out), named, str(copy_of_named), harmless, ct], capsys)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and lines[-1]["type"] == "summary"
    assert lines[-1]["phi"] == {"none": 1, "possible": 0, "likely": 3, "unknown": 0}, lines[-1]
    assert sum(line["type"] == "image" for line in lines) == 4
