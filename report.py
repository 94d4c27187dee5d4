"""Results as people and programs read them: the JSON schema, JSON lines, CSV, the table and the HTML report.

Everything here takes plain records (the dicts of README's schema) and returns text, so the CLI and the Ray
sweep write the same fields the same way.
"""

import base64
import csv
import html
import io
import os
import pathlib
import re

import engine
import phi as phi_module
from pages import is_http_url

THUMBNAIL = 160
UNCERTAIN = 0.1  # p_medical within this of the threshold is marked uncertain in the report


def image_record(
    found, p: float, label: str, saved_path: str | None = None, panel_ps=(), phi=None, p_whole: float | None = None
) -> dict:
    """One classified image, as README's schema names its fields (p_medical to 4 places); a compound figure's
    `panels` give each panel's box in the original's pixels and its own p_medical, and `p_whole` the whole
    view's own, so a reader sees which view decided."""
    return {
        "source": found.source,
        "page": found.page,
        "width": found.width,
        "height": found.height,
        "label": label,
        "p_medical": round(float(p), 4),
        "saved_path": saved_path,
        "format": found.format,
        **({"thumbnail": found.thumbnail} if found.thumbnail else {}),
        **({"found_on": found.found_on} if found.found_on else {}),
        **({"panels": panel_records(found, panel_ps)} if panel_ps else {}),
        **({"p_whole": round(float(p_whole), 4)} if panel_ps and p_whole is not None else {}),
        **({"phi": phi} if phi else {}),
    }


def panel_records(found, panel_ps) -> list[dict]:
    scale = found.width / found.image.width
    return [{"box": [round(v * scale) for v in box], "p_medical": round(float(p), 4)} for box, p in panel_ps]


def skipped_record(skipped, phi=None) -> dict:
    return {"source": skipped.source, "reason": skipped.reason, **({"phi": phi} if phi else {})}


def thumbnail(image) -> str:
    """A small JPEG data URI, so the report is one self-contained file."""
    small = engine.to_rgb(image).copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def model_record(model, model_path: str) -> dict:
    return {"path": model_path, "arch": model.arch, "threshold": round(model.threshold, 4), "engine": model.name}


def input_record(
    text: str, kind: str | None, error: str | None, images: list, skipped: list, downloads_failed: int = 0
) -> dict:
    """One input of the JSON schema; `kind` is what the tool took the input for, or `unknown`; `downloads_failed`
    counts its images whose download failed (listed under skipped)."""
    return {
        "input": text,
        "kind": kind or "unknown",
        "error": error,
        "images": images,
        "skipped": skipped,
        "downloads_failed": downloads_failed,
    }


def is_download_failure(reason: str) -> bool:
    return reason.startswith(("download failed", "linked image: download failed"))


def all_downloads_failed(images: int, downloads_failed: int) -> str | None:
    """The problem of an input whose every image download failed (nothing classified), or None."""
    if images or not downloads_failed:
        return None
    return f"every image download failed ({plural(downloads_failed, 'download')}; listed as skipped)"


def new_summary() -> dict:
    return {"inputs": 0, "images": 0, "medical": 0, "non-medical": 0, "skipped": 0, "failed_inputs": 0}


def phi_tally(summary: dict) -> dict:
    """--phi: the summary's images (and unclassified DICOM) per risk, zeros included."""
    return summary.setdefault("phi", dict.fromkeys(phi_module.RISKS, 0))


def count_phi(summary: dict, phi: dict | None) -> None:
    if phi:
        phi_tally(summary)[phi["risk"]] += 1


def add_to_summary(summary: dict, medical: int, non_medical: int, skipped: int, error: str | None) -> dict:
    """Counts of one finished input added in place, so a streamed run keeps only these numbers."""
    summary["inputs"] += 1
    summary["images"] += medical + non_medical
    summary["medical"] += medical
    summary["non-medical"] += non_medical
    summary["skipped"] += skipped
    summary["failed_inputs"] += error is not None
    return summary


# ---------------------------------------------------------------- JSON lines


def image_line(text: str, record: dict) -> dict:
    return {"type": "image", "input": text, **record}


def skipped_line(text: str, record: dict) -> dict:
    return {"type": "skipped", "input": text, **record}


