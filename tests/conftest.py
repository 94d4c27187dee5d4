"""Shared fixtures: the corpus in ../shared, real images, a local HTTP server, a checkpoint."""

import io
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"


def corpus_images(label: str, kind: str | None = None, n: int = 4, stem_contains: str = "") -> list[Path]:
    """The first n corpus files of a label (and kind), from the manifest, in a stable order."""
    import csv

    if not (CORPUS / "manifest.csv").exists():
        pytest.skip(f"corpus not found at {CORPUS}")
    with open(CORPUS / "manifest.csv", newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if r["label"] == label and (kind is None or r["kind"] == kind) and stem_contains in r["path"]
        ]
    return [CORPUS / r["path"] for r in rows[:n]]


def image_bytes(path: Path, fmt: str = "PNG", size: tuple | None = None, mode: str | None = None) -> bytes:
    with Image.open(path) as im:
        im = im.convert(mode or ("RGB" if fmt == "JPEG" else im.mode))
        if size:
            im = im.resize(size)
        buffer = io.BytesIO()
        im.save(buffer, fmt)
        return buffer.getvalue()


def make_pdf(path, images) -> str:
    """A PDF with one corpus image (as JPEG) on each page."""
    import pymupdf

    doc = pymupdf.open()
    for image in images:
        page = doc.new_page()
        page.insert_image(pymupdf.Rect(50, 50, 400, 400), stream=image_bytes(image, "JPEG"))
    doc.save(path)
    return str(path)


def default_sigint() -> None:
    """preexec_fn for a child that a test interrupts: a shell's background job (nohup, `&`) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt; an interactive user's Ctrl-C is the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """A threaded HTTP server on 127.0.0.1; routes map a path to a handler(request) or (status, headers, body)."""

    def __init__(self):
        self.routes: dict = {}
        self.hits: dict = {}
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                hits[path] = hits.get(path, 0) + 1
                route = routes.get(path)
                if route is None:
                    return self._send(404, {"Content-Type": "text/plain"}, b"not found")
                if callable(route):
                    return route(self)
                self._send(*route)

            def _send(self, status, headers, body):
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients that hang up (timeouts, byte caps) are what the tests provoke

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, path: str, body: bytes, content_type: str = "text/html", status: int = 200, headers=None):
        self.routes[path] = (status, {"Content-Type": content_type, **(headers or {})}, body)

    def redirect(self, path: str, to: str):
        self.routes[path] = (302, {"Location": to}, b"")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def trickle(request):
    """One byte a second, for ever (until the client gives up)."""
    request.send_response(200)
    request.send_header("Content-Type", "image/png")
    request.end_headers()
    try:
        for _ in range(120):
            request.wfile.write(b"\x89")
            request.wfile.flush()
            time.sleep(1)
    except (BrokenPipeError, ConnectionResetError):
        pass


def endless(request):
    """A response that never ends, as fast as the client reads it."""
    request.send_response(200)
    request.send_header("Content-Type", "image/jpeg")
    request.end_headers()
    chunk = b"\0" * 65536
    try:
        for _ in range(100_000):
            request.wfile.write(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass


def slow(seconds: float, body: bytes, content_type: str = "image/png"):
    def handler(request):
        time.sleep(seconds)
        request._send(200, {"Content-Type": content_type}, body)

    return handler


@pytest.fixture(scope="session")
def shipped_model_path():
    path = ROOT / "best_model.pth"
    assert path.exists(), "best_model.pth must be committed at the repository root"
    return str(path)


@pytest.fixture(scope="session")
def shipped_model(shipped_model_path):
    """The shipped model as the CLI runs it on a CPU (its ONNX twin)."""
    import engine

    return engine.open_engine(shipped_model_path, "onnx", "cpu")
