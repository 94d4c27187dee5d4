"""The HTML report (`--report`) as a person reads it: one card per image, honest p(medical), counts, links."""

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pymupdf
import pytest
from PIL import Image

import final_classification_script as cli
import report
from conftest import corpus_images, image_bytes

MEDICAL = corpus_images("medical", "ct", 2)
NON_MEDICAL = corpus_images("non_medical", "photo", 2)
HOSTILE_NAME = """he said "<b>hi" & 'left' <script>.png"""  # no slash: a file name
VOID = {"img", "meta", "br", "hr", "input", "link", "source", "area", "base", "col", "embed", "wbr"}


class ReportParser(HTMLParser):
    """Everything the tests look at: each card with its text, links and picture; counts; every address."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.cards, self.counts, self.filters, self.tags, self.skipped = [], {}, [], [], []
        self.srcs, self.hrefs, self.text, self.styles, self.attributes = [], [], [], [], []
        self.buttons: dict = {}
        self._card = self._link = self._count = self._li = self._button = None
        self._open: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs_dict = dict(attrs)
        self.tags.append((tag, attrs_dict))
        self.attributes += attrs
        if tag not in VOID:
            self._open.append(tag)
        if "src" in attrs_dict:
            self.srcs.append(attrs_dict["src"])
        if tag == "article":
            self._card = {
                "attrs": attrs_dict,
                "classes": attrs_dict.get("class", "").split(),
                "text": [],
                "links": [],
                "img": None,
            }
        if tag == "a":
            self.hrefs.append(attrs_dict.get("href"))
            self._link = {"href": attrs_dict.get("href"), "class": attrs_dict.get("class"), "text": []}
        if tag == "img" and self._card is not None:
            self._card["img"] = attrs_dict["src"]
        if tag == "li" and "data-count" in attrs_dict:
            self._count = attrs_dict["data-count"]
        if tag == "li" and "data-count" not in attrs_dict:
            self._li = []
        if tag == "button":
            self.filters.append(attrs_dict.get("data-filter"))
            self._button = attrs_dict.get("data-filter")

    def handle_endtag(self, tag):
        while self._open and self._open.pop() != tag:
            pass
        if tag == "a" and self._link is not None:
            self._link["text"] = "".join(self._link["text"])
            if self._card is not None:
                self._card["links"].append(self._link)
            self._link = None
        if tag == "article":
            self._card["text"] = " ".join(" ".join(self._card["text"]).split())
            self.cards.append(self._card)
            self._card = None
        if tag == "button":
            self._button = None
        if tag == "li":
            if self._li is not None:
                self.skipped.append("".join(self._li))
            self._count = self._li = None

    def handle_data(self, data):
        self.text.append(data)
        if self._open and self._open[-1] == "style":
            self.styles.append(data)
        if self._card is not None:
            self._card["text"].append(data)
        if self._link is not None:
            self._link["text"].append(data)
        if self._li is not None:
            self._li.append(data)
        if self._button is not None:
            self.buttons[self._button] = data
        if self._count is not None and self._open and self._open[-1] == "b":
            self.counts[self._count] = int(data)


def uncertain(p: float, threshold: float) -> bool:
    return round(abs(p - threshold), 6) <= 0.1


def local_path(uri: str) -> Path:
    parts = urlsplit(uri)
    assert parts.scheme == "file", uri
    return Path(unquote(parts.path))


def run_cli(args, capsys):
    code = cli.main(args + ["--quiet"])
    capsys.readouterr()
    return code


@pytest.fixture
def inputs(tmp_path, server):
    """A PDF, a folder with a hostile file name, a page with a linked thumbnail and two skips, a missing file."""
    doc = pymupdf.open()
    for image in (MEDICAL[0], NON_MEDICAL[0]):
        doc.new_page().insert_image(pymupdf.Rect(50, 50, 400, 400), stream=image_bytes(image, "JPEG"))
    doc.save(tmp_path / "paper.pdf")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / HOSTILE_NAME).write_bytes(MEDICAL[1].read_bytes())
    (folder / NON_MEDICAL[1].name).write_bytes(NON_MEDICAL[1].read_bytes())
    server.add("/full.png", image_bytes(NON_MEDICAL[1], "PNG"), "image/png")
    server.add("/thumb.png", image_bytes(NON_MEDICAL[1], "PNG", (48, 48)), "image/png")
    server.add("/scan.png", image_bytes(MEDICAL[0], "PNG"), "image/png")
    server.add("/icon.png", image_bytes(MEDICAL[0], "PNG", (8, 8)), "image/png")
    server.add(
        "/a.html",
        b'<img src="scan.png"><a href="full.png"><img src="thumb.png"></a><img src="icon.png"><img src="gone.png">',
    )
    return [str(tmp_path / "paper.pdf"), str(folder), server.url + "/a.html", str(tmp_path / "missing.pdf")]


def test_every_card_count_and_link_of_a_cli_report(inputs, tmp_path, capsys):
    first = tmp_path / "first.json"
    run_cli(["--json", "-o", str(first)] + inputs, capsys)
    ps = [im["p_medical"] for entry in json.loads(first.read_text())["inputs"] for im in entry["images"]]
    assert max(ps) - min(ps) > 0.3, "the images must lie on both sides, far apart, for the marks to mean anything"
    threshold = round(max(ps) - 0.05, 4)  # the highest image is uncertain, the lowest is not
    out, page_path, saved_dir = tmp_path / "out.json", tmp_path / "report.html", tmp_path / "saved"
    code = run_cli(
        [
            "--json",
            "-o",
            str(out),
            "--report",
            str(page_path),
            "--save-dir",
            str(saved_dir),
            "--threshold",
            str(threshold),
        ]
        + inputs,
        capsys,
    )
    assert code == 1  # the missing file
    document = json.loads(out.read_text())
    page = ReportParser(page_path.read_text(encoding="utf-8"))
    images = [im for entry in document["inputs"] for im in entry["images"]]
    assert len(page.cards) == len(images) == document["summary"]["images"] == 6

    for order, (card, image) in enumerate(zip(page.cards, images)):
        p, label = image["p_medical"], image["label"]
        assert card["attrs"]["data-label"] == label and label in card["classes"]
        assert card["attrs"]["data-order"] == str(order) and float(card["attrs"]["data-p"]) == p
        assert f"p(medical) {p:.3f}" in card["text"] and "%" not in card["text"]
        near = uncertain(p, threshold)
        assert ("uncertain" in card["classes"]) == near == ("uncertain" in card["text"].split())
        thumb = base64.b64decode(card["img"].removeprefix("data:image/jpeg;base64,"))
        Image.open(io.BytesIO(thumb)).verify()
        links = {link["text"]: link["href"] for link in card["links"]}
        assert image["source"] in links, "the full source name is shown, as a link"
        source_href = links[image["source"]]
        if image["source"].startswith("http"):
            assert source_href == image["source"]
        else:
            file_part, _, at = image["source"].partition("#")
            assert local_path(source_href) == Path(file_part).resolve()
            assert local_path(source_href).read_bytes() == Path(file_part).read_bytes()
            assert urlsplit(source_href).fragment == (at.split("&")[0] if at else "")
        assert local_path(links["saved file"]) == Path(image["saved_path"]) and Path(image["saved_path"]).exists()
        picture = next(link for link in card["links"] if link["class"] == "pic")
        assert picture["href"] == links["saved file"]
        assert links.get("thumbnail on the page") == image.get("thumbnail")

    linked = next(im for im in images if im.get("thumbnail"))
    assert linked["thumbnail"].endswith("/thumb.png") and linked["source"].endswith("/full.png")
    assert any(HOSTILE_NAME in im["source"] for im in images)
    assert {im["source"].rsplit("#", 1)[1] for im in images if "paper.pdf" in im["source"]} == {
        "page=1&image=1",
        "page=2&image=1",
    }

    summary = document["summary"]
    n_uncertain = sum(uncertain(im["p_medical"], threshold) for im in images)
    assert 1 <= n_uncertain < len(images)
    assert page.counts == {
        "images": 6,
        "medical": summary["medical"],
        "non-medical": summary["non-medical"],
        "uncertain": n_uncertain,
        "skipped": summary["skipped"],
        "failed inputs": 1,
    }
    assert summary["skipped"] == 2 and len(page.skipped) == 2
    assert all(any(s["source"] in line for line in page.skipped) for e in document["inputs"] for s in e["skipped"])
    assert "error: no such file, folder or URL" in "".join(page.text)
    assert page.filters == ["all", "medical", "non-medical", "uncertain"]
    assert page.buttons == {
        "all": "all (6)",
        "medical": f"medical ({summary['medical']})",
        "non-medical": f"non-medical ({summary['non-medical']})",
        "uncertain": f"uncertain ({n_uncertain})",
    }
    assert ("div", {"id": "controls", "hidden": None}) in page.tags, "no dead buttons when JS is off"
    assert not any("hidden" in card["attrs"] for card in page.cards), "with JS off every card shows"

    allowed = {im["source"] for im in images} | {im.get("thumbnail") for im in images}
    assert all(src.startswith("data:image/jpeg;base64,") for src in page.srcs), "nothing loaded from outside"
    assert all(href.startswith("file://") or href in allowed for href in page.hrefs)
    assert not {tag for tag, _ in page.tags} & {"link", "iframe", "object", "embed", "base", "form"}
    assert [attrs for tag, attrs in page.tags if tag == "script"] == [{}]
    assert not any(word in "".join(page.styles) for word in ("url(", "@import"))


def hand_made_report(threshold: float, images: list[dict], **entry) -> dict:
    medical = sum(im["label"] == "medical" for im in images)
    return {
        "model": {"path": "m.pth", "arch": "arch<script>", "threshold": threshold, "engine": 'onnx"'},
        "inputs": [{"input": "in", "kind": "url", "error": None, "images": images, "skipped": [], **entry}],
        "summary": {
            "images": len(images),
            "medical": medical,
            "non-medical": len(images) - medical,
            "skipped": len(entry.get("skipped", [])),
            "failed_inputs": int(bool(entry.get("error"))),
        },
    }


def image(source: str, p: float, label: str, **fields) -> dict:
    return {
        "source": source,
        "page": None,
        "width": 10,
        "height": 20,
        "label": label,
        "p_medical": p,
        "saved_path": None,
        "format": "png",
        **fields,
    }


def test_hostile_strings_are_text_never_markup():
    attack = """"'><script>alert(1)</script><img src=x onerror=alert(2)>"""
    url = "https://example.org/a\"b'c<d>.png?x=1&y=<2>"
    document = hand_made_report(
        0.5,
        [
            image(url, 0.9, "medical", thumbnail="javascript:alert(3)"),
            image(f"/tmp/{attack}.pdf#page=2&image=1", 0.1, "non-medical", saved_path=f"/tmp/saved {attack}.png"),
        ],
        input=attack,
        kind=attack,
        error=attack,
        skipped=[{"source": attack, "reason": attack}],
    )
    page = ReportParser(report.to_html(document, [["data:image/jpeg;base64,AAAA"]]))
    assert [attrs for tag, attrs in page.tags if tag == "script"] == [{}]
    assert [tag for tag, _ in page.tags].count("img") == 1, "the second image has no thumbnail: no preview"
    assert "no preview" in page.cards[1]["text"]
    assert not [name for name, _ in page.attributes if name.startswith("on")]
    assert not [href for href in page.hrefs if not href.startswith(("https://", "file://"))]
    text = "".join(page.text)
    assert text.count(attack) >= 5 and url in text and "arch<script>" in text
    first, second = ({link["text"]: link["href"] for link in card["links"]} for card in page.cards)
    assert first[url] == url and "thumbnail on the page" not in first.values()
    assert local_path(second[f"/tmp/{attack}.pdf#page=2&image=1"]) == Path(f"/tmp/{attack}.pdf")
    assert urlsplit(second[f"/tmp/{attack}.pdf#page=2&image=1"]).fragment == "page=2"
    assert local_path(second["saved file"]) == Path(f"/tmp/saved {attack}.png")


