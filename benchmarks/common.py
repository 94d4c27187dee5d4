"""Helpers the benchmark scripts share: paths, corpus samples, a timer, a local server with latency."""

import csv
import io
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"


def corpus_sample(n: int, label: str | None = None) -> list[Path]:
    """n corpus images spread over both labels and all kinds, in a fixed order."""
    with open(CORPUS / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if label is None or r["label"] == label]
    step = max(1, len(rows) // n)
    return [CORPUS / r["path"] for r in rows[::step][:n]]


def cli_seconds(*args: str) -> float:
    """Wall seconds of one whole `final_classification_script.py --quiet ARGS...` process (start-up included)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "final_classification_script.py"), "--quiet", *args],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


@contextmanager
def timed(results: dict, key: str):
    start = time.perf_counter()
    yield
    results[key] = time.perf_counter() - start


def serve(files: dict[str, tuple[bytes, str]], latency: float = 0.0):
    """Serve path -> (body, content type) on 127.0.0.1, each response delayed by `latency` seconds."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body, content_type = files.get(self.path, (b"not found", "text/plain"))
            time.sleep(latency)
            self.send_response(200 if self.path in files else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Quiet(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            pass

    httpd = Quiet(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


DEFAULT_MODEL = str(ROOT / "best_model.pth")


def upscaled_jpeg(path: Path, scale: int = 2, quality: int = 88) -> tuple[bytes, tuple[int, int]]:
    """A corpus image scaled up, as a JPEG, and its new size: closer to the figures of real pages and papers."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((im.width * scale, im.height * scale))
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue(), im.size


def write_pdf(path: str, jpegs, per_page: int = 4) -> None:
    """A PDF with `per_page` of the given JPEG files on each page, written as they come."""
    import pymupdf

    doc = pymupdf.open()
    for i, data in enumerate(jpegs):
        if i % per_page == 0:
            page = doc.new_page()
        slot = i % per_page
        page.insert_image(pymupdf.Rect(40, 40 + 180 * slot, 400, 210 + 180 * slot), stream=data)
    doc.save(path)
    doc.close()
