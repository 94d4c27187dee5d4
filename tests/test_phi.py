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
    "D0B 03/12/1961",  # as OCR reads it
    "DOB03/12/1961",  # joined by OCR
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
    assert {
        "PatientName",
        "PatientID",
        "OtherPatientIDsSequence[1] > PatientID",
        "OtherPatientIDsSequence[2] > PatientID",  # every item
        "InstitutionName",
    } <= attributes
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


def test_dicom_age_placeholders_and_times():
    ds = pydicom.Dataset()
    ds.PatientName, ds.PatientAge, ds.StudyTime, ds.ReferringPhysicianName = "----", "092Y", "120000", "***"
    found = {f["attribute"]: (f["kind"], f["risk"]) for f in phi.dicom_phi(ds)["found"]}
    assert found == {"PatientAge": ("age", phi.LIKELY), "StudyTime": ("time", phi.POSSIBLE)}  # no placeholders
    ds.PatientAge = "045Y"
    assert phi.dicom_phi(ds)["risk"] == phi.POSSIBLE


@pytest.mark.parametrize(
    "cut, risk",
    [(400, phi.UNKNOWN), (900, phi.UNKNOWN), (1000, phi.LIKELY), (1200, phi.LIKELY), (None, phi.LIKELY)],
)
def test_a_cut_dicom_is_unknown_unless_what_was_read_is_likely(tmp_path, capsys, cut, risk):
    """pydicom reads a truncated file without a word: the cut is found from the last value's length."""
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:cut])
    code, out, _ = run(["--jsonl", "--phi", str(path)], capsys)
    line = next(json.loads(x) for x in out.splitlines() if json.loads(x)["type"] in ("image", "skipped"))
    assert line["phi"]["risk"] == risk, line
    assert ("error" in line["phi"]) == (cut is not None), line
    if cut:
        assert f"byte {cut}" in line["phi"]["error"] or "patient attributes" in line["phi"]["error"]
        assert line["phi"]["found"], "what was read before the cut is listed"


def test_small_text_in_a_large_original_is_read(tmp_path, capsys):
    """A 3000 px X-ray is kept at 512 px for the model, where 40 px text is 7 px: its top and bottom are read
    again at 1152 px."""
    image = Image.open(corpus_images("medical", "xray", 1)[0]).convert("RGB").resize((3000, 3000))
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(["DOE^JOHN", "MRN 5834021"]):
        draw.text((20, 20 + 56 * i), text, font=font(40), fill="white")
    draw.text((2500, 2920), "DOB 03/12/1961", font=font(40), fill="white")
    image.save(tmp_path / "large.jpg", quality=92)
    code, out, _ = run(["--json", "--phi", str(tmp_path / "large.jpg")], capsys)
    result = json.loads(out)["inputs"][0]["images"][0]
    found = result["phi"]["found"]
    _, plain, _ = run(["--json", str(tmp_path / "large.jpg")], capsys)
    assert json.loads(plain)["inputs"][0]["images"][0]["p_medical"] == result["p_medical"]  # p as without --phi
    kinds = {f["kind"]: f["box"] for f in found if f["in"] == "pixels"}
    assert {"name", "id", "birth date"} <= set(kinds), found
    assert kinds["name"][2] < 600 and kinds["birth date"][1] > 2800  # boxes in the original's pixels


def test_resume_refuses_a_file_written_with_other_phi_options(files, capsys):
    out, named = files / "out.jsonl", str(files / "named.jpg")
    run(["--jsonl", "-o", str(out), named], capsys)
    before = out.read_text()
    code, _, err = run(["--jsonl", "--phi", "--resume", "-o", str(out), named, str(files / "ct.dcm")], capsys)
    assert code == 2 and "written without --phi" in err and out.read_text() == before
    run(["--jsonl", "--phi", "-o", str(out), named], capsys)
    code, _, err = run(["--jsonl", "--phi", "--phi-values", "--resume", "-o", str(out), named], capsys)
    assert code == 2 and "without --phi-values" in err
    code, _, err = run(["--jsonl", "--resume", "-o", str(out), named], capsys)
    assert code == 2 and "written with --phi" in err
    code, _, _ = run(["--jsonl", "--phi", "--resume", "-o", str(out), named, str(files / "harmless.png")], capsys)
    assert code == 0


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
