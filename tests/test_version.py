"""What is written once about a release: the version (orchestrator/__init__.py) and the licence (LICENSE).

Every other place either derives from them or is checked equal here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from click.testing import CliRunner

import orchestrator
from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", orchestrator.__version__)


def test_the_package_metadata_reads_it_from_the_package() -> None:
    project = pyproject()
    assert "version" not in project["project"], "write the version only in orchestrator/__init__.py"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "orchestrator.__version__"}


def test_the_chart_app_version_is_the_package_version() -> None:
    # appVersion is what the chart deploys (the image tag defaults to it). The chart's own `version`
    # numbers the chart's packaging and may move on its own, as Helm intends.
    chart = yaml.safe_load((ROOT / "charts" / "shardctl" / "Chart.yaml").read_text())
    assert chart["appVersion"] == orchestrator.__version__


def test_the_cli_reports_it() -> None:
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0
    assert r.output.strip().endswith(f"version {orchestrator.__version__}")


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    # the image builds the wheel, and setuptools refuses a license-files entry that matches nothing
    assert re.search(r"^COPY .*\bLICENSE\b", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
