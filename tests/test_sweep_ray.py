"""The Ray sweep against the CLI, image for image, on real PDFs, a page served on 127.0.0.1 and a bad line."""

import json

import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

import final_classification_script as cli  # noqa: E402
import sweep_ray  # noqa: E402
from conftest import Server, corpus_images, image_bytes, make_pdf  # noqa: E402

MEDICAL = corpus_images("medical", n=4)
NON_MEDICAL = corpus_images("non_medical", n=4)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(
        address="local",
        num_cpus=2,
        runtime_env=sweep_ray.runtime_env(None),
        include_dashboard=False,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two PDFs, a page with two images and a missing one, an image file, and a line that is nothing."""
    folder = tmp_path_factory.mktemp("inputs")
    server = Server()
    server.add("/scan.png", image_bytes(MEDICAL[2], "PNG"), "image/png")
    server.add("/photo.jpg", image_bytes(NON_MEDICAL[2], "JPEG"), "image/jpeg")
    server.add("/a.html", b'<img src="scan.png"><img src="photo.jpg"><img src="gone.png">')
    yield [
        make_pdf(folder / "one.pdf", [MEDICAL[0], NON_MEDICAL[0]]),
        make_pdf(folder / "two.pdf", [NON_MEDICAL[1], MEDICAL[1], NON_MEDICAL[3]]),
        server.url + "/a.html",
        str(MEDICAL[3]),
        "definitely not an input",
    ]
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="module")
def cli_result(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cli.json"
    code = cli.main(inputs + ["--json", "-o", str(out), "--quiet"])
    return code, json.loads(out.read_text())


def ray_lines(inputs, folder, output_name, ray_session, as_parquet_input=False, options=()):
    if as_parquet_input:
        import pyarrow as pa

        pq.write_table(pa.table({"input": inputs}), folder / "inputs.parquet")
        listing = folder / "inputs.parquet"
    else:
        listing = folder / "inputs.txt"
        listing.write_text("# inputs\n\n" + "\n".join(inputs) + "\n")
    out = folder / output_name
    code = sweep_ray.main([str(listing), "-o", str(out), "--quiet", "--timeout", "10", *options])
    if output_name.endswith(".parquet"):
        return code, pq.read_table(out).to_pylist()
    return code, [json.loads(line) for line in out.read_text().splitlines()]


def test_ray_sweep_gives_the_clis_results_image_for_image(inputs, cli_result, ray_session, tmp_path):
    code, lines = ray_lines(inputs, tmp_path, "out.jsonl", ray_session)
    cli_code, document = cli_result
    assert code == cli_code == 1  # the bad line failed, and only it
    ends = {line["input"]: line for line in lines if line["type"] == "input"}
    assert list(ends) != [] and sorted(ends) == sorted(inputs)
    for entry in document["inputs"]:
        end = ends[entry["input"]]
        assert (end["kind"], end["error"], end["images"], end["skipped"]) == (
            entry["kind"],
            entry["error"],
            len(entry["images"]),
            len(entry["skipped"]),
        )
        mine = {line["source"]: line for line in lines if line["type"] == "image" and line["input"] == entry["input"]}
        assert sorted(mine) == sorted(image["source"] for image in entry["images"])
        for image in entry["images"]:
            line = mine[image["source"]]
            assert line["label"] == image["label"] and abs(line["p_medical"] - image["p_medical"]) <= 1e-4
            same_fields = {k: v for k, v in image.items() if k != "p_medical"}
            assert {k: line[k] for k in same_fields} == same_fields and set(line) == set(image) | {"type", "input"}
        skipped = [line for line in lines if line["type"] == "skipped" and line["input"] == entry["input"]]
        assert sorted((s["source"], s["reason"]) for s in entry["skipped"]) == sorted(
            (line["source"], line["reason"]) for line in skipped
        )
    assert ends["definitely not an input"]["error"] == "no such file, folder or URL"
    assert sum(line["type"] == "image" for line in lines) == document["summary"]["images"] == 8
    labels = {line["source"].rsplit("/", 1)[-1]: line["label"] for line in lines if line["type"] == "image"}
    assert labels["scan.png"] == "medical" and labels["photo.jpg"] == "non-medical"
    for n, line in enumerate(lines):  # each input's lines come together, its input line last
        if line["type"] != "input":
            later = next(other for other in lines[n:] if other["type"] == "input")
            assert later["input"] == line["input"]


def test_parquet_in_and_out_hold_the_same_rows_as_json_lines(inputs, ray_session, tmp_path):
    code, rows = ray_lines(inputs, tmp_path, "out.parquet", ray_session, as_parquet_input=True)
    code_jsonl, lines = ray_lines(inputs, tmp_path, "out.jsonl", ray_session)
    padded = [{name: line.get(name) for name, _ in sweep_ray.PARQUET_FIELDS} for line in lines]  # null where absent
    key = lambda row: (row["input"], row["type"], row["source"] or "")
    assert code == code_jsonl == 1
    assert sorted(rows, key=key) == sorted(padded, key=key)
    assert len(rows) == 8 + 1 + len(inputs)  # 8 images, gone.png skipped, an input row each


def test_phi_on_ray_as_in_the_cli(ray_session, tmp_path):
    """--phi in the actors: the same verdicts as the CLI's, values only with --phi-values, Parquet's two columns."""
    from pydicom.data import get_testdata_file

    from test_phi import drawn

    xray = corpus_images("medical", "xray", 1)[0]  # drawn() squares it: a radiograph stays one (a slice may not)
    drawn(xray, ["DOE^JOHN", "ID 00482913"]).save(tmp_path / "named.png")
    (tmp_path / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    inputs = [str(tmp_path / "named.png"), str(tmp_path / "ct.dcm"), str(NON_MEDICAL[0])]
    out = tmp_path / "cli.jsonl"
    assert cli.main(["--jsonl", "--phi", "-o", str(out), "--quiet", *inputs]) == 0
    expected = {line["source"]: line.get("phi") for line in map(json.loads, out.open()) if line["type"] == "image"}
    assert expected[inputs[0]]["risk"] == expected[inputs[1]]["risk"] == "likely" and expected[inputs[2]] is None

    code, lines = ray_lines(inputs, tmp_path, "out.jsonl", ray_session, options=["--phi"])
    assert code == 0 and {line["source"]: line.get("phi") for line in lines if line["type"] == "image"} == expected
    code, rows = ray_lines(inputs, tmp_path, "out.parquet", ray_session, options=["--phi", "--phi-values"])
    risks = {row["source"]: (row["phi_risk"], row["phi_found"]) for row in rows if row["type"] == "image"}
    assert code == 0 and risks[inputs[2]] == (None, None)
    assert risks[inputs[0]][0] == "likely" and "pixels:name=DOE^JOHN" in risks[inputs[0]][1]
    assert "dicom:name:PatientName=CompressedSamples^CT1" in risks[inputs[1]][1]


def test_an_input_ray_never_finished_is_a_failed_row_never_dropped():
    rows = [
        {"n": 1, "line": json.dumps({"type": "image", "input": "b", "source": "b#1"})},
        {"n": 0, "line": json.dumps({"type": "skipped", "input": "a", "source": "a#1", "reason": "r"})},
        {
            "n": 1,
            "line": json.dumps(
                {
                    "type": "input",
                    "input": "b",
                    "kind": "pdf",
                    "status": "done",
                    "error": None,
                    "images": 1,
                    "skipped": 0,
                }
            ),
        },
        {
            "n": 2,
            "line": json.dumps(
                {
                    "type": "input",
                    "input": "c",
                    "kind": "pdf",
                    "status": "done",
                    "error": None,
                    "images": 0,
                    "skipped": 0,
                }
            ),
        },
    ]
    out = list(sweep_ray.group_by_input(rows, ["a", "b", "c"]))
    assert [(line["input"], line["type"]) for line in out] == [
        ("b", "image"),
        ("b", "input"),
        ("c", "input"),
        ("a", "input"),
    ]
    assert out[-1]["status"] == "failed" and out[-1]["error"] == sweep_ray.LOST


def test_bad_arguments_and_unreadable_input_lists_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        sweep_ray.main([str(tmp_path / "x.txt"), "-o", str(tmp_path / "out.csv")])
    assert stopped.value.code == 2 and "name it .parquet or .jsonl" in capsys.readouterr().err
    assert sweep_ray.main([str(tmp_path / "missing.txt"), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.txt'}: No such file or directory"
    import pyarrow as pa

    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "cols.parquet")
    assert sweep_ray.main([str(tmp_path / "cols.parquet"), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "Parquet file has no `input` column (it has url)" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("x\n")
    assert sweep_ray.main([str(tmp_path / "list.txt"), "-o", str(tmp_path / "no" / "out.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --output {tmp_path / 'no' / 'out.jsonl'}: folder {tmp_path / 'no'} does not exist; create it first"
    )


def test_quiet_shows_the_tools_errors_and_summary_and_none_of_rays_logs(tmp_path):
    """A fresh process, so Ray starts as a user's sweep does (its INFO lines, its C++ core's warnings)."""
    import subprocess
    import sys

    from conftest import ROOT

    listing = tmp_path / "list.txt"
    listing.write_text(f"{MEDICAL[0]}\ndefinitely not an input\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, str(ROOT / "sweep_ray.py"), str(listing), "-o", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: definitely not an input: no such file, folder or URL",
        f"2 of 2 inputs written to {out}, 1 failed",
    ]
    assert sweep_ray.RAY_LOG_LINE.match(b"2026-12-03 14:07:31,158\tINFO streaming_executor.py:215 -- Starting")
    assert sweep_ray.RAY_LOG_LINE.match(b"[2026-12-03 14:07:31,183 E 26232 26232] core_worker.cc:2465: Actor")
    assert not sweep_ray.RAY_LOG_LINE.match(b"error: definitely not an input: no such file, folder or URL")