def test_the_uncertain_mark_is_exactly_the_band_around_the_threshold():
    """A flat grey box at p 0.45 over a 0.43 threshold says 'medical, p(medical) 0.450, uncertain', not 'medical 45%'."""
    ps = [0.45, 0.3299, 0.33, 0.53, 0.5301, 0.0, 1.0]
    images = [
        image(f"https://example.org/{i}.png", p, "medical" if p >= 0.43 else "non-medical") for i, p in enumerate(ps)
    ]
    page = ReportParser(report.to_html(hand_made_report(0.43, images), [[]]))
    assert [("uncertain" in card["classes"], card["text"].split()[2:5]) for card in page.cards] == [
        (True, ["medical", "uncertain", "p(medical)"]),
        (False, ["non-medical", "p(medical)", "0.330"]),
        (True, ["non-medical", "uncertain", "p(medical)"]),
        (True, ["medical", "uncertain", "p(medical)"]),
        (False, ["medical", "p(medical)", "0.530"]),
        (False, ["non-medical", "p(medical)", "0.000"]),
        (False, ["medical", "p(medical)", "1.000"]),
    ]
    assert "p(medical) 0.450" in page.cards[0]["text"] and "45%" not in "".join(page.text)
    assert page.counts["uncertain"] == 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> bytes:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        timeout=90,
        check=True,
    ).stdout


