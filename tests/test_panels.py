"""Compound figures: gutters found from the image itself, each panel classified, one false-alarm bar for all."""

import json

import pytest
from PIL import Image, ImageDraw

import images
import panels
from conftest import corpus_images
from test_cli_safety import run

PHOTOS = corpus_images("non_medical", "photo", 6)
SCANS = corpus_images("medical", "ct", 3)


def grid(paths, rows: int, cols: int, cell: int = 200, gutter: int = 8, background=(255, 255, 255)) -> Image.Image:
    canvas = Image.new("RGB", (cols * cell + (cols + 1) * gutter, rows * cell + (rows + 1) * gutter), background)
    for n, path in enumerate(paths):
        with Image.open(path) as image:
            panel = image.convert("RGB").resize((cell, cell))
        r, c = divmod(n, cols)
        canvas.paste(panel, (gutter + c * (cell + gutter), gutter + r * (cell + gutter)))
    return canvas


def test_a_grid_is_split_into_its_panels_where_they_are():
    figure = grid(PHOTOS, 2, 3)
    boxes = panels.find_panels(figure)
    expected = [(8 + c * 208, 8 + r * 208, 208 + c * 208, 208 + r * 208) for r in range(2) for c in range(3)]
    assert len(boxes) == 6
    for box, want in zip(sorted(boxes, key=lambda b: (b[1], b[0])), expected):
        assert max(abs(a - b) for a, b in zip(box, want)) <= 4


@pytest.mark.parametrize(
    "kind, label, source",
    [
        ("photo", "non_medical", ""),
        ("chart", "non_medical", "scienceplots"),
        ("ct", "medical", ""),
        ("xray", "medical", ""),
        ("histology", "medical", ""),
    ],
)
def test_a_single_picture_is_not_split(kind, label, source):
    for path in corpus_images(label, kind, 3, stem_contains=source):  # (many opencv-doc charts are compound)
        with Image.open(path) as image:
            assert panels.find_panels(image.convert("RGB")) == [], path


