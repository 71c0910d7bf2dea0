"""examples/gpu-oom-7b.yaml on a real GPU: CUDA OOM at ZeRO-2, recovery with ZeRO-3 + CPU optimizer offload.

Runs only where CUDA is available (the lent H100); skipped cleanly elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.timeout(3300)  # the run's own limit is 3000 s
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_7b_zero2_ooms_then_recovers_with_offload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_HOME", str(tmp_path / "state"))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "submit", "examples/gpu-oom-7b.yaml", "--wait", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=3000)
    view = json.loads(r.stdout[r.stdout.index("{\n"):])
    kinds = [a["failure"]["kind"] if a["failure"] else a["state"] for a in view["attempts"]]
    assert kinds[0] == "cuda_oom" and "CUDA out of memory" in view["attempts"][0]["failure"]["evidence"]
    assert view["state"] == "succeeded", view
    last = view["attempts"][-1]
    assert last["zero_stage"] == 3 and last["offload"]["optimizer"] == "cpu"
