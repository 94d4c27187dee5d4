"""A sweep of many inputs (small PDFs and pages on 127.0.0.1, each response delayed) three ways, side by side:

1. one CLI run with --input-file over all of them (--jsonl to a file), its RSS read when 10% and all of the
   inputs are finished (memory must stay flat);
2. a shell loop of one CLI call per input, over a sample of them (a whole loop over 1,000 would take half an
   hour here), compared per input;
3. the same run killed at a random moment and resumed: every input and image line once.

    python benchmarks/sweep.py --inputs 1000 --loop-sample 40 --latency 0.05
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from common import ROOT, corpus_sample, serve, upscaled_jpeg, write_pdf

CLI = [sys.executable, str(ROOT / "final_classification_script.py"), "--quiet"]


def site(n_inputs: int, folder: str) -> tuple[dict, list[str]]:
    """Half pages of three images (one logo shared by every page), half PDFs of two images."""
    images = [upscaled_jpeg(p, scale=1)[0] for p in corpus_sample(120)]
    logo = images[0]
    files = {"/logo.jpg": (logo, "image/jpeg")}
    files.update({f"/img/{i}.jpg": (data, "image/jpeg") for i, data in enumerate(images)})
    paths = []
    for i in range(n_inputs):
        a, b = (2 * i) % len(images), (2 * i + 1) % len(images)
        if i % 2 == 0:
            body = f'<h1>page {i}</h1><img src="/logo.jpg"><img src="/img/{a}.jpg"><img src="/img/{b}.jpg">'
            files[f"/page{i}.html"] = (body.encode(), "text/html")
            paths.append(f"/page{i}.html")
        else:
            pdf = os.path.join(folder, f"{i}.pdf")
            write_pdf(pdf, [images[a], images[b]], per_page=2)
            with open(pdf, "rb") as f:
                files[f"/paper{i}.pdf"] = (f.read(), "application/pdf")
            paths.append(f"/paper{i}.pdf")
    return files, paths


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def finished(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b'"type": "input"')


def one_run(listing: str, out: str, n_inputs: int, extra: list[str]) -> tuple[float, float, float]:
    """Seconds, RSS (MB) when a tenth of the inputs were finished, RSS at the end (polled every 50 ms)."""
    start = time.perf_counter()
    process = subprocess.Popen(CLI + ["--input-file", listing, "--jsonl", "-o", out] + extra)
    early = late = 0.0
    while process.poll() is None:
        done = finished(out)
        try:
            rss = rss_mb(process.pid)
        except (OSError, StopIteration):
            break
        if done < n_inputs // 10:
            early = rss
        late = rss
        time.sleep(0.05)
    assert process.wait() in (0, 1)
    return time.perf_counter() - start, early, late


def lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--inputs", type=int, default=1000)
    p.add_argument("--loop-sample", type=int, default=40, help="inputs run as one CLI call each")
    p.add_argument("--latency", type=float, default=0.05, help="seconds added to every HTTP response")
    p.add_argument("--jobs", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files, paths = site(args.inputs, folder)
        httpd, base = serve(files, args.latency)
        urls = [base + path for path in paths]
        listing = os.path.join(folder, "inputs.txt")
        with open(listing, "w") as f:
            f.write("\n".join(urls) + "\n")
        out = os.path.join(folder, "out.jsonl")
        seconds, early, late = one_run(listing, out, len(urls), ["--jobs", str(args.jobs)])
        records = lines(out)
        n_images = sum(r["type"] == "image" for r in records)
        assert sum(r["type"] == "input" for r in records) == len(urls)

        sample = random.Random(0).sample(urls, args.loop_sample)
        start = time.perf_counter()
        for url in sample:
            subprocess.run(CLI + ["--jsonl", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        loop = time.perf_counter() - start

        killed = os.path.join(folder, "killed.jsonl")
        process = subprocess.Popen(CLI + ["--input-file", listing, "--jsonl", "-o", killed, "--jobs", str(args.jobs)])
        time.sleep(random.Random().uniform(2, max(3, seconds * 0.8)))
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = finished(killed)
        subprocess.run(
            CLI + ["--input-file", listing, "--jsonl", "-o", killed, "--resume", "--jobs", str(args.jobs)],
            check=False,
            stderr=subprocess.DEVNULL,
        )
        resumed = lines(killed)
        key = lambda r: (r["type"], r["input"], r.get("source"), r.get("reason"))
        body = lambda rs: sorted(key(r) for r in rs if r["type"] != "summary")
        once = body(resumed) == body(records) and [r["type"] for r in resumed].count("summary") == 1
        httpd.shutdown()
    per_input_run, per_input_loop = seconds / len(urls), loop / len(sample)
    print(
        f"{len(urls)} inputs (half pages of 3 images with one shared logo, half PDFs of 2), 127.0.0.1 at "
        f"{args.latency * 1000:.0f} ms a response, {os.cpu_count()} CPU cores, --jobs {args.jobs}"
    )
    print(
        f"  one --input-file run: {seconds:6.1f} s, {len(urls) / seconds:5.1f} inputs/s, "
        f"{n_images / seconds:5.1f} images/s ({n_images} image lines)"
    )
    print(
        f"  shell loop, one CLI call per input, {len(sample)} sampled inputs: {loop:6.1f} s, "
        f"{per_input_loop:.2f} s an input"
    )
    print(f"  speed-up per input: {per_input_loop / per_input_run:.1f}x")
    print(
        f"  RSS: {early:.0f} MB at {len(urls) // 10} inputs finished, {late:.0f} MB at {len(urls)}: {late / early:.2f}x"
    )
    print(f"  killed after {before} finished inputs, then --resume: every input and image line exactly once: {once}")


if __name__ == "__main__":
    sys.exit(main())