def corpus_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in MEDICAL + NON_MEDICAL:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_only_one_label_shows_its_cards_and_says_what_the_counts_cover(tmp_path, capsys):
    page_path, out = tmp_path / "report.html", tmp_path / "out.json"
    run_cli(
        ["--json", "-o", str(out), "--only", "medical", "--report", str(page_path), str(corpus_folder(tmp_path))],
        capsys,
    )
    document, page = json.loads(out.read_text()), ReportParser(page_path.read_text(encoding="utf-8"))
    shown = document["inputs"][0]["images"]
    assert len(page.cards) == len(shown) == 2 and {card["attrs"]["data-label"] for card in page.cards} == {"medical"}
    assert page.counts["images"] == document["summary"]["images"] == 4
    assert page.buttons == {
        "all": "all (2)",
        "medical": "medical (2)",
        "non-medical": "non-medical (0)",
        "uncertain": f"uncertain ({page.counts['uncertain']})",
    }
    assert "Showing 2 of the 4 images (--only)" in " ".join("".join(page.text).split())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_real_browser_renders_filters_and_sorts(tmp_path, capsys):
    page_path = tmp_path / "report.html"
    run_cli(
        ["--json", "-o", str(tmp_path / "out.json"), "--report", str(page_path), str(corpus_folder(tmp_path))], capsys
    )
    images = json.loads((tmp_path / "out.json").read_text())["inputs"][0]["images"]

    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,900", page_path.as_uri())
    with Image.open(shot) as picture:
        colours = picture.convert("RGB").getcolors(1 << 20)
    assert len(colours) > 1000, "a blank or broken page"
    counted = {rgb: n for n, rgb in colours}
    assert counted.get((0xC0, 0x39, 0x2B), 0) > 100 and counted.get((0x2E, 0x86, 0xC1), 0) > 100, (
        "medical and non-medical card borders drawn"
    )

    dom = ReportParser(chromium("--dump-dom", page_path.as_uri() + "#filter=medical&sort=p").decode())
    shown = [card for card in dom.cards if "hidden" not in card["attrs"]]
    expected = sorted((im["p_medical"] for im in images if im["label"] == "medical"), reverse=True)
    assert [float(card["attrs"]["data-p"]) for card in shown] == expected and len(expected) >= 2
    assert len(dom.cards) == len(images)
    assert ("div", {"id": "controls"}) in dom.tags, "the controls show once the script runs"


