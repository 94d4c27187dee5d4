"""Time to the first result: the whole CLI process on one image, ONNX Runtime against torch, interleaved.

python benchmarks/startup.py --repeats 5
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from PIL import Image

from common import cli_seconds, corpus_sample


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        image = str(Path(folder) / "one.png")
        Image.open(corpus_sample(1)[0]).save(image)
        cli_seconds("--engine", "onnx", image)  # the first run warms the file cache for both
        times = {"onnx": [], "torch": []}
        for _ in range(args.repeats):
            for engine in times:
                times[engine].append(cli_seconds("--engine", engine, image))
    median = {engine: statistics.median(t) for engine, t in times.items()}
    print(f"final_classification_script.py one.png, whole process, median of {args.repeats} (interleaved):")
    for engine, t in median.items():
        print(f"  --engine {engine:5s} {t:6.2f} s   (best {min(times[engine]):.2f} s)")
    print(
        f"  onnx takes {median['onnx'] / median['torch']:.2f} of torch's time ({median['torch'] / median['onnx']:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
