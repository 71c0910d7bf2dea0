"""A 3-point sweep from Python, notebook style: the micro-batch at 4, 8 and 16 (same global batch),
on the local target, then the summary. Run from the repository root:

    .venv/bin/python examples/sweep.py [--steps 20]

The same as `shardctl submit examples/quickstart.yaml --sweep spec.batch.micro=4,8,16 --wait`.
"""

from __future__ import annotations

import argparse
import sys

import shardctl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="examples/quickstart.yaml")
    p.add_argument("--steps", default="20", help="training steps of every point (the script's --steps)")
    p.add_argument("--target", default=None, help="local (the spec's), slurm or kubernetes")
    args = p.parse_args()

    base = shardctl.load(args.spec)
    steps_at = base.spec.entrypoint.args.index("--steps") + 1  # the value after --steps in the script's args
    sweep = shardctl.sweep(args.spec, {"spec.batch.micro": [4, 8, 16]}, target=args.target,
                           overrides={f"spec.entrypoint.args.{steps_at}": args.steps})
    print(f"sweep {sweep.group}: {', '.join(j.name for j in sweep.jobs)}", flush=True)
    sweep.wait()
    print(sweep.summary_text())
    return 0 if all(s == shardctl.JobState.SUCCEEDED for s in sweep.states()) else 1


if __name__ == "__main__":
    sys.exit(main())
