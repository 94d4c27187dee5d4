"""Network options against a local server: User-Agent and --header received, retries counted (503, 429 with
Retry-After, never 404), the time bound, proxies from the environment, and a self-signed HTTPS server refused by
default with a clear message, accepted with --insecure or --ca-bundle."""

import json
import shutil
import ssl
import subprocess
import time

import pytest

import extract
import final_classification_script as cli
import version
from conftest import Server, corpus_images, image_bytes

SCAN = image_bytes(corpus_images("medical", "ct", 1)[0], "PNG")


def recorder(server: Server, path: str, body: bytes, content_type: str = "image/png") -> list:
    """Serve `body` at `path`, keeping each request's headers (in the returned list)."""
    seen = []

    def handler(request):
        seen.append(request.headers)  # an email.message.Message: names in any case
        request._send(200, {"Content-Type": content_type}, body)

    server.routes[path] = handler
    return seen


def failing(server: Server, path: str, times: int, status: int, headers: dict | None = None) -> list:
    """`status` for the first `times` requests to `path`, then the scan; returns the request times."""
    arrivals = []

    def handler(request):
        arrivals.append(time.monotonic())
        if len(arrivals) <= times:
            return request._send(status, {"Content-Type": "text/plain", **(headers or {})}, b"busy")
        request._send(200, {"Content-Type": "image/png"}, SCAN)

    server.routes[path] = handler
    return arrivals


def fetch_problem(url: str, **options) -> str:
    with pytest.raises(extract.FetchError) as caught:
        extract.fetch(url, extract.Options(**options))
    return str(caught.value)


def run_cli(args, capsys):
    code = cli.main(args + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- headers


def test_default_user_agent_names_the_tool_and_its_version(server):
    seen = recorder(server, "/a.png", SCAN)
    extract.fetch(server.url + "/a.png", extract.Options())
    assert seen[0]["User-Agent"].startswith(f"medical-image-classifier/{version.__version__} ")


def test_user_agent_and_headers_reach_the_server_for_the_page_and_its_images(server, capsys):
    page_requests = recorder(server, "/page.html", b'<img src="/a.png"><img src="/b.png">', "text/html")
    image_requests = recorder(server, "/a.png", SCAN)
    image_requests_b = recorder(server, "/b.png", SCAN)
    code, out, _ = run_cli(
        [
            "--json",
            "--user-agent",
            "probe/9.9",
            "--header",
            "X-Token: abc 123",
            "--header",
            "Accept-Language:fr",
            server.url + "/page.html",
        ],
        capsys,
    )
    assert code == 0 and len(json.loads(out)["inputs"][0]["images"]) == 2
    for request in page_requests + image_requests + image_requests_b:
        assert (request["User-Agent"], request["X-Token"], request["Accept-Language"]) == ("probe/9.9", "abc 123", "fr")
    assert len(page_requests) == len(image_requests) == len(image_requests_b) == 1


def test_a_header_named_user_agent_in_any_case_replaces_it(server):
    seen = recorder(server, "/a.png", SCAN)
    extract.fetch(server.url + "/a.png", extract.Options(user_agent="ours/1", headers={"user-agent": "theirs/2"}))
    assert seen[0].get_all("User-Agent") == ["theirs/2"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--header", "X-Token abc"], "argument --header: 'X-Token abc' is not 'Name: value'"),
        (["--header", "Bad Name: x"], "argument --header: 'Bad Name: x' is not 'Name: value'"),
        (["--ca-bundle", "/no/such/ca.pem"], "argument --ca-bundle: /no/such/ca.pem: no such file"),
        (["--retries", "-1"], "argument --retries: must be 0 or more, not -1"),
    ],
)
def test_bad_network_options_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["x.png"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert caught.value.code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {message}")  # one line, no usage before it
    assert err[0].endswith("(see python final_classification_script.py --help)")


def test_a_ca_bundle_without_a_certificate_is_refused(tmp_path, capsys):
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    with pytest.raises(SystemExit) as caught:
        cli.main(["x.png", "--ca-bundle", str(tmp_path / "notes.pem")])
    assert caught.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("notes.pem: no PEM certificate in it (see python final_classification_script.py --help)")
    )


# ---------------------------------------------------------------- retries


def test_503_twice_then_200_is_retried_with_backoff(server):
    arrivals = failing(server, "/busy.png", times=2, status=503)
    response = extract.fetch(server.url + "/busy.png", extract.Options(retries=2))
    assert response.data == SCAN and len(arrivals) == 3
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert 0.45 <= gaps[0] < 0.9 and 0.95 <= gaps[1] < 1.5  # 0.5 s, then 1 s


def test_retries_run_out_with_the_number_of_tries_in_the_message(server):
    arrivals = failing(server, "/down.png", times=99, status=502)
    assert fetch_problem(server.url + "/down.png", retries=1) == "HTTP 502 (2 tries)"
    assert len(arrivals) == 2


def test_429_waits_as_long_as_retry_after_says(server):
    arrivals = failing(server, "/limited.png", times=1, status=429, headers={"Retry-After": "2"})
    assert extract.fetch(server.url + "/limited.png", extract.Options()).data == SCAN
    assert len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 1.95  # not the 0.5 s backoff


