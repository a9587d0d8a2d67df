"""The README's quick start and CI run the same command."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.rst").read_text()
    section = text.split("Quick start\n-----------", 1)[1].split("\nRunning from the source tree", 1)[0]
    return [line.strip() for line in section.splitlines()
            if line.startswith("    ") and line.strip().startswith("apt-get update")]


def test_two_quick_start_commands() -> None:
    run, test = quick_start_commands()
    assert "twistd -n" in run and "entropy" in run
    assert "pytest" in test and "ruff check" in test and "mypy entropy_appliance" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == [quick_start_commands()[1]]
