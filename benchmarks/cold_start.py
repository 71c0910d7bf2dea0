"""Cold start of `shardctl --help` next to `accelerate launch --help`, interleaved in one run.

    .venv/bin/python benchmarks/cold_start.py [--runs 15]

Each command runs in a fresh interpreter; runs alternate so machine noise hits both alike.
Prints medians and the ratio, and which heavy modules `shardctl --help` imported (must be none).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    commands = {"shardctl --help": [str(BIN / "shardctl"), "--help"],
                "accelerate launch --help": [str(BIN / "accelerate"), "launch", "--help"]}
    for argv in commands.values():  # warm the page cache once
        timed(argv)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(timed(argv))
    medians = {name: statistics.median(v) for name, v in samples.items()}
    for name, m in medians.items():
        print(f"{name:28s} median {m * 1000:7.0f} ms  (min {min(samples[name]) * 1000:.0f}, max "
              f"{max(samples[name]) * 1000:.0f}, n={runs})")
    print(f"ratio accelerate/shardctl: {medians['accelerate launch --help'] / medians['shardctl --help']:.1f}x")
    probe = ("import sys; from orchestrator.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
             "print(' '.join(m for m in ('torch','accelerate','deepspeed','kubernetes','transformers') "
             "if m in sys.modules) or 'none')")
    heavy = subprocess.run([sys.executable, "-c", probe],
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"heavy modules imported by shardctl --help: {heavy}")


if __name__ == "__main__":
    main()
