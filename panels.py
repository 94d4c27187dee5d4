"""Compound figures: an image made of panels (a grid or strip of frames or slices, panels parted by gutters, crops
beside caption text) is split into its panels, each classified; a single photo, scan or chart is not split.
An image whose pieces are all mostly light ground (a scanned form, a text banner, a chart's facets) is a page's
content, not panels, and stays whole.

Gutters are found from the image itself: full-width (or full-height) runs of uniform rows (columns) of white,
grey or black inside it, cut recursively, rows then columns (an XY cut). Pieces too small to be a panel (a caption
line, an axis label, a band under `min_size`) are never split off: they stay with their neighbour, so a chart with
a title is one image; but a caption running under a strip of panels does not hide the gutters between them.

The image is medical when one of its panels is, by a stricter bar that grows with their number (1 - p of a panel
is multiplied by the square root of their number), so a nine-panel mosaic of non-medical photos is not nine
chances of a false alarm. The shrunken whole view of a split image is classified and reported, but does not vote.
"""

from typing import NamedTuple

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 768  # gutters are looked for on a copy this large at most
UNIFORM_LEVELS = 10  # a row is a gutter's when its grey levels span at most this many
MIN_GUTTER = 0.004  # a gutter is at least this share of the side (and 2 px of the copy)
MIN_PANEL = 0.12  # a panel is at least this share of the shorter side of what it is cut from
MAX_DEPTH = 4
MAX_PANELS = 16  # more pieces than this is a table or a mosaic of icons, not panels to read one by one
LIGHT_GUTTER = 200  # a paper's white or light grey gutter; a darker one parts panels only where each panel is mostly
DARK_SHARE = 0.5  # ... not of the gutter's colour (stars on a black sky, a CT slice on black are one picture)
NEUTRAL_CHROMA = 12  # a gutter is white, grey or black: its median max-min over R, G, B at most this
PAPER_SHARE = 0.75  # pieces all at least this share light (LIGHT_GUTTER and up) are a page's, not panels


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _segments(uniform: np.ndarray, min_gutter: int, min_panel: int) -> list[tuple[int, int]]:
    """Content segments along one axis between gutters (uniform runs of at least min_gutter inside the span).
    A segment under min_panel at either end (a caption line, a title, panel letters) is left out; one inside is
    merged into its smaller neighbour, gutter and all."""
    content = np.flatnonzero(~uniform)
    if not len(content):
        return []
    first, last = content[0], content[-1] + 1  # margins are trimmed, never gutters
    gutters = [(a, b) for a, b in _runs(uniform[first:last]) if b - a >= min_gutter]
    cuts = [first] + [x for a, b in gutters for x in (first + a, first + b)] + [last]
    segments = [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]
    while len(segments) > 1 and segments[0][1] - segments[0][0] < min_panel:
        segments.pop(0)
    while len(segments) > 1 and segments[-1][1] - segments[-1][0] < min_panel:
        segments.pop()
    while len(segments) > 1:
        sizes = [b - a for a, b in segments]
        small = int(np.argmin(sizes))
        if sizes[small] >= min_panel:
            break
        if sizes[small + 1] < sizes[small - 1]:
            segments[small : small + 2] = [(segments[small][0], segments[small + 1][1])]
        else:
            segments[small - 1 : small + 1] = [(segments[small - 1][0], segments[small][1])]
    return segments


def _gutter_share(piece: np.ndarray, colour: float) -> float:
    """The share of a piece in the gutter's colour, over its content: rows and columns wholly of that colour (a
    picture's letterbox in its cell, a slice's black margins, the gutters inside the piece) are left out, so a wide
    photo centred in a black cell or a CT slice in a black grid is a panel, while stars on a black sky, sparse all
    over their piece, stay mostly black. (One scan on black has no dark gutter through it to weigh; two separate
    ones side by side, such as a PET slice of both legs, are read as two panels.)"""
    near = np.abs(piece - colour) <= UNIFORM_LEVELS
    rows, cols = ~near.all(axis=1), ~near.all(axis=0)
    return float(near[rows][:, cols].mean()) if rows.any() else 1.0


def _parted(region: np.ndarray, colours: Image.Image, segments: list[tuple[int, int]], axis: int) -> bool:
    """Whether the gutters between `segments` part panels. Only a white, grey or black one can (a band of colour,
    however uniform, is part of a picture: a tinted slide's clear background, a flag's stripe, a wallpaper's
    gradient); one with a light stretch always does (a white gutter beside a scan's black margin included), a
    dark one only between panels that are not mostly of its colour. `colours`: the region in RGB."""
    take = lambda array, a, b: array[a:b] if axis == 0 else array[:, a:b]
    rgb = np.asarray(colours)  # uint8, so max - min cannot wrap
    for left, right in zip(segments, segments[1:]):
        stretch = take(rgb, left[1], right[0])
        if float(np.median(stretch.max(axis=2) - stretch.min(axis=2))) > NEUTRAL_CHROMA:
            return False
        lines = take(region, left[1], right[0]).mean(axis=1 - axis)
        if lines.max() >= LIGHT_GUTTER:
            continue
        colour = float(np.median(lines))
        if any(_gutter_share(take(region, a, b), colour) >= DARK_SHARE for a, b in (left, right)):
            return False
    return True


