"""The suite's own guards in tests/conftest.py: with SHARDCTL_STRICT_SKIPS=1 a skip that is not on the
allow-list fails the run, naming the test and its reason; the SQLite negative controls are deselected, not
skipped, unless SHARDCTL_SQLITE_CONTROLS=1. Each check runs a small pytest session in a subprocess with
that conftest loaded as a plugin (-p tests.conftest), on test files planted in a temporary directory. And the
timeout of pyproject.toml (pytest-timeout): a hanging test fails and the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLANTED = '''
import pytest

def test_passes():
    pass

@pytest.mark.skipif(True, reason="the network is down today")
def test_skipped_quietly():
    pass

def test_skipped_in_its_body():
    pytest.skip("no fixtures here")

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_needs_a_gpu():
    pass

@pytest.mark.sqlite_control
def test_on_the_old_store():
    pass
'''


def run_session(tmp_path: Path, files: dict[str, str], **env: str) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    sqlite_control: a SQLite negative control\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("SHARDCTL_STRICT_SKIPS", "SHARDCTL_SQLITE_CONTROLS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_a_planted_skip_fails_a_strict_run_naming_the_test_and_its_reason(tmp_path: Path) -> None:
    r = run_session(tmp_path, {"test_planted.py": PLANTED}, SHARDCTL_STRICT_SKIPS="1")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "SHARDCTL_STRICT_SKIPS=1: 2 skipped for a reason not on the allow-list, so this run fails" in out, out
    assert "SKIPPED (not allowed) test_planted.py::test_skipped_quietly: the network is down today" in out, out
    assert "SKIPPED (not allowed) test_planted.py::test_skipped_in_its_body: no fixtures here" in out, out
    assert "test_needs_a_gpu:" not in out  # on the allow-list
    assert "1 passed, 3 skipped, 1 deselected" in out, out


def test_without_strict_skips_the_same_session_passes(tmp_path: Path) -> None:
    r = run_session(tmp_path, {"test_planted.py": PLANTED})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not allowed" not in r.stdout and "1 passed, 3 skipped, 1 deselected" in r.stdout, r.stdout


def test_only_allowed_skips_pass_a_strict_run(tmp_path: Path) -> None:
    text = ("import pytest\n\n@pytest.mark.skipif(True, reason='needs a CUDA GPU')\ndef test_gpu():\n    pass\n\n"
            "def test_plain():\n    pass\n")
    r = run_session(tmp_path, {"test_allowed.py": text}, SHARDCTL_STRICT_SKIPS="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout and "not allowed" not in r.stdout, r.stdout


def test_a_module_skipped_at_import_and_an_xfail_fail_a_strict_run(tmp_path: Path) -> None:
    files = {"test_module.py": "import pytest\n\npytest.importorskip('no_such_module_here')\n\n"
                               "def test_never():\n    pass\n",
             "test_xfail.py": "import pytest\n\n@pytest.mark.xfail(reason='broken for now')\n"
                              "def test_broken():\n    assert False\n"}
    r = run_session(tmp_path, files, SHARDCTL_STRICT_SKIPS="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SKIPPED (not allowed) test_module.py: could not import 'no_such_module_here'" in r.stdout, r.stdout
    assert "SKIPPED (not allowed) test_xfail.py::test_broken: xfail: broken for now" in r.stdout, r.stdout


def test_the_sqlite_controls_run_only_when_asked(tmp_path: Path) -> None:
    text = ("import pytest\n\n@pytest.mark.sqlite_control\ndef test_old_store():\n    pass\n\n"
            "def test_new():\n    pass\n")
    r = run_session(tmp_path, {"test_controls.py": text}, SHARDCTL_STRICT_SKIPS="1")
    assert r.returncode == 0 and "1 passed, 1 deselected" in r.stdout, r.stdout + r.stderr
    r = run_session(tmp_path, {}, SHARDCTL_STRICT_SKIPS="1", SHARDCTL_SQLITE_CONTROLS="1")
    assert r.returncode == 0 and "2 passed" in r.stdout and "deselected" not in r.stdout, r.stdout + r.stderr


def test_a_hanging_test_fails_at_the_timeout_and_the_run_goes_on(tmp_path: Path) -> None:
    """The timeout settings in pyproject.toml, with only the limit shortened: the hanging test fails, the next runs."""
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(60)\n\n"
                                           "def test_after():\n    pass\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("SHARDCTL_STRICT_SKIPS", "SHARDCTL_SQLITE_CONTROLS")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                        "--rootdir", str(tmp_path), "-o", "timeout=2", str(tmp_path)],
                       cwd=ROOT, env=clean, capture_output=True, text=True, timeout=50)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "timeout method: signal" in r.stdout and "Failed: Timeout (>2.0s) from pytest-timeout" in r.stdout, r.stdout
    assert "1 failed, 1 passed" in r.stdout, r.stdout
