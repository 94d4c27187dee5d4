"""Results as people and programs read them: the JSON schema, JSON lines, CSV, the table and the HTML report.

Everything here takes plain records (the dicts of README's schema) and returns text, so the CLI and the Ray
sweep write the same fields the same way.
"""
import base64
import csv
import html
import io
import re

import engine

THUMBNAIL = 160
UNCERTAIN = 0.1  # p_medical within this of the threshold is marked uncertain in the report


def image_record(found, p: float, label: str, saved_path: str | None = None) -> dict:
    """One classified image, as README's schema names its fields (p_medical to 4 places)."""
    return {"source": found.source, "page": found.page, "width": found.width, "height": found.height,
            "label": label, "p_medical": round(float(p), 4), "saved_path": saved_path, "format": found.format,
            **({"thumbnail": found.thumbnail} if found.thumbnail else {})}


def skipped_record(skipped) -> dict:
    return {"source": skipped.source, "reason": skipped.reason}


def thumbnail(image) -> str:
    """A small JPEG data URI, so the report is one self-contained file."""
    small = engine.to_rgb(image).copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def model_record(model, model_path: str) -> dict:
    return {"path": model_path, "arch": model.arch, "threshold": round(model.threshold, 4), "engine": model.name}


def input_record(text: str, kind: str | None, error: str | None, images: list, skipped: list) -> dict:
    """One input of the JSON schema; `kind` is what the tool took the input for, or `unknown`."""
    return {"input": text, "kind": kind or "unknown", "error": error, "images": images, "skipped": skipped}


def new_summary() -> dict:
    return {"inputs": 0, "images": 0, "medical": 0, "non-medical": 0, "skipped": 0, "failed_inputs": 0}


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


def input_line(entry: dict, images: int, skipped: int) -> dict:
    """The line that says an input ended; a resumed run skips the inputs that have one."""
    return {"type": "input", "input": entry["input"], "kind": entry["kind"],
            "status": "failed" if entry["error"] else "done", "error": entry["error"],
            "images": images, "skipped": skipped}


# ---------------------------------------------------------------- CSV and table

CSV_FIELDS = ["input", "kind", "status", "source", "page", "width", "height", "label", "p_medical", "saved_path",
              "reason", "format", "thumbnail"]


def to_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for entry in report["inputs"]:
        base = {"input": entry["input"], "kind": entry["kind"]}
        if entry["error"]:
            writer.writerow({**base, "status": "error", "reason": entry["error"]})
        for image in entry["images"]:
            writer.writerow({**base, "status": "classified", **image})
        for skipped in entry["skipped"]:
            writer.writerow({**base, "status": "skipped", **skipped})
    return buffer.getvalue()


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def summary_line(summary: dict, n_inputs: int) -> str:
    line = (f"{summary['images']} images: {summary['medical']} medical, {summary['non-medical']} non-medical; "
            f"{summary['skipped']} skipped; {summary['failed_inputs']} of {n_inputs} inputs failed")
    return line + ("; interrupted" if summary.get("interrupted") else "")


def confidence(image: dict) -> float:
    """How sure the model is of the label it gave: p_medical for medical, 1 - p_medical otherwise."""
    return image["p_medical"] if image["label"] == "medical" else 1 - image["p_medical"]


def to_table(report: dict) -> str:
    lines = []
    for entry in report["inputs"]:
        lines.append(f"== {entry['input']} ({entry['kind']})")
        if entry["error"]:
            lines.append(f"   error: {entry['error']}")
        if entry["images"]:
            lines.append(f"   {'source':60s} {'page':>4s} {'size':>11s}  {'label':11s} {'confidence':>10s}")
        for im in entry["images"]:
            lines.append(f"   {shorten(im['source'], 60):60s} {im['page'] or '':>4} "
                         f"{str(im['width']) + 'x' + str(im['height']):>11s}  {im['label']:11s} "
                         f"{confidence(im):10.3f}")
        reasons: dict = {}
        for sk in entry["skipped"]:
            reason = re.sub(r" \(\d+x\d+\)$", "", sk["reason"])
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in reasons.items():
            lines.append(f"   skipped {n}: {reason}")
    lines.append(summary_line(report["summary"], len(report["inputs"])))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

def to_html(report: dict, thumbnails: list[list[str]]) -> str:
    """`thumbnails[i][j]` is the data URI of image j of input i."""
    esc = html.escape
    parts = [f"""<!doctype html><html><head><meta charset="utf-8"><title>Medical image report</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} h2{{font-size:1.05em;word-break:break-all}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}} .card{{width:{THUMBNAIL + 10}px;border:3px solid #ccc;border-radius:6px;
padding:4px;font-size:12px}} .card img{{max-width:{THUMBNAIL}px;max-height:{THUMBNAIL}px;display:block;margin:auto}}
.medical{{border-color:#c0392b;background:#fdecea}} .non-medical{{border-color:#2e86c1;background:#eaf2fb}}
.label{{font-weight:bold}} .src{{color:#555;word-break:break-all;max-height:3em;overflow:hidden}}
.error{{color:#c0392b;font-weight:bold}} details{{margin:.5em 0}}</style></head><body>
<h1>Medical image report</h1><p>{esc(summary_line(report['summary'], len(report['inputs'])))}.
Model: {esc(report['model']['arch'])}, threshold {report['model']['threshold']:.3f}.</p>"""]
    for entry, thumbs in zip(report["inputs"], thumbnails):
        parts.append(f"<section><h2>{esc(entry['input'])} <small>({esc(entry['kind'])})</small></h2>")
        if entry["error"]:
            parts.append(f"<p class='error'>error: {esc(entry['error'])}</p>")
        parts.append("<div class='grid'>")
        for im, thumb in zip(entry["images"], thumbs):
            page = f" · page {im['page']}" if im["page"] else ""
            parts.append(f"<div class='card {esc(im['label'])}'><img src='{thumb}' alt='{esc(im['source'])}'>"
                         f"<div class='label'>{esc(im['label'])} {confidence(im):.0%}</div>"
                         f"<div>{im['width']}×{im['height']}{page}</div>"
                         f"<div class='src' title='{esc(im['source'])}'>{esc(im['source'])}</div></div>")
        parts.append("</div>")
        if entry["skipped"]:
            parts.append(f"<details><summary>{len(entry['skipped'])} skipped</summary><ul>")
            parts += [f"<li>{esc(s['source'])}: {esc(s['reason'])}</li>" for s in entry["skipped"]]
            parts.append("</ul></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
