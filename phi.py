"""What in a medical image may identify a patient (--phi): a DICOM header's identifying attributes, text burned
into the pixels, and a file's EXIF / XMP / PNG and TIFF text. Each finding names its kind and where it is, never
its value unless values are asked for; the verdict is `likely` (patient attributes, names or IDs in the pixels),
`possible` (dates, institutions, other people, metadata alone), `none`, or `unknown` (could not be read).

The header and metadata are read at extraction (they are in the file); the OCR runs only on images the model calls
medical (and on DICOM), after classification. Nothing here imports torch.
"""

import importlib.util
import re

from PIL import Image

from messages import first_line

LIKELY, POSSIBLE, NONE, UNKNOWN = "likely", "possible", "none", "unknown"
RISKS = (NONE, POSSIBLE, LIKELY, UNKNOWN)
OCR_PACKAGE = "rapidocr_onnxruntime"
INSTALL_HINT = "--phi reads burned-in text with rapidocr-onnxruntime: pip install -r requirements-phi.txt"

# DICOM PS3.15 Annex E basic profile: attributes that name or identify the patient (likely) or another person,
# an institution, a device or a study (possible). Any other person name (PN), date or time (DA, DT, TM) is caught by
# its VR.
_PATIENT = {
    "PatientName": "name",
    "PatientID": "id",
    "IssuerOfPatientID": "id",
    "OtherPatientIDs": "id",
    "OtherPatientNames": "name",
    "PatientBirthName": "name",
    "PatientMotherBirthName": "name",
    "PatientBirthDate": "birth date",
    "PatientBirthTime": "birth date",
    "PatientAddress": "address",
    "PatientTelephoneNumbers": "phone",
    "PatientTelecomInformation": "phone",
    "MedicalRecordLocator": "id",
    "AccessionNumber": "id",
    "AdmissionID": "id",
    "ResponsiblePerson": "name",
    "PersonName": "name",
    "PersonAddress": "address",
    "PersonTelephoneNumbers": "phone",
    "CountryOfResidence": "place",
    "RegionOfResidence": "place",
    "MilitaryRank": "person",
    "CurrentPatientLocation": "place",
    "PatientInstitutionResidence": "place",
}
_OTHER = {
    "ReferringPhysicianName": "person",
    "ReferringPhysicianAddress": "address",
    "ReferringPhysicianTelephoneNumbers": "phone",
    "PerformingPhysicianName": "person",
    "NameOfPhysiciansReadingStudy": "person",
    "PhysiciansOfRecord": "person",
    "OperatorsName": "person",
    "RequestingPhysician": "person",
    "InstitutionName": "institution",
    "InstitutionAddress": "institution",
    "InstitutionalDepartmentName": "institution",
    "StationName": "device",
    "DeviceSerialNumber": "device",
    "StudyID": "id",
    "RequestingService": "institution",
    "PerformedProcedureStepID": "id",
    "ScheduledProcedureStepID": "id",
    "RequestedProcedureID": "id",
    "PatientComments": "text",
    "AdditionalPatientHistory": "text",
    "ImageComments": "text",
}


def finding(where: str, kind: str, risk: str, value=None, **place) -> dict:
    return {"in": where, "kind": kind, "risk": risk, **place, **({"value": value} if value is not None else {})}


def verdict(found: list, deidentified=None, error: str | None = None) -> dict:
    """The phi object: the highest risk found (`unknown` when part could not be read and nothing was found)."""
    levels = [f["risk"] for f in found]
    risk = LIKELY if LIKELY in levels else POSSIBLE if POSSIBLE in levels else UNKNOWN if error else NONE
    return {
        "risk": risk,
        "found": found,
        **({"deidentified": deidentified} if deidentified else {}),
        **({"error": error} if error else {}),
    }


def without_values(phi: dict) -> dict:
    """What is written unless --phi-values: the kinds and places, never the text itself."""
    return {**phi, "found": [{k: v for k, v in f.items() if k != "value"} for f in phi["found"]]}


def public(phi: dict | None, values: bool) -> dict | None:
    """A verdict as written where the results go, and nowhere else: its values only when asked (--phi-values)."""
    if not phi:
        return None
    return phi if values else without_values(phi)


def merge(*parts: dict | None) -> dict:
    parts = [p for p in parts if p]
    found = [f for p in parts for f in p["found"]]
    errors = "; ".join(p["error"] for p in parts if p.get("error")) or None
    deidentified = next((p["deidentified"] for p in parts if p.get("deidentified")), None)
    return verdict(found, deidentified, errors)