def _paper(grey: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether a piece is mostly light ground: a scanned form's blocks, a text banner's words and a chart's facets
    are all this, so an image whose pieces all are stays whole; a figure with one picture among them is split.
    Chosen on validation mosaics (3 source-held-out folds, 150 of each kind, 2026-12-07): validation singles split
    fell from 101 to 69 a fold, one medical panel found 0.893 to 0.891, all-non-medical kept 0.876 unchanged."""
    x0, y0, x1, y1 = box
    return float(np.mean(grey[y0:y1, x0:x1] >= LIGHT_GUTTER)) >= PAPER_SHARE


def _cut(grey: np.ndarray, image: Image.Image, box: tuple[int, int, int, int], min_side: int, depth: int) -> list:
    """The leaves of an XY cut of `box`. Where one axis has a single segment with margins or small bands beside it
    (a caption under a strip of panels), the other axis is searched within that segment alone, so text that runs
    under several panels does not hide the gutters between them; if nothing is split there, `box` stays whole, its
    title and labels with it."""
    x0, y0, x1, y1 = box
    for axis in (0, 1):  # 0: split into rows of panels (horizontal gutters), 1: into columns
        region = grey[y0:y1, x0:x1]
        spread = region.max(axis=1 - axis) - region.min(axis=1 - axis)
        side = region.shape[axis]
        segments = _segments(
            spread <= UNIFORM_LEVELS,
            max(2, round(MIN_GUTTER * side)),
            max(min_side, round(MIN_PANEL * min(region.shape))),
        )
        if len(segments) >= 2 and _parted(region, image.crop((x0, y0, x1, y1)), segments, axis):
            pieces = [(x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1) for a, b in segments]
            if depth + 1 >= MAX_DEPTH:
                return pieces
            return [leaf for piece in pieces for leaf in _cut(grey, image, piece, min_side, depth + 1)]
        if len(segments) == 1:  # search the other axis within the segment alone
            a, b = segments[0]
            x0, y0, x1, y1 = (x0, y0 + a, x1, y0 + b) if axis == 0 else (x0 + a, y0, x0 + b, y1)
    return [box]


def find_panels(image: Image.Image, min_size: int = 32, width: int | None = None) -> list[tuple[int, int, int, int]]:
    """The panels of a compound figure as (x0, y0, x1, y1) boxes in `image`'s pixels; [] for a single picture.
    `width`: the original's width when `image` is a reduced copy (min_size counts original pixels)."""
    scale = min(1.0, ANALYSIS_SIDE / max(image.size))
    small = image if image.mode == "RGB" else image.convert("RGB")
    if scale < 1:
        small = small.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BOX
        )
    grey = np.asarray(small.convert("L"), dtype=np.int16)
    to_original = (width or image.width) / small.width
    min_side = max(2, int(np.ceil(min_size / to_original)))
    boxes = _cut(grey, small, (0, 0, small.width, small.height), min_side, 0)
    trimmed = [box for box in boxes if (box[2] - box[0]) >= min_side and (box[3] - box[1]) >= min_side]
    if len(trimmed) < 2 or len(trimmed) > MAX_PANELS or all(_paper(grey, box) for box in trimmed):
        return []
    back = image.width / small.width
    return [(round(a * back), round(b * back), round(c * back), round(d * back)) for a, b, c, d in trimmed]


def combine(p_whole: float, panel_ps: list[float]) -> float:
    """The figure's p_medical: its most medical panel's after a correction for their number n (1 - p times
    sqrt(n), at least 0), so the model's threshold applies unchanged; an image not split keeps its own p. Chosen
    on validation mosaics, each fold's model on its own held-out sources (benchmarks/compound_figures.py --cv,
    2026-12-06): a mosaic's shrunken whole view raised false alarms more than it found medical panels (with it as
    one more corrected view, 0.889 of one-medical-panel mosaics found and 0.830 of all-non-medical ones kept;
    without, 0.879 and 0.862)."""
    if not panel_ps:
        return p_whole
    return max(0.0, 1 - len(panel_ps) ** 0.5 * (1 - max(panel_ps)))


class Figure(NamedTuple):
    p: float  # the figure's p_medical (combine)
    panels: list  # [(box, p)] per panel; [] for a single picture
    whole: float  # p_medical of the whole view


def predict_figures(
    model, images: list, boxes: list[list] | None = None, min_size: int = 32, batch_size: int | None = None
) -> list[Figure]:
    """Each image's Figure, the whole views and all panels in one predict call."""
    boxes = boxes if boxes is not None else [find_panels(image, min_size) for image in images]
    crops = [image.crop(box) for image, image_boxes in zip(images, boxes) for box in image_boxes]
    ps = model.predict(list(images) + crops, batch_size) if images else []
    out, at = [], len(images)
    for n, image_boxes in enumerate(boxes):
        panel_ps = [float(p) for p in ps[at : at + len(image_boxes)]]
        at += len(image_boxes)
        out.append(Figure(combine(float(ps[n]), panel_ps), list(zip(image_boxes, panel_ps)), float(ps[n])))
    return out