def file_line(text: str, finished) -> dict:
    """The line that says one file of a folder (one page of a crawl) is done: a resumed run does not read it
    again. `covers`: other files a saved page read; `links`: a crawled page's same-site links."""
    return {
        "type": "file",
        "input": text,
        "file": finished.source,
        "covers": list(finished.covers),
        **({"links": list(finished.links)} if finished.links is not None else {}),
    }


def input_line(entry: dict, images: int, skipped: int) -> dict:
    """The line that says an input ended; a resumed run skips the inputs that have one."""
    return {
        "type": "input",
        "input": entry["input"],
        "kind": entry["kind"],
        "status": "failed" if entry["error"] else "done",
        "error": entry["error"],
        "images": images,
        "skipped": skipped,
        "downloads_failed": entry.get("downloads_failed", 0),
    }


# ---------------------------------------------------------------- CSV and table

CSV_FIELDS = [
    "input",
    "kind",
    "status",
    "source",
    "page",
    "width",
    "height",
    "label",
    "p_medical",
    "saved_path",
    "reason",
    "format",
    "thumbnail",
    "found_on",
    "phi_risk",
    "phi_found",
]


def phi_columns(record: dict) -> dict:
    """CSV's two PHI columns: the risk, and each finding as where:kind[:attribute or field] (values, when
    --phi-values gives them, after =), parted by " | " (space, bar, space)."""
    if not (phi := record.get("phi")):
        return {}
    found = [
        ":".join([f["in"], f["kind"]] + [str(f[k]) for k in ("attribute", "field") if k in f])
        + (f"={f['value']}" if "value" in f else "")
        for f in phi["found"]
    ]
    return {"phi_risk": phi["risk"], "phi_found": " | ".join(found) or phi.get("error", "")}


def to_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in report["inputs"]:
        base = {"input": entry["input"], "kind": entry["kind"]}
        if entry["error"]:
            writer.writerow({**base, "status": "error", "reason": entry["error"]})
        for image in entry["images"]:
            writer.writerow({**base, "status": "classified", **image, **phi_columns(image)})
        for skipped in entry["skipped"]:
            writer.writerow({**base, "status": "skipped", **skipped, **phi_columns(skipped)})
    return buffer.getvalue()


def shorten(text: str, width: int) -> str:
    """Cut in the middle, keeping the start (scheme, host) and more of the end (the file's name)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 3
    return text[:head] + "…" + text[-(width - 1 - head) :]


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def phi_text(phi: dict) -> str:
    """likely (name, id in pixels; date in dicom)"""
    kinds: dict = {}
    for f in phi["found"]:
        kinds.setdefault(f["in"], {})[f["kind"]] = None  # each kind once per place, in the order found
    where = "; ".join(f"{', '.join(k)} in {w}" for w, k in kinds.items())
    extra = where or phi.get("error") or (f"de-identified by {phi['deidentified']}" if phi.get("deidentified") else "")
    return phi["risk"] + (f" ({extra})" if extra else "")


def phi_counts(counts: dict) -> str:
    """The summary's PHI part: `PHI 3 likely, 1 possible, 8 none`."""
    return "PHI " + (", ".join(f"{n} {risk}" for risk, n in counts.items() if n) or "0 checked")


def summary_line(summary: dict, n_inputs: int) -> str:
    line = (
        f"{plural(summary['images'], 'image')}: {summary['medical']} medical, {summary['non-medical']} "
        f"non-medical; {summary['skipped']} skipped; {summary['failed_inputs']} of {plural(n_inputs, 'input')} "
        "failed"
    )
    if (counts := summary.get("phi")) is not None:
        line += "; " + phi_counts(counts)
    return line + ("; interrupted" if summary.get("interrupted") else "")


def to_table(report: dict) -> str:
    lines = []
    for entry in report["inputs"]:
        lines.append(f"== {entry['input']} ({entry['kind']})")
        if entry["error"]:
            lines.append(f"   error: {entry['error']}")
        elif problem := all_downloads_failed(len(entry["images"]), entry.get("downloads_failed", 0)):
            lines.append(f"   note: {problem}")
        if entry.get("interrupted"):
            lines.append("   interrupted: only what was found before the stop is listed")
        if entry["images"]:
            lines.append(f"   {'source':60s} {'page':>4s} {'size':>11s}  {'label':11s} {'p(medical)':>10s}")
        for im in entry["images"]:
            lines.append(
                f"   {shorten(im['source'], 60):60s} {im['page'] or '':>4} "
                f"{str(im['width']) + 'x' + str(im['height']):>11s}  {im['label']:11s} "
                f"{im['p_medical']:10.3f}"
                + (
                    f"  {len(im['panels'])} panels, the most medical {max(q['p_medical'] for q in im['panels']):.3f} on its own"
                    if im.get("panels")
                    else ""
                )
                + (f"  PHI {phi_text(im['phi'])}" if im.get("phi") else "")
            )
        reasons: dict = {}
        for sk in entry["skipped"]:
            reason = re.sub(r" \(\d+x\d+\)$", "", sk["reason"])
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            lines.append(f"   skipped {n}: {reason}")
    lines.append(summary_line(report["summary"], len(report["inputs"])))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