def flagged(phi: dict | None) -> bool:
    """--only phi keeps these: possible or likely."""
    return bool(phi) and phi["risk"] in (POSSIBLE, LIKELY)


# ---------------------------------------------------------------- DICOM header


def _text(value) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _walk(dataset, unreadable: list, path: str = ""):
    """(path, element) of every element, into sequences; what pydicom cannot convert (a value cut short inside a
    sequence) goes to `unreadable` instead."""
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
            items = (element.value or []) if element.VR == "SQ" else None
        except Exception:  # noqa: BLE001 - any conversion error: the attribute is not known
            unreadable.append(f"{path}{tag}")
            continue
        if items is None:
            yield path, element
        for number, item in enumerate(items or [], 1):
            place = f"[{number}]" if len(items) > 1 else ""  # every item of OtherPatientIDsSequence counts
            yield from _walk(item, unreadable, f"{path}{element.keyword or element.tag}{place} > ")


def placeholder(value: str) -> bool:
    """Empty, or no letter nor digit (----, ***, DICOM's empty name ^^^^): says nothing of anyone."""
    return not re.search(r"[^\W_]", value)


def _age_risk(value: str) -> str:
    """PatientAge is `possible`; over 89 years it is `likely` (HIPAA: so few people are that old)."""
    match = re.fullmatch(r"0*(\d+)Y", value.strip().upper())
    return LIKELY if match and int(match[1]) > 89 else POSSIBLE


def dicom_phi(ds, incomplete: str | None = None) -> dict:
    """A parsed DICOM header -> its phi verdict. A file that says it was de-identified (PatientIdentityRemoved
    YES, or a DeidentificationMethod) holds the de-identifier's replacements, not the patient's: nothing is
    reported from it, and `deidentified` names the method. `incomplete`: why the header was not read to its end
    (a cut file); what was read is listed, and the risk is `unknown` unless what was read is already `likely`
    (the same when an attribute cannot be converted)."""
    unreadable: list = []
    result = _header_verdict(ds, unreadable)
    problems = [incomplete] if incomplete else []
    if unreadable:
        problems.append(f"DICOM attributes that could not be read: {', '.join(unreadable[:3])}")
    if not problems:
        return result
    return {**result, "risk": result["risk"] if result["risk"] == LIKELY else UNKNOWN, "error": "; ".join(problems)}


def _header_verdict(ds, unreadable: list) -> dict:
    removed = str(ds.get("PatientIdentityRemoved", "") or "").upper()
    method = _text(ds.get("DeidentificationMethod", "") or "").strip()
    if removed == "YES" or (removed != "NO" and (method or ds.get("DeidentificationMethodCodeSequence"))):
        return verdict([], method or "PatientIdentityRemoved YES")
    found, seen = [], set()
    for path, element in _walk(ds, unreadable):
        keyword = element.keyword
        if element.tag.is_private or element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "UI"):
            continue
        if keyword in _PATIENT:
            kind, risk = _PATIENT[keyword], LIKELY
        elif keyword in _OTHER:
            kind, risk = _OTHER[keyword], POSSIBLE
        elif keyword == "PatientAge":
            kind, risk = "age", _age_risk(_text(element.value or ""))
        elif element.VR == "PN":
            kind, risk = "name", LIKELY if element.tag.group == 0x0010 else POSSIBLE
        elif element.VR in ("DA", "DT", "TM"):
            kind, risk = "time" if element.VR == "TM" else "date", POSSIBLE
        else:
            continue
        value = _text(element.value).strip() if element.value is not None else ""
        if placeholder(value) or (path + keyword) in seen:
            continue
        seen.add(path + keyword)
        found.append(
            finding(
                "dicom",
                kind,
                risk,
                value,
                attribute=path + (keyword or str(element.tag)),
                tag=f"({element.tag.group:04X},{element.tag.element:04X})",
            )
        )
    return verdict(found)


# ---------------------------------------------------------------- EXIF, XMP, PNG and TIFF text

