"""--phi's figures: burned-in text drawn on medical corpus images (recall of identifying text, alarms on harmless
annotations), DICOM headers of pydicom's bundled files against an independent de-identifier (dicognito), and the
cost of the OCR per medical image and as a ratio to the run without --phi.

    python benchmarks/phi_check.py [--images 120]
"""

import argparse
import copy
import glob
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import cli_seconds, corpus_sample

import phi

NAMES = [
    "DOE^JOHN",
    "Jane Smith",
    "SMITH, JOHN A",
    "Patient: Maria Garcia",
    "GARCIA^MARIA^L",
    "Name: Li Wei",
    "JOHANSSON ERIK",
    "O'Brien, Sean",
    "Nguyen Van An",
    "KOWALSKI^ANNA",
]
IDS = [
    "ID 00482913",
    "MRN 5834021",
    "Acc# A1234567",
    "PID: 7730194",
    "123-45-6789",
    "HN 20419937",
    "Pat ID 9921834",
    "A00482913",
]
DATES = ["12/03/2019", "2019-03-12 14:32", "03.12.2019", "12 Mar 2019", "DOB 03/12/1961", "20190312"]
HARMLESS = ["L", "R", "5 cm", "A", "B", "C", "D", "AP", "T1", "10 mm", "W:400 L:40", "PA", "LAT", "x40"]


def fonts() -> list:
    """Three faces a machine without system fonts still has: Pillow's own, and two DejaVu faces from OpenCV's
    wheel (which rapidocr-onnxruntime installs)."""
    import cv2
    from PIL import ImageFont

    bundled = sorted(glob.glob(os.path.join(os.path.dirname(cv2.__file__), "qt", "fonts", "DejaVuSans*.ttf")))
    faces = [None] + [p for p in bundled if p.endswith(("DejaVuSans-Bold.ttf", "DejaVuSansCondensed.ttf"))]
    return [
        (lambda size, face=face: ImageFont.load_default(size=size) if face is None else ImageFont.truetype(face, size))
        for face in faces
    ]