SINGULAR = {"images": "image", "failed inputs": "failed input"}
FILTERS = ("all", "medical", "non-medical", "uncertain", "phi")  # phi: only with --phi
# The part of a source the tool appended to name one image of a file: a PDF page and image, a frame, a data: URI.
NAMED_PART = re.compile(r"#(?:page=(\d+)(?:&image=\d+)?|frame=\d+|data-uri-\d+)$")


def is_uncertain(p_medical: float, threshold: float) -> bool:
    """Near enough the threshold that a person should look; both are rounded to 4 places, hence the epsilon."""
    return abs(p_medical - threshold) <= UNCERTAIN + 1e-9


def file_link(path: str) -> str:
    return pathlib.Path(os.path.abspath(path)).as_uri()


def source_link(source: str) -> str | None:
    """Where a person can open a source: its http(s) URL, or its local file (a PDF at the image's page); None for
    a data: URI or another scheme."""
    named = NAMED_PART.search(source)
    base = source[: named.start()] if named else source
    at_page = f"#page={named.group(1)}" if named and named.group(1) else ""
    if is_http_url(base):
        return base + at_page
    if base.lower().startswith("data:") or "://" in base:
        return None
    return file_link(base) + at_page


HTML_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em;margin:.2em 0} h2{font-size:1.05em;overflow-wrap:anywhere;margin:1.2em 0 .4em}
a{color:#1a5276} [hidden]{display:none!important} .muted{color:#666}
.counts{display:flex;flex-wrap:wrap;gap:.4em 1.4em;list-style:none;padding:0;margin:.6em 0}
.counts b{font-size:1.3em}
.legend{display:flex;flex-wrap:wrap;gap:.4em 1.4em;align-items:center;font-size:13px;margin:.4em 0}
.swatch{display:inline-block;width:1.1em;height:1.1em;border:3px solid;border-radius:4px;vertical-align:middle}
#controls{margin:.6em 0;display:flex;flex-wrap:wrap;gap:.4em;align-items:center}
#controls button{font:inherit;padding:.25em .8em;border:1px solid #888;border-radius:1em;background:#fff;cursor:pointer}
#controls button[aria-pressed=true]{background:#222;color:#fff}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px}
.card{border:3px solid #ccc;border-radius:6px;padding:6px;font-size:12px;display:flex;flex-direction:column;gap:3px}
.pic{height:160px;display:flex;align-items:center;justify-content:center;margin-bottom:4px}
.pic img{max-width:100%;max-height:160px} .noimg{background:#eee;color:#666}
.medical{border-color:#c0392b;background:#fdecea} .non-medical{border-color:#2e86c1;background:#eaf2fb}
.uncertain{border-style:dashed;background:#fef5e7} .swatch.uncertain{border-color:#888}
.medical .verdict{color:#922b21} .non-medical .verdict{color:#1b4f72}
.verdict{font-weight:bold;font-size:14px} .phi{border-radius:3px;padding:0 4px;font-size:11px;color:#fff;background:#7f8c8d}
.phi.likely{background:#c0392b} .phi.possible{background:#d68910} .mark{background:#d68910;color:#fff;border-radius:3px;padding:0 4px;
font-size:11px;margin-left:4px}
.gauge{position:relative;height:6px;background:#ddd;border-radius:3px}
.gauge span{position:absolute;left:0;top:0;bottom:0;background:#555;border-radius:3px}
.gauge i{position:absolute;top:-3px;bottom:-3px;width:2px;background:#000}
.src{overflow-wrap:anywhere} .error{color:#c0392b;font-weight:bold;overflow-wrap:anywhere}
details li{overflow-wrap:anywhere}
"""

# Filter and sort; the page reads its state from the address (#filter=uncertain&sort=p) so a view can be shared.
# Without JS the controls stay hidden and every card shows in the order found.
HTML_SCRIPT = """
const cards = [...document.querySelectorAll('.card')], controls = document.getElementById('controls');
const threshold = +document.body.dataset.threshold;
const keys = {found: c => +c.dataset.order, p: c => -c.dataset.p, near: c => Math.abs(c.dataset.p - threshold)};
function apply() {
  const state = new URLSearchParams(location.hash.slice(1)), filter = state.get('filter') || 'all';
  const sort = keys[state.get('sort')] ? state.get('sort') : 'found';
  for (const c of cards) c.hidden = !(filter === 'all' || (['uncertain', 'phi'].includes(filter) ? filter in c.dataset
                                                              : c.dataset.label === filter));
  for (const s of document.querySelectorAll('section.input'))
    s.hidden = filter !== 'all' && !s.querySelector('.card:not([hidden])');
  for (const g of document.querySelectorAll('.grid'))
    [...g.children].sort((a, b) => keys[sort](a) - keys[sort](b)).forEach(c => g.appendChild(c));
  for (const b of controls.querySelectorAll('button')) b.setAttribute('aria-pressed', b.dataset.filter === filter);
  controls.querySelector('select').value = sort;
}
function go(change) {
  const state = new URLSearchParams(location.hash.slice(1));
  for (const [k, v] of Object.entries(change)) state.set(k, v);
  location.hash = state.toString();
}
controls.querySelectorAll('button').forEach(b => b.onclick = () => go({filter: b.dataset.filter}));
controls.querySelector('select').onchange = e => go({sort: e.target.value});
window.onhashchange = apply;
controls.hidden = false;
apply();
"""


def _link(url: str | None, text: str, title: str = "") -> str:
    esc = html.escape
    title_attr = f' title="{esc(title)}"' if title else ""
    return f'<a href="{esc(url)}"{title_attr}>{esc(text)}</a>' if url else f"<span>{esc(text)}</span>"


def _card(image: dict, order: int, thumb: str | None, threshold: float) -> str:
    """One image: what the model said (p_medical itself, never the label's own confidence), and where it is."""
    esc, p = html.escape, image["p_medical"]
    uncertain = is_uncertain(p, threshold)
    classes = " ".join(["card", image["label"]] + (["uncertain"] if uncertain else []))
    source_url = source_link(image["source"])
    saved = image.get("saved_path")
    opened = file_link(saved) if saved else source_url
    picture = f'<img src="{esc(thumb)}" alt="">' if thumb else "no preview"
    facts = (
        [f"{image['width']}×{image['height']}"]
        + ([f"page {image['page']}"] if image.get("page") else [])
        + ([esc(image["format"])] if image.get("format") else [])
    )
    links = ([_link(file_link(saved), "saved file", saved)] if saved else []) + (
        [_link(source_link(image["thumbnail"]), "thumbnail on the page", image["thumbnail"])]
        if image.get("thumbnail")
        else []
    )
    return (
        f'<article class="{esc(classes)}" data-label="{esc(image["label"])}" data-p="{p}" data-order="{order}"'
        f"{' data-uncertain' if uncertain else ''}{' data-phi' if phi_module.flagged(image.get('phi')) else ''}>"
        + (
            f'<a class="pic" href="{esc(opened)}">{picture}</a>'
            if opened
            else f'<div class="pic{"" if thumb else " noimg"}">{picture}</div>'
        )
        + f'<div class="verdict">{esc(image["label"])}{" <span class=mark>uncertain</span>" if uncertain else ""}'
        + (
            f' <span class="phi {esc(image["phi"]["risk"])}" title="{esc(phi_text(image["phi"]))}">'
            f"PHI {esc(image['phi']['risk'])}</span>"
            if image.get("phi")
            else ""
        )
        + f'</div><div class="p">p(medical) {p:.3f}</div>'
        f'<div class="gauge" title="p(medical) {p:.3f}, threshold {threshold:.3f}">'
        f'<span style="width:{100 * min(max(p, 0), 1):.1f}%"></span>'
        f'<i style="left:{100 * min(max(threshold, 0), 1):.1f}%"></i></div>'
        f'<div class="muted">{" · ".join(facts)}</div>'
        f'<div class="src">{_link(source_url, image["source"])}</div>'
        + (f'<div class="links">{" · ".join(links)}</div>' if links else "")
        + "</article>"
    )


def to_html(report: dict, thumbnails: list[list[str]]) -> str:
    """`thumbnails[i][j]` is the data URI of image j of input i. One file, no network: styles, script and
    thumbnails are inline; the only addresses are links to the sources and saved files."""
    esc, model, summary = html.escape, report["model"], report["summary"]
    threshold = model["threshold"]
    images = [im for entry in report["inputs"] for im in entry["images"]]
    counts = {
        "images": summary["images"],
        "medical": summary["medical"],
        "non-medical": summary["non-medical"],
        "uncertain": sum(is_uncertain(im["p_medical"], threshold) for im in images),
        "skipped": summary["skipped"],
        "failed inputs": summary["failed_inputs"],
        **{f"PHI {risk}": n for risk, n in summary.get("phi", {}).items() if risk != phi_module.NONE},
    }
    shown = {
        "all": len(images),
        "uncertain": counts["uncertain"],
        **{label: sum(im["label"] == label for im in images) for label in ("medical", "non-medical")},
        "phi": sum(phi_module.flagged(im.get("phi")) for im in images),
    }
    shown_note = (
        f" Showing {len(images)} of the {summary['images']} images (--only); the counts are of all of them,"
        " but uncertain only of those shown."
        if len(images) != summary["images"]
        else ""
    )
    parts = [
        f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Medical image report</title>
<style>{HTML_STYLE}</style></head><body data-threshold="{threshold}">
<h1>Medical image report</h1>
<p class="muted">Model {esc(str(model.get("arch")))} ({esc(str(model.get("engine", "")))}),
threshold {threshold:.3f}: an image is medical when p(medical) is at or above it.
{plural(len(report["inputs"]), "input")}{"; interrupted" if summary.get("interrupted") else ""}.{shown_note}</p>
<ul class="counts">"""
        + "".join(
            f'<li data-count="{esc(name)}"><b>{n}</b> {esc(SINGULAR.get(name, name) if n == 1 else name)}</li>'
            for name, n in counts.items()
        )
        + f"""</ul>
<div class="legend"><span><span class="swatch medical"></span> medical: p(medical) &ge; {threshold:.3f}</span>
<span><span class="swatch non-medical"></span> non-medical: p(medical) &lt; {threshold:.3f}</span>
<span><span class="swatch uncertain"></span><span class="mark">uncertain</span> p(medical) within {UNCERTAIN}
of the threshold: look for yourself</span>
<span><span class="gauge" style="display:inline-block;width:60px"><span style="width:70%"></span>
<i style="left:{100 * threshold:.0f}%"></i></span> bar: p(medical), tick: threshold</span></div>
<div id="controls" hidden>show """
        + "".join(
            f'<button type="button" data-filter="{f}">{"PHI possible or likely" if f == "phi" else f} ({shown[f]})'
            "</button>"
            for f in FILTERS
            if f != "phi" or "phi" in summary
        )
        + """ &nbsp; sort <select><option value="found">order found</option>
<option value="p">p(medical), highest first</option><option value="near">nearest the threshold first</option>
</select></div>"""
    ]
    order = 0
    for entry, thumbs in zip(report["inputs"], thumbnails + [[]] * (len(report["inputs"]) - len(thumbnails))):
        parts.append(
            f'<section class="input"><h2>{esc(entry["input"])} <small class="muted">'
            f"({esc(entry['kind'])}, {plural(len(entry['images']), 'image')})</small></h2>"
        )
        if entry["error"]:
            parts.append(f'<p class="error">error: {esc(entry["error"])}</p>')
        parts.append('<div class="grid">')
        for j, image in enumerate(entry["images"]):
            parts.append(_card(image, order, thumbs[j] if j < len(thumbs) else None, threshold))
            order += 1
        parts.append("</div>")
        if entry["skipped"]:
            parts.append(f"<details><summary>{len(entry['skipped'])} skipped</summary><ul>")
            parts += [f"<li>{esc(s['source'])}: {esc(s['reason'])}</li>" for s in entry["skipped"]]
            parts.append("</ul></details>")
        parts.append("</section>")
    parts.append(f"<script>{HTML_SCRIPT}</script></body></html>")
    return "\n".join(parts)