def test_a_chart_with_a_title_and_stars_on_a_black_sky_stay_whole():
    chart = Image.new("RGB", (600, 400), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((220, 10), "Monthly admissions, 2019-2024", fill="black")  # a band far under a panel's share
    draw.rectangle((60, 40, 580, 360), outline="black")
    draw.line([(60 + 20 * i, 360 - (i * 37) % 300) for i in range(27)], fill="blue", width=2)
    assert panels.find_panels(chart) == []
    sky = Image.new("L", (600, 400), 3)
    for x, y in ((50, 60), (300, 200), (520, 330), (150, 350)):
        ImageDraw.Draw(sky).ellipse((x - 4, y - 4, x + 4, y + 4), fill=255)
    assert panels.find_panels(sky.convert("RGB")) == [], "dark gutters part panels only when panels are not sky"


@pytest.mark.parametrize(
    "band, split",
    [((255, 255, 255), True), ((128, 128, 128), True), ((128, 0, 128), False), ((245, 225, 200), False)],
)
def test_a_gutter_is_white_grey_or_black_never_a_colour(band, split):
    """Papers part panels with white, grey or black; a band of colour (a flag's stripe, a tinted slide's
    background, a wallpaper's gradient) is part of one picture, however uniform."""
    figure = grid(PHOTOS[:2], 1, 2, gutter=16, background=band)
    assert len(panels.find_panels(figure)) == (2 if split else 0)


def test_cells_on_a_tinted_slide_and_a_colour_gradient_stay_whole():
    """Real pictures the rule before split: a white cell among red ones on a beige smear (its clear background
    ran top to bottom), a wallpaper whose gradient is uniform down each column."""
    paths = corpus_images("medical", "cytology", 1, "zxaoyou_segmentation_wbc__009") + corpus_images(
        "non_medical", "wallpaper", 1, "fossa_by_jasper_roks__crop1"
    )
    assert len(paths) == 2
    for path in paths:
        with Image.open(path) as image:
            assert panels.find_panels(image.convert("RGB")) == [], path


def test_a_caption_running_under_a_strip_does_not_hide_its_gutters():
    strip = grid(PHOTOS[:4], 1, 4, cell=160, gutter=4)
    figure = Image.new("RGB", (strip.width, strip.height + 40), "white")
    figure.paste(strip, (0, 0))
    caption = "Figure 3. (A-D) Representative cases from the four centres; arrows mark the findings."
    ImageDraw.Draw(figure).text((4, strip.height + 12), caption, fill="black")  # under three of the four panels
    boxes = sorted(panels.find_panels(figure))
    assert len(boxes) == 4 and all(box[3] <= strip.height for box in boxes)  # the caption is in none of them


def test_letterboxed_pictures_on_a_black_grid_are_its_panels():
    """A wide picture centred in its cell leaves black bands that run into the black gutters: the cell is not
    'mostly gutter', its picture is what counts."""
    figure = Image.new("RGB", (3 * 200 + 4 * 6, 2 * 200 + 3 * 6), "black")
    for n, path in enumerate(PHOTOS[:5] + SCANS[:1]):
        with Image.open(path) as image:
            picture = image.convert("RGB").resize((200, 90))
        r, c = divmod(n, 3)
        figure.paste(picture, (6 + c * 206, 6 + r * 206 + 55))
    assert len(panels.find_panels(figure)) == 6


def test_no_panel_under_min_size_is_split_off():
    small = grid(PHOTOS[:4], 2, 2, cell=30, gutter=4)
    assert panels.find_panels(small, min_size=32) == []
    assert len(panels.find_panels(small, min_size=16)) == 4


def test_nine_panels_are_not_nine_chances_of_a_false_alarm():
    assert panels.combine(0.2, [0.6] * 9) == 0.0  # not nine chances at 0.6, and never below 0
    assert panels.combine(0.2, [0.9] * 9) == pytest.approx(1 - 3 * 0.1)
    assert panels.combine(0.2, [0.1] * 8 + [0.995]) == pytest.approx(1 - 3 * 0.005)
    assert panels.combine(0.2, [0.1, 0.96, 0.1, 0.1]) == pytest.approx(1 - 2 * 0.04)
    assert panels.combine(0.99, [0.1, 0.1, 0.1]) < 0.01  # a split image's shrunken whole view does not vote
    assert panels.combine(0.7, []) == 0.7  # a single picture keeps its own p


def test_the_cli_gives_the_figures_label_and_its_panels(tmp_path):
    figure = grid([PHOTOS[0], PHOTOS[1], SCANS[0], PHOTOS[2]], 2, 2)
    path = tmp_path / "figure.png"
    figure.save(path)
    done = run(["--json", str(path), "--quiet"])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    [image] = report["inputs"][0]["images"]
    assert len(image["panels"]) == 4
    assert all(len(p["box"]) == 4 and 0 <= p["p_medical"] <= 1 for p in image["panels"])
    scan_panel = max(image["panels"], key=lambda p: p["p_medical"])
    x0, y0, x1, y1 = scan_panel["box"]  # the scan's cell, less its black margins: the scan decides
    assert 4 <= x0 < x1 <= 212 and 212 <= y0 < y1 <= 420 and (x1 - x0) * (y1 - y0) >= 200 * 200 / 2
    assert image["label"] == "medical"
    assert image["label"] == ("medical" if image["p_medical"] >= report["model"]["threshold"] else "non-medical")
    assert image["p_medical"] == pytest.approx(1 - 4**0.5 * (1 - scan_panel["p_medical"]), abs=1e-3)  # 4 panels
    whole = json.loads(run(["--json", str(path), "--quiet", "--whole-images"]).stdout)["inputs"][0]["images"][0]
    assert "panels" not in whole and "p_whole" not in whole
    assert whole["p_medical"] == pytest.approx(image["p_whole"], abs=0.05)  # the same view, at half the detail


def at_working_size(path) -> Image.Image:
    """The copy the CLI reads panels from: the shorter side at twice the model's 256 px resize."""
    with Image.open(path) as image:
        return images.reduce(image.convert("RGB"), 512)


def test_a_page_whose_pieces_are_all_light_ground_stays_whole():
    """Scanned pages and receipts (text blocks parted by white) were read as 3-4 "panels" each, printed p 0.000."""
    pages = corpus_images("non_medical", "text", 1, "tesseract-ocr_test__devatest.jpg") + corpus_images(
        "non_medical", "text", 1, "icdar-2019-sroie__002"
    )
    assert len(pages) == 2
    for path in pages:
        assert panels.find_panels(at_working_size(path)) == [], path


def test_one_picture_among_light_pieces_still_splits_them():
    charts = corpus_images("non_medical", "chart", 4, "scienceplots")
    assert len(charts) == 4
    assert panels.find_panels(grid(charts, 2, 2)) == []  # a chart's facets: one chart
    assert len(panels.find_panels(grid(charts[:3] + SCANS[:1], 2, 2))) == 4  # a CT among them: a compound figure
