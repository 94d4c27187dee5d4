"""The front door and the reference stay true: README's commands run as written, --help and the docs name the same
options, every link resolves, CI runs README's test command after the linters, every benchmark still starts."""

import json
import re
import shlex
import subprocess
import sys
from subprocess import PIPE

import pytest

import final_classification_script as cli
from conftest import ROOT, corpus_images, image_bytes, make_pdf

DOCS = ROOT / "docs"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def table_options(text: str, heading: str) -> set[str]:
    """The options named in the first column of the first table under a heading."""
    section = text[text.index(heading) :]
    table = section[section.index("\n| ") :].split("\n\n")[0]
    return {o for row in re.findall(r"^\| ([^|]+?) \|", table, re.M) for o in OPTION.findall(row)}


def parser_options(parser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings if o.startswith("--")}


def test_cli_help_and_docs_cli_name_the_same_options():
    documented = table_options((DOCS / "cli.md").read_text(), "## Options")
    declared = parser_options(cli.build_parser())
    assert declared - documented == set(), "in --help, missing from docs/cli.md"
    assert documented - declared == set(), "in docs/cli.md, not an option"
    help_text = cli.build_parser().format_help()
    assert all(o in help_text for o in declared)


def test_sweep_help_and_docs_ray_name_the_same_options():
    import sweep_ray

    documented = table_options((DOCS / "ray.md").read_text(), "| option |")
    assert documented - parser_options(sweep_ray.build_parser()) == set()
    assert parser_options(sweep_ray.build_parser()) - documented == set()


def test_every_link_between_the_pages_resolves():
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert len(pages) >= 8
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name}: {target}"


def test_readme_is_a_front_door_and_the_reference_is_not_repeated():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    blocks = fenced_blocks(readme)
    assert blocks[0].splitlines()[:2] == [
        'python final_classification_script.py "URL"',
        'python final_classification_script.py "path to pdf"',
    ]
    # a paragraph of the reference lives in one place only
    for page in DOCS.glob("*.md"):
        for paragraph in page.read_text().split("\n\n"):
            if len(paragraph) > 300:
                assert paragraph not in readme, f"{page.name} repeated in README"


def test_ci_installs_from_the_requirements_and_runs_the_linters_then_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    test_block = fenced_blocks(readme[readme.index("## Test") :])[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert steps[-1] == test_block
    assert steps.index("ruff check .") < steps.index("ruff format --check .") < len(steps) - 1
    assert any("pip install" in s and "requirements.txt" in s for s in steps)
    install = fenced_blocks(readme[readme.index("## Install") :])[0].strip()
    assert "pip install -r requirements.txt" in install


@pytest.fixture
def readme_world(tmp_path, server):
    """What README's commands name, made real: a page on 127.0.0.1, a PDF, a folder, an input list."""
    scan, photo = corpus_images("medical", "ct", 1)[0], corpus_images("non_medical", "photo", 1)[0]
    server.add("/scan.png", image_bytes(scan), "image/png")
    server.add("/photo.png", image_bytes(photo), "image/png")
    server.add("/article.html", b'<p>A case</p><img src="scan.png"><a href="more.html">more</a>')
    server.add("/more.html", b'<img src="photo.png">')
    server.add("/", b'<a href="article.html">article</a>')
    server.add("/robots.txt", b"", "text/plain")
    pdf = make_pdf(tmp_path / "paper.pdf", [scan, photo])
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(image_bytes(photo))
    (tmp_path / "urls.txt").write_text(f"{server.url}/article.html\n{pdf}\n")
    return {
        '"URL"': f"{server.url}/article.html",
        '"path to pdf"': pdf,
        "https://example.org/article.html": f"{server.url}/article.html",
        "https://example.org/": f"{server.url}/",
    }


def readme_commands(prefix: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    lines = [line for block in fenced_blocks(readme) for line in block.splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def test_readmes_classify_commands_run_as_written(readme_world, tmp_path):
    """Every `python final_classification_script.py` line of README, with its URLs served on 127.0.0.1 and its
    files made here, run from the folder they name (the retrained model's line needs a training run: skipped)."""
    commands = [c for c in readme_commands("python final_classification_script.py") if "--model runs/" not in c]
    assert len(commands) >= 8
    for command in commands:
        for name, real in readme_world.items():
            command = command.replace(name, shlex.quote(real))
        argv = shlex.split(command, comments=True)
        argv[:2] = [sys.executable, str(ROOT / "final_classification_script.py")]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        if "--json" not in argv and "--jsonl" not in argv:
            assert re.search(r"\d+ images?: \d+ medical, \d+ non-medical", done.stdout + done.stderr), command
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["images"] == 1
    assert (tmp_path / "report.html").read_text().count("<html") == 1 and any((tmp_path / "extracted").iterdir())
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["input"] for x in lines if x["type"] == "input"] == [readme_world['"URL"'], readme_world['"path to pdf"']]


def test_readmes_other_commands_name_real_options():
    import sweep_ray
    import train

    for command in readme_commands("python train.py"):
        assert set(OPTION.findall(command.split("#")[0])) <= parser_options(train.build_parser()), command
    for command in readme_commands("python sweep_ray.py"):
        assert set(OPTION.findall(command)) <= parser_options(sweep_ray.build_parser()), command


def test_every_benchmark_starts_and_answers_help():
    """Benchmarks are not run by the suite (they measure), but one that no longer imports is caught here."""
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")
    runs = {
        p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=PIPE, stderr=PIPE, text=True)
        for p in scripts
    }
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "usage:" in out, (name, err[-1500:])
