"""Elaboration time of every example model and the stdlib's larger models.

Prints, per model, the median over --repeat runs of `Program.elaborate` (the file is parsed
once, outside the timing), the graph's node count and the time per node. Times are the
process's CPU time (`time.process_time`), which other work on a busy machine disturbs less than
the wall clock.

    python benchmarks/elaborate.py [--repeat 5] [--models gpt resnet18]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from kiln.compiler.elaborate import load_program

ROOT = Path(__file__).resolve().parent.parent
# stdlib models elaborated through a one-line file: (name, source)
STD_MODELS = {
    "std.GPT": "import std.transformer: GPT\n",
    "std.ResNet50": "import std.cnn: ResNet50\n",
    "std.MobileNetV2": "import std.cnn: MobileNetV2\n",
}


def cases(selected: list[str] | None) -> list[tuple[str, object, str | None]]:
    """(label, program, model name) for every example file and stdlib model."""
    out = []
    for path in sorted((ROOT / "examples").glob("*.kiln")):
        out.append((path.stem, load_program(path), None))
    for label, source in STD_MODELS.items():
        out.append((label, load_program(source, str(ROOT / "bench.kiln")), label[4:]))
    return [c for c in out if not selected or c[0] in selected]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", nargs="*")
    opts = parser.parse_args()
    print(f"{'model':<24}{'ms':>10}{'nodes':>8}{'us/node':>10}")
    total = 0.0
    for label, program, name in cases(opts.models):
        times = []
        for _ in range(opts.repeat):
            start = time.process_time()
            model = program.elaborate(name)
            times.append(time.process_time() - start)
        median = statistics.median(times)
        total += median
        nodes = len(model.graph)
        print(f"{label:<24}{median * 1e3:>10.1f}{nodes:>8}{median * 1e6 / nodes:>10.1f}")
    print(f"{'total':<24}{total * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