_EXIF = {  # tag -> (name, kind): who made or owns the picture, and where
    0x013B: ("Artist", "person"),
    0x8298: ("Copyright", "person"),
    0xA430: ("CameraOwnerName", "person"),
    0xA431: ("BodySerialNumber", "device"),
    0xA435: ("LensSerialNumber", "device"),
    0x9C9D: ("XPAuthor", "person"),
    0x010D: ("DocumentName", "text"),
    0x010E: ("ImageDescription", "text"),
    0x9286: ("UserComment", "text"),
    0x013C: ("HostComputer", "device"),
}
_XMP = re.compile(
    rb"<?((?:dc:creator|dc:rights|tiff:Artist|photoshop:(?:AuthorsPosition|City|State|Country|Credit)|"
    rb"xmpRights:Owner|aux:SerialNumber|exifEX:(?:BodySerialNumber|CameraOwnerName)|exif:GPS\w+|"
    rb"Iptc4xmpCore:(?:Location|CreatorContactInfo)))\b"
)
_XMP_KIND = {"exif": "gps", "aux": "device", "photoshop": "place"}
_PNG_TEXT_SKIP = {
    "dpi",
    "gamma",
    "transparency",
    "icc_profile",
    "exif",
    "xmp",
    "xml:com.adobe.xmp",
    "software",
    "chromaticity",
    "srgb",
    "aspect",
    "interlace",
    "compression",
    "progressive",
    "progression",
    "jfif",
    "jfif_version",
    "jfif_unit",
    "jfif_density",
    "adobe",
    "adobe_transform",
    "duration",
    "loop",
    "background",
    "version",
    "extension",
    "comment_ignored",
    "photoshop",
    "mp",
    "mpoffset",
}


def metadata_phi(image: Image.Image) -> dict:
    """An opened image file -> what its metadata says of a person, device owner or place: EXIF (GPS, Artist,
    Copyright, serial numbers, descriptions), XMP, and PNG / TIFF / JPEG text (comments, tEXt chunks)."""
    found = []
    try:
        exif = image.getexif()
    except Exception:
        exif = {}
    for tag, (name, kind) in _EXIF.items():
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-16-le" if tag >= 0x9C9B else "latin-1", "replace").strip("\x00 ")
            value = value.removeprefix("ASCII").strip("\x00 ") if tag == 0x9286 else value
        if value and str(value).strip():
            found.append(finding("metadata", kind, POSSIBLE, str(value).strip(), field=f"EXIF {name}"))
    try:
        gps = exif.get_ifd(0x8825) if hasattr(exif, "get_ifd") else {}
    except Exception:
        gps = {}
    if gps:
        found.append(finding("metadata", "gps", POSSIBLE, str(dict(gps)), field="EXIF GPSInfo"))
    xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
    xmp = xmp.encode() if isinstance(xmp, str) else xmp
    for name in dict.fromkeys(m.group(1).decode() for m in _XMP.finditer(xmp)):
        found.append(
            finding("metadata", _XMP_KIND.get(name.split(":")[0], "person"), POSSIBLE, None, field=f"XMP {name}")
        )
    for key, value in image.info.items():
        if isinstance(key, str) and key.lower() not in _PNG_TEXT_SKIP and isinstance(value, str) and value.strip():
            found.append(finding("metadata", "text", POSSIBLE, value.strip()[:200], field=f"text {key}"))
    comment = image.info.get("comment")
    if isinstance(comment, bytes) and comment.strip(b"\x00 "):
        found.append(finding("metadata", "text", POSSIBLE, comment.decode("latin-1").strip()[:200], field="comment"))
    return verdict(found)


