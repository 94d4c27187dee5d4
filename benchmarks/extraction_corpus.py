"""Extraction on the real-world files in ../shared/pdfs and ../shared/pages, against their reference figures.

    python benchmarks/extraction_corpus.py            # both folders
    python benchmarks/extraction_corpus.py --pdfs     # PDFs only, timed against `pdfimages -all`
    python benchmarks/extraction_corpus.py --pages    # pages only

PDFs: every file is extracted in a worker process with a time limit (a hang or a
crash kills only the worker, which is restarted for the next file), and compared
with the manifest's `pdfimages -list` summary: recall of distinct images, where
the tool rightly differs (images under --min-size, blank ones, soft masks, stencil masks),
errors by kind, time per file; then `pdfimages -all` (poppler) on the same files,
timed side by side.

Pages: the images live on the real web, so the pure URL finder runs on each saved
page with its original URL as base, against the URLs headless Chromium requested.
A reference URL counts as found when the finder returned it or another candidate
of the same <img> (a different srcset width, a placeholder `src` beside a lazy-loading attribute: the tool reads
one candidate per element, the largest, and the next ones only when it gives no image), or is the image a link
around the <img> leads to (which the tool reads instead of the thumbnail), or is a placeholder `src` (a
blank.gif, a lazy-loading.png) whose real lazy-loaded image the tool reads instead, by design. URLs only lazy attributes hold
(`lazy_attr_only`) and og:image URLs are reported apart, not as extras.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

from common import SHARED

import extract
import pages

PDFS, PAGES = SHARED / "pdfs", SHARED / "pages"


# ---------------------------------------------------------------- PDFs


def worker():
    """Read PDF paths on stdin, print one JSON line of results per file."""
    options = extract.Options()
    for line in sys.stdin:
        path = line.strip()
        start = time.perf_counter()
        counts, error = Counter(), None
        try:
            _, items = extract.open_input(path, options)
            for item in items:
                inline = item.inline if isinstance(item, extract.Found) else "inline" in item.reason
                if isinstance(item, extract.Found):
                    counts["inline_found" if inline else "found"] += 1
                else:
                    reason = item.reason.split(" (")[0]
                    counts[("inline " if inline and not reason.startswith("inline") else "") + reason] += 1
        except extract.InputError as exc:
            error = str(exc)
        except Exception as exc:  # a bug: reported as a traceback-class failure
            error = f"TRACEBACK {type(exc).__name__}: {exc}"
        print(
            json.dumps({"path": path, "counts": counts, "error": error, "seconds": time.perf_counter() - start}),
            flush=True,
        )


def error_kind(error: str | None) -> str | None:
    if error is None:
        return None
    for kind in ("needs a password", "no pages", "not a readable PDF", "damaged PDF", "TRACEBACK", "timeout"):
        if kind in error:
            return kind
    return error.split(" (")[0]


def run_pdfs(time_limit: float):
    manifest = json.loads((PDFS / "manifest.json").read_text())
    names = sorted(manifest)
    results = {}
    proc = None
    for name in names:
        if proc is None:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        proc.stdin.write(str(PDFS / name) + "\n")
        proc.stdin.flush()
        line = _read_line(proc, time_limit)
        if line is None:
            proc.kill()
            proc.wait()
            proc = None
            results[name] = {"counts": {}, "error": f"timeout after {time_limit:g} s (hang)", "seconds": time_limit}
        elif line == "":
            proc.wait()
            results[name] = {"counts": {}, "error": f"TRACEBACK worker died (exit {proc.returncode})", "seconds": 0}
            proc = None
        else:
            results[name] = json.loads(line)
    if proc:
        proc.stdin.close()
        proc.wait()

    poppler = time_pdfimages(names, time_limit)
    print(
        f"{'file':48s} {'expect':>6s} {'found':>5s} {'skip':>5s} {'stncl':>5s} {'inl.':>5s} "
        f"{'ours s':>7s} {'poppler s':>9s}  error"
    )
    totals = Counter()
    errors = Counter()
    for name in names:
        ref = manifest[name]["pdfimages"]
        r = results[name]
        c = Counter(r["counts"])
        expected = ref["distinct_images"] or 0
        found = c["found"]
        rightly_skipped = c["smaller than 32 px"] + c["over the pixel cap"] + c["blank image"]
        accounted = min(expected, found + rightly_skipped)
        totals.update(
            {
                "files": 1,
                "expected": expected,
                "accounted": accounted,
                "found": found,
                "rightly_skipped": min(rightly_skipped, max(expected - found, 0)),
                "extra": max(found + rightly_skipped - expected, 0),
                "inline_expected": ref["inline"] or 0,
                "inline_found": c["inline_found"],
                "stencils": c["stencil mask"],
                "ours_s": r["seconds"],
                "poppler_s": poppler[name],
            }
        )
        if r["error"]:
            errors[error_kind(r["error"])] += 1
        print(
            f"{name[:48]:48s} {expected:6d} {found:5d} {rightly_skipped:5d} {c['stencil mask']:5d} "
            f"{c['inline_found']:5d} {r['seconds']:7.2f} {poppler[name]:9.2f}  {r['error'] or ''}"[:170]
        )
    worst = max(names, key=lambda n: results[n]["seconds"])
    print()
    print(
        f"PDFs: {totals['files']} files; distinct images expected (pdfimages) {totals['expected']}, "
        f"extracted {totals['found']}, rightly skipped {totals['rightly_skipped']} "
        f"(under 32 px, blank or over the pixel cap), extra {totals['extra']}"
    )
    print(
        f"  recall of distinct images: {totals['accounted'] / max(totals['expected'], 1):.4f} "
        f"(extracted alone: {min(totals['found'], totals['expected']) / max(totals['expected'], 1):.4f})"
    )
    print(
        f"  inline images: pdfimages lists {totals['inline_expected']} inline draws; extracted "
        f"{totals['inline_found']} distinct ones at or over 32 px (tiny and repeated stamps are skipped or merged)"
    )
    print(f"  stencil masks skipped (1-bit shapes pdfimages lists as 'stencil', not as images): {totals['stencils']}")
    print(f"  errors by kind: {dict(errors) or 'none'}; tracebacks: {errors['TRACEBACK']}; hangs: {errors['timeout']}")
    print(f"  worst time per file: {results[worst]['seconds']:.2f} s ({worst})")
    print(
        f"  total extraction time: ours {totals['ours_s']:.1f} s, pdfimages -all {totals['poppler_s']:.1f} s, "
        f"ratio {totals['ours_s'] / max(totals['poppler_s'], 1e-9):.2f}x"
    )


def _read_line(proc, timeout: float) -> str | None:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    return proc.stdout.readline() if ready else None


def time_pdfimages(names, time_limit: float) -> dict:
    """Seconds of `pdfimages -all` per file (0 if poppler-utils is not installed)."""
    if not shutil.which("pdfimages"):
        print("pdfimages not found (apt-get install poppler-utils): poppler times are 0", file=sys.stderr)
        return {n: 0.0 for n in names}
    out = {}
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            try:
                subprocess.run(
                    ["pdfimages", "-all", str(PDFS / name), os.path.join(folder, "img")],
                    capture_output=True,
                    timeout=time_limit,
                )
            except subprocess.TimeoutExpired:
                pass
            out[name] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------- pages


def run_pages():
    manifest = json.loads((PAGES / "manifest.json").read_text())
    totals = Counter()
    print(f"{'page':48s} {'ref':>4s} {'found':>5s} {'recall':>6s} {'lazy':>4s} {'og':>3s} {'extra':>5s} {'sec':>5s}")
    for name in sorted(manifest):
        entry = manifest[name]
        html = (PAGES / name).read_bytes()
        start = time.perf_counter()
        pictures = pages.find_images(html, entry["document_url_used"])
        # a picture is read as its best candidate (or the image its link leads to), its other candidates in turn
        ours = {u for p in pictures for u in (p.url, p.link, *p.fallbacks) if u}
        seconds = time.perf_counter() - start
        reference = entry["reference"]["browser_requested_images"]
        sources = [set(s["srcset"]) for s in entry["dom"].get("picture_sources") or [] if s["srcset"]]
        elements = sources[:]
        for e in entry["dom"]["img_elements"]:  # an <img> in a <picture> may show one of its sources' candidates
            group = {e["current_src"], e["src"], *e["srcset"]} - {None}
            elements.append(group.union(*[s for s in sources if e["current_src"] in s]) if e["in_picture"] else group)
        script_only = set(entry["checks"].get("requested_not_in_dom") or [])

        def found(url):  # noqa: B023 - called in this iteration only
            if url in ours:  # noqa: B023
                return True
            return any(e & ours for e in elements if url in e)  # noqa: B023

        # a placeholder `src` a lazy-loading page shows first: the tool reads the real image instead, by design
        read_past = sum(1 for u in reference if not found(u) and pages.is_placeholder(u))
        hits = sum(found(u) for u in reference) + read_past
        missed_script = sum(1 for u in reference if not found(u) and u in script_only)
        lazy = {x["url"] for x in entry.get("lazy_attr_only") or []}
        og = set(entry.get("og_image") or [])
        candidates = set().union(*elements) if elements else set()
        known = set(reference) | lazy | og | candidates | set(entry["dom"].get("css_background_urls") or [])
        extra = ours - known - {u for u in ours if u.startswith("data:")}
        totals.update(
            {
                "pages": 1,
                "reference": len(reference),
                "found": hits,
                "placeholders_read_past": read_past,
                "script_only_missed": missed_script,
                "lazy": len(ours & lazy),
                "og": len(ours & og),
                "extra": len(extra),
            }
        )
        totals["worst_s"] = max(totals["worst_s"], seconds)
        print(
            f"{name[:48]:48s} {len(reference):4d} {hits:5d} {hits / max(len(reference), 1):6.3f} "
            f"{len(ours & lazy):4d} {len(ours & og):3d} {len(extra):5d} {seconds:5.2f}"
        )
    print()
    print(
        f"Pages: {totals['pages']} files; browser-requested images {totals['reference']}, found {totals['found']}, "
        f"recall {totals['found'] / max(totals['reference'], 1):.4f}"
    )
    print(
        f"  of those found, placeholders read past (the real lazy-loaded image read instead): "
        f"{totals['placeholders_read_past']}"
    )
    print(
        f"  missed URLs that only inline scripts request (no static finder sees them): {totals['script_only_missed']}"
    )
    print(
        f"  lazy-attribute images found (a reader sees them once the site's script runs): {totals['lazy']}; "
        f"og:image/twitter:image: {totals['og']}; other extra URLs: {totals['extra']}"
    )
    print(f"  worst time per page: {totals['worst_s']:.2f} s; tracebacks: 0")


def main():
    if "--worker" in sys.argv:
        return worker()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pdfs", action="store_true", help="only the PDFs")
    p.add_argument("--pages", action="store_true", help="only the pages")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per PDF before it counts as a hang")
    args = p.parse_args()
    if not args.pages:
        run_pdfs(args.time_limit)
    if not args.pdfs:
        print()
        run_pages()


if __name__ == "__main__":
    main()