def test_long_sources_are_cut_in_the_middle_keeping_the_file_name():
    url = "https://images.example.org/" + "deep/" * 30 + "figure-3-chest-xray.png"
    short = report.shorten(url, 60)
    assert len(short) == 60 and short.startswith("https://images") and short.endswith("figure-3-chest-xray.png")
    assert "…" in short and report.shorten("short.png", 60) == "short.png"


def test_reasons_are_never_cut_mid_word():
    import messages

    reason = "DICOM pixel data could not be decoded: " + "the transfer syntax needs a decoder plugin " * 8
    cut = messages.clip(reason)
    assert len(cut) <= 160 and cut.endswith("…")
    assert cut[:-1].split()[-1] in reason.split(), "the last word is whole"
    assert messages.first_line(ValueError(reason + "\nsecond line")) == cut


def test_one_failed_input_is_singular_in_the_report():
    document = {
        "model": {"path": "m.pth", "arch": "a", "threshold": 0.5, "engine": "onnx"},
        "inputs": [report.input_record("x.png", None, "no such file, folder or URL", [], [])],
        "summary": {"images": 1, "medical": 1, "non-medical": 0, "skipped": 0, "failed_inputs": 1},
    }
    page = report.to_html(document, [[]])
    assert "<b>1</b> failed input<" in page and "<b>1</b> image<" in page and "failed inputs<" not in page