# ---------------------------------------------------------------- burned-in text

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = re.compile(
    r"\b(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|(?:19|20)\d{2}[/.-]\d{1,2}[/.-]\d{1,2}|"
    r"(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])|"
    rf"\d{{1,2}}[ -]?{_MONTH}[ ,-]*(?:19|20)?\d{{2}}|{_MONTH} \d{{1,2}},? (?:19|20)\d{{2}})\b",
    re.IGNORECASE,
)
_UNIT = re.compile(
    r"^[-+]?\d+(?:[.,]\d+)?(?:mm|cm|m|um|µm|nm|ms|s|sec|min|kv|kvp|ma|mas|hz|khz|mhz|db|%|fps|bpm|mmhg|g|kg|mg|ml|"
    r"cc|deg|x|px|mgy|gy|msv|cgy)$",
    re.IGNORECASE,
)
_LABEL_NAME = re.compile(r"\b(?:patient|pt|name|nom|nombre)\b\s*[:#.]?", re.IGNORECASE)
_LABEL_ID = re.compile(
    r"\b(?:mrn|id|acc|accession|pid|hosp(?:ital)? ?(?:no|#)|record|chart|ssn)\b\s*[:#.]?", re.IGNORECASE
)
# OCR reads DOB as D0B, and may join it to the date (DOB03/12/1961)
_LABEL_BIRTH = re.compile(r"\b(?:(?:d[o0]b|d\.[o0]\.b)(?![a-z])|(?:birth|born|geb)\b)", re.IGNORECASE)
_DICOM_NAME = re.compile(r"\b[A-Za-z][A-Za-z'-]+\^[A-Za-z][A-Za-z'-]*")
_COMMA_NAME = re.compile(r"\b[A-Z][A-Za-z'-]+, ?[A-Z][A-Za-z'-]+")
# Words of anatomy, imaging and figure labels: capitalised, they are still not names.
TERMS = frozenset(
    """axial coronal sagittal transverse oblique left right anterior posterior superior inferior lateral medial
    portable supine erect upright prone decubitus chest abdomen pelvis head neck brain liver kidney kidneys spleen
    heart lung lungs breast thyroid spine lumbar thoracic cervical knee hip shoulder ankle wrist hand foot elbow
    skull sinus orbit femur tibia humerus gallbladder pancreas bladder uterus ovary prostate aorta carotid
    ct mr mri pet spect us dx cr xa mg nm rf ot cine contrast pre post delayed arterial venous portal phase series
    image im se slice thk fov tr te ti fa etl nex flair stir dwi adc swi gre tse fse epi spgr mprage dixon t1 t2
    pd kv ma mas ww wl window level zoom gain depth freq mi tis tib tic dr fr prf wf color colour power doppler pw
    cw cfm harmonic thi gen res pen hd fps logiq voluson acuson philips siemens toshiba canon hitachi samsung
    mindray esaote fujifilm olympus pentax hologic agfa kodak carestream scale bar figure fig panel normal
    abnormal lesion tumor tumour cyst mass nodule fracture effusion stain magnification original od os ou lt rt
    bilat bilateral ap pa lat obl mlo cc ml lmlo rmlo lcc rcc sup inf ant view frontal lateral profile control
    treated before after baseline week day month year follow up scan study exam report findings impression
    pixel cm mm scalebar arrow arrowhead inset detail high low power field hpf lpf hematoxylin eosin he ihc pas
    trichrome giemsa diff quik fundus retina macula disc optic endoscopy colon stomach duodenum esophagus
    ultrasound sonography echo cardiac mode bmode flow velocity peak mean index rate ratio area volume length
    width diameter distance angle time dose mgy ctdi dlp mean std min max avg roi hu""".split()
)


def text_finding(text: str) -> tuple[str, str] | None:
    """One line of burned-in text -> (kind, risk) when it may identify a patient, None for harmless annotation
    (L, R, 5 cm, scale bars, panel letters, AP, T1, window values, anatomical and imaging terms)."""
    line = " ".join(text.split())
    if not line:
        return None
    if _LABEL_BIRTH.search(line):
        return "birth date", LIKELY
    comma_name = _COMMA_NAME.search(line)
    if _DICOM_NAME.search(line) or comma_name and not _words_are_terms(comma_name[0]):
        return "name", LIKELY
    if _LABEL_NAME.search(line) and re.search(r"[A-Za-z]{2,}", _LABEL_NAME.sub(" ", line)):
        return "name", LIKELY
    undated = _DATE.sub(" ", line)
    if _id_like(undated) or (_LABEL_ID.search(line) and re.search(r"\d{3,}", undated)):
        return "id", LIKELY
    if _name_like(undated):
        return "name", LIKELY
    if undated != line:
        return "date", POSSIBLE
    return None


def _words_are_terms(text: str) -> bool:
    return all(w.lower() in TERMS for w in re.findall(r"[A-Za-z]+", text))


def _tokens(line: str) -> list[str]:
    return [t for t in re.split(r"[\s/,:;=()\[\]]+", line) if t]


def _id_like(line: str) -> bool:
    """A long digit run (hyphens allowed: 123-45-6789), or a letters-and-digits code with 4 digits or more."""
    for token in _tokens(line):
        token = token.strip(".#-")
        if _UNIT.match(token) or "." in token:
            continue
        digits = sum(c.isdigit() for c in token)
        if re.fullmatch(r"[A-Za-z]{0,4}-?\d[\d-]{4,}\d[A-Za-z]?", token) and digits >= 6:
            return True
        if len(token) >= 6 and digits >= 4 and re.fullmatch(r"[A-Za-z0-9-]+", token) and re.search("[A-Za-z]", token):
            return True
    return False


