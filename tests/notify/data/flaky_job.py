"""A cheap training stand-in for the notification tests: attempt 1 dies of a CUDA out-of-memory error (as torch
reports one), a later attempt waits for a gate file, if one is named, and succeeds. No torch is imported."""

import argparse
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--attempt", type=int, required=True)
parser.add_argument("--gate", default="")
args = parser.parse_args()
print(f"attempt {args.attempt} starting", flush=True)
if args.attempt == 1:
    print("Traceback (most recent call last):\n  File \"flaky_job.py\", line 1, in <module>\n"
          "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total "
          "capacity; 77.01 GiB already allocated)", file=sys.stderr, flush=True)
    sys.exit(1)
if args.gate:
    deadline = time.monotonic() + 240
    while not Path(args.gate).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
print("training complete", flush=True)