def test_a_retry_after_past_the_timeout_is_given_up_at_once(server):
    arrivals = failing(server, "/later.png", times=1, status=503, headers={"Retry-After": "30"})
    started = time.monotonic()
    problem = fetch_problem(server.url + "/later.png", timeout=5)
    assert problem == "HTTP 503 (the server asks to retry in 30 s, which would run past --timeout 5 s)"
    assert len(arrivals) == 1 and time.monotonic() - started < 1


@pytest.mark.parametrize("status", [404, 403, 501])
def test_lasting_errors_are_not_retried(server, status):
    arrivals = failing(server, "/gone.png", times=99, status=status)
    assert fetch_problem(server.url + "/gone.png", retries=3) == f"HTTP {status}"
    assert len(arrivals) == 1


def test_retries_and_waits_stay_within_the_timeout(server):
    arrivals = failing(server, "/always.png", times=99, status=503)
    started = time.monotonic()
    assert fetch_problem(server.url + "/always.png", retries=10, timeout=2.5) == "HTTP 503 (3 tries)"
    assert time.monotonic() - started < 2.5 and len(arrivals) == 3  # waits of 0.5 and 1 s; 2 s more would not fit


def test_a_refused_connection_is_retried_only_as_asked():
    timings = {}
    for retries in (0, 2):
        started = time.monotonic()
        assert fetch_problem("http://127.0.0.1:9/x.png", retries=retries) == "unreachable (connection refused)"
        timings[retries] = time.monotonic() - started
    assert timings[0] < 0.4 and 1.45 <= timings[2] < 3


def test_a_body_cut_short_is_one_clear_line_and_retried(server):
    calls = []

    def cut(request):
        calls.append(1)
        request.send_response(200)
        request.send_header("Content-Type", "image/png")
        request.send_header("Content-Length", "100000")
        request.end_headers()
        request.wfile.write(SCAN[:1000])
        request.close_connection = True

    server.routes["/cut.png"] = cut
    server.add("/page.html", b'<img src="/cut.png">')
    _, items = extract.open_input(server.url + "/page.html", extract.Options(retries=1))
    [skipped] = list(items)
    assert skipped.reason == "download failed: interrupted after 1,000 bytes (connection closed early)"
    assert len(calls) == 2


# ---------------------------------------------------------------- proxies from the environment


def test_http_proxy_from_the_environment_is_used(server, monkeypatch):
    """The server stands in for a proxy: it gets the request in absolute form, with our headers."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, server.url)
    seen = recorder(server, "http://images.example.test/a.png", SCAN)
    response = extract.fetch("http://images.example.test/a.png", extract.Options(headers={"X-Token": "t"}))
    assert response.data == SCAN and seen[0]["X-Token"] == "t" and seen[0]["Host"] == "images.example.test"


# ---------------------------------------------------------------- HTTPS with a self-signed certificate


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """(cert.pem, key.pem) for 127.0.0.1, made by the openssl binary (on every Debian with ca-certificates)."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl binary to make a certificate with")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_server(self_signed):
    cert, key = self_signed
    s = Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    s.httpd.socket = context.wrap_socket(s.httpd.socket, server_side=True, do_handshake_on_connect=False)
    s.url = s.url.replace("http://", "https://")
    s.add("/scan.png", SCAN, "image/png")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_a_self_signed_server_is_refused_by_default_with_what_to_do(tls_server, capsys):
    url = tls_server.url + "/scan.png"
    code, out, _ = run_cli(["--json", url], capsys)
    assert code == 1
    assert json.loads(out)["inputs"][0]["error"] in (
        "certificate not trusted (self-signed certificate); use --ca-bundle FILE or --insecure",
        "certificate not trusted (self signed certificate); use --ca-bundle FILE or --insecure",
    )  # OpenSSL 1.1


def test_the_images_of_a_page_on_a_self_signed_host_say_so_once_tried(tls_server, server):
    page = "".join(f'<img src="{tls_server.url}/scan.png?n={n}">' for n in range(4))
    server.add("/page.html", page.encode())
    _, items = extract.open_input(server.url + "/page.html", extract.Options(workers=1))
    reasons = {item.reason for item in items}
    assert len(reasons) == 1 and reasons.pop().startswith("download failed: certificate not trusted (self")
    assert tls_server.hits == {}  # no request got past the handshake


def test_insecure_accepts_a_self_signed_server(tls_server, capsys):
    code, out, err = run_cli(["--json", "--insecure", tls_server.url + "/scan.png"], capsys)
    assert code == 0 and len(json.loads(out)["inputs"][0]["images"]) == 1
    assert "InsecureRequestWarning" not in err


def test_ca_bundle_accepts_a_server_signed_by_it(tls_server, self_signed, capsys):
    code, out, _ = run_cli(["--json", "--ca-bundle", str(self_signed[0]), tls_server.url + "/scan.png"], capsys)
    assert code == 0 and len(json.loads(out)["inputs"][0]["images"]) == 1