def _name_like(line: str) -> bool:
    """Two capitalised words in a row that are not terms (John Doe, JOHN DOE), or one ALL CAPS word of 4 letters
    or more that is not (SMITH; OCR reads DOE^JOHN as DOEAJOHN)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", line)
    capital = [
        len(w) >= 2 and (w.isupper() or w[0].isupper() and w[1:].islower()) and w.lower() not in TERMS for w in words
    ]
    if any(a and b for a, b in zip(capital, capital[1:])):
        return True
    return any(w.isupper() and len(w) >= 4 and w.isalpha() and w.lower() not in TERMS for w in words)


MIN_OCR_SIDE = 32  # smaller than this, no text can be read


class TextReader:
    """PP-OCR detection and recognition (rapidocr-onnxruntime, on ONNX Runtime) loaded once, on first use."""

    def __init__(self):
        self._ocr = None

    def read(self, image: Image.Image) -> list[tuple[list, str]]:
        """An image -> (box [x0, y0, x1, y1] in its pixels, text) per line of text."""
        import numpy as np

        if self._ocr is None:
            from rapidocr_onnxruntime import RapidOCR

            self._ocr = RapidOCR(use_cls=False, det_limit_side_len=736, det_limit_type="max")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        result, _ = self._ocr(np.asarray(rgb), use_cls=False)
        lines = []
        for points, text, _score in result or []:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            lines.append(([round(min(xs)), round(min(ys)), round(max(xs)), round(max(ys))], text))
        return lines


TEXT_SIDE = 1152  # a large image's long side when its top and bottom are read again for small text
TEXT_BANDS = 0.15  # the share of the height, at the top and at the bottom, where scanners put a patient's text


def wants_detail(original: tuple[int, int], kept: tuple[int, int]) -> bool:
    """Whether the kept image (reduced for the model) is so much smaller than the original that its scanner's
    text is lost: 40 px text in a 3000 px X-ray is 7 px at 512."""
    return max(original) > 1.5 * max(kept) and max(kept) < TEXT_SIDE


def text_detail(image: Image.Image) -> Image.Image:
    """A large original at the size its small text is read at (long side TEXT_SIDE)."""
    ratio = min(1.0, TEXT_SIDE / max(image.size))
    return image.resize((round(image.width * ratio), round(image.height * ratio)), Image.Resampling.BILINEAR)


def _lines(image: Image.Image, reader: TextReader, scale: float, top: int = 0) -> list[tuple[list, str]]:
    return [([round(v * scale) for v in (x0, y0 + top, x1, y1 + top)], t) for (x0, y0, x1, y1), t in reader.read(image)]


def read_text(image: Image.Image, reader: TextReader, scale: float, detail: Image.Image | None) -> list:
    """Every line of text, boxes in the original's pixels (`scale`: original / image). With `detail`, its top and
    bottom bands are read at its resolution and replace what the whole image's pass read there."""
    lines = _lines(image, reader, scale)
    if detail is None:
        return lines
    band = max(MIN_OCR_SIDE, round(detail.height * TEXT_BANDS))
    detail_scale = image.width * scale / detail.width
    read_again = [(0, band), (detail.height - band, detail.height)]
    inside = [(y0 * detail_scale, y1 * detail_scale) for y0, y1 in read_again]
    kept = [(box, t) for box, t in lines if not any(y0 <= (box[1] + box[3]) / 2 < y1 for y0, y1 in inside)]
    for y0, y1 in read_again:
        kept += _lines(detail.crop((0, y0, detail.width, y1)), reader, detail_scale, y0)
    return kept


def pixels_phi(image: Image.Image, reader: TextReader, scale: float = 1.0, detail: Image.Image | None = None) -> dict:
    """Burned-in text of an image -> its verdict; boxes in the original's pixels (`scale`: original / image).
    `detail`: the original at TEXT_SIDE (text_detail), when the image is much smaller than it."""
    if min(image.size) < MIN_OCR_SIDE:
        return verdict([], error=f"too small to read text ({image.width}x{image.height})")
    try:
        lines = read_text(image, reader, scale, detail)
    except Exception as exc:
        return verdict([], error=f"text could not be read ({type(exc).__name__}: {first_line(exc)})")
    found = []
    for box, text in lines:
        if kind := text_finding(text):
            found.append(finding("pixels", kind[0], kind[1], text, box=box))
    return verdict(found)


def ocr_available() -> bool:
    return importlib.util.find_spec(OCR_PACKAGE) is not None