def draw_lines(image, lines, font, light: bool, rng: random.Random):
    """Lines of text where scanners put them: a corner (stacked) or along the top."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    fill, shadow = ((255, 255, 255), (0, 0, 0)) if light else ((0, 0, 0), (255, 255, 255))
    place = rng.choice(["top-left", "top-right", "bottom-left", "bottom-right", "top"])
    height = font.getbbox("Ag")[3] + 4
    widths = [draw.textlength(t, font=font) for t in lines]
    if place == "top":
        x, y, text = 6, 4, "   ".join(lines)
        draw.text((x + 1, y + 1), text, font=font, fill=shadow)
        draw.text((x, y), text, font=font, fill=fill)
        return
    for i, (text, width) in enumerate(zip(lines, widths)):
        x = 6 if place.endswith("left") else image.width - width - 6
        y = 4 + i * height if place.startswith("top") else image.height - (len(lines) - i) * height - 4
        draw.text((x + 1, y + 1), text, font=font, fill=shadow)
        draw.text((x, y), text, font=font, fill=fill)


def draw_harmless(image, font, light: bool, rng: random.Random):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    fill = (255, 255, 255) if light else (0, 0, 0)
    draw.text((6, 6), rng.choice(["L", "R", "A", "B"]), font=font, fill=fill)
    y = image.height - 20
    draw.line((image.width - 90, y, image.width - 20, y), fill=fill, width=3)  # a scale bar
    draw.text((image.width - 80, y - 18), rng.choice(["5 cm", "10 mm", "1 cm"]), font=font, fill=fill)
    x = rng.randrange(image.width // 5, max(image.width // 5 + 1, image.width * 4 // 5 - 40))
    y = rng.randrange(image.height // 5, max(image.height // 5 + 1, image.height * 4 // 5 - 40))
    draw.line((x, y, x + 30, y + 30), fill=fill, width=2)  # an arrow and its letter
    draw.polygon([(x, y), (x + 10, y + 2), (x + 2, y + 10)], fill=fill)
    draw.text((x + 34, y + 30), rng.choice(HARMLESS), font=font, fill=fill)


def burned_in(n: int) -> dict:
    from PIL import Image

    rng = random.Random(0)
    faces, reader = fonts(), phi.TextReader()
    paths = corpus_sample(n, "medical")
    hits, harmless_alarms, base_alarms, seconds, kinds = 0, 0, 0, [], {"name": [0, 0], "id": [0, 0], "date": [0, 0]}
    for i, path in enumerate(paths):
        original = Image.open(path).convert("RGB")
        base = original.resize((512, max(160, round(original.height * 512 / original.width))))
        size, light, face = rng.randint(9, 20), rng.random() < 0.6, faces[i % len(faces)]
        font = face(size)
        chosen = rng.sample(["name", "id", "date"], rng.randint(1, 3))
        pools = {"name": NAMES, "id": IDS, "date": DATES}
        lines = [rng.choice(pools[k]) for k in chosen]
        marked = base.copy()
        draw_lines(marked, lines, font, light, rng)
        start = time.perf_counter()
        result = phi.pixels_phi(marked, reader)
        seconds.append(time.perf_counter() - start)
        expected = phi.LIKELY if {"name", "id"} & set(chosen) or any("DOB" in t for t in lines) else phi.POSSIBLE
        hits += result["risk"] == phi.LIKELY or result["risk"] == expected
        got = {f["kind"] for f in result["found"]} | ({"date"} if "birth date" in str(result) else set())
        for kind in chosen:
            kinds[kind][0] += kind in got
            kinds[kind][1] += 1
        annotated = base.copy()
        draw_harmless(annotated, font, light, rng)
        harmless_alarms += phi.pixels_phi(annotated, reader)["risk"] == phi.LIKELY
        base_alarms += phi.pixels_phi(base, reader)["risk"] == phi.LIKELY
    return {
        "images": len(paths),
        "recall": hits / len(paths),
        "per kind": {k: f"{a}/{b}" for k, (a, b) in kinds.items()},
        "harmless likely": harmless_alarms / len(paths),
        "untouched likely": base_alarms / len(paths),
        "ocr s/img median": statistics.median(seconds),
        "ocr s/img p90": sorted(seconds)[int(0.9 * len(seconds))],
    }


def dicom_headers() -> dict:
    import warnings

    import pydicom
    from dicognito.anonymizer import Anonymizer
    from pydicom.data import get_testdata_file

    warnings.filterwarnings("ignore")  # odd test files are odd on purpose
    folder = os.path.dirname(get_testdata_file("CT_small.dcm"))
    files = parsed = missed = after = flagged = 0
    missing = set()
    for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
        files += 1
        try:
            ds = pydicom.dcmread(path)
            header = phi.dicom_phi(ds)
            reported = {f["attribute"].split(" > ")[-1] for f in header["found"]}
            anonymized = copy.deepcopy(ds)
            Anonymizer().anonymize(anonymized)
        except Exception:
            continue
        parsed += 1
        if header.get("deidentified"):  # says so itself: its values are pseudonyms, and none is reported
            flagged += 1
            continue
        before = {(path, e.tag): e for path, e in phi._walk(ds, [])}
        replaced = {(path, e.tag): e.value for path, e in phi._walk(anonymized, [])}
        changed = {
            e.keyword
            for key, e in before.items()
            if e.keyword
            and e.VR != "UI"
            and not phi.placeholder(phi._text(e.value))
            and replaced.get(key, e.value) != e.value
        }
        missed += bool(changed - reported)
        missing |= changed - reported
        after += bool(phi.dicom_phi(anonymized)["found"])
    return {
        "files": files,
        "parsed and de-identified": parsed,
        "already marked de-identified (nothing reported)": flagged,
        "files with an attribute dicognito replaces and --phi misses": missed,
        "missed attributes": sorted(missing),
        "files reporting anything after dicognito": after,
    }


def cost(n: int) -> dict:
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        for i, path in enumerate(corpus_sample(n, "medical")):
            Image.open(path).convert("RGB").save(os.path.join(folder, f"{i}.png"))
        plain, with_phi = [], []
        for _ in range(3):
            plain.append(cli_seconds(folder))
            with_phi.append(cli_seconds("--phi", folder))
        one = os.path.join(folder, "0.png")
        one_plain = min(cli_seconds(one) for _ in range(3))
        one_phi = min(cli_seconds("--phi", one) for _ in range(3))
    return {
        "medical images": n,
        "without --phi s": min(plain),
        "with --phi s": min(with_phi),
        "ratio": min(with_phi) / min(plain),
        "added s per medical image": (min(with_phi) - min(plain)) / n,
        "one image: with / without --phi": one_phi / one_plain,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120, help="medical corpus images drawn on (default: %(default)s)")
    parser.add_argument("--cost-images", type=int, default=40, help="images of the timed runs (default: %(default)s)")
    args = parser.parse_args()
    for name, part in (
        ("burned-in text", lambda: burned_in(args.images)),
        ("DICOM", dicom_headers),
        ("cost", lambda: cost(args.cost_images)),
    ):
        print(f"== {name}", file=sys.stdout, flush=True)
        for key, value in part().items():
            print(f"   {key}: {value:.3f}" if isinstance(value, float) else f"   {key}: {value}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
