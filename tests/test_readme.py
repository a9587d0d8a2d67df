"""
The README agrees with the code: the quick start and CI run the same
command; the table of ``ENTROPY_*`` variables, ``--help`` and the systemd
unit give the defaults of the one table (``SETTINGS``); the shutdown
sequence is the stop phases.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entropy_appliance.app.environment import NOT_OPTIONS, variable_name
from entropy_appliance.app.lifecycle import STOP_PHASES
from entropy_appliance.app.options import DEFAULTS, SETTINGS, Options, parse_config
from entropy_appliance.app.signals import DEFAULT_SHUTDOWN_TIMEOUT
from entropy_appliance.core.health import DEFAULT_ALPHA
from entropy_appliance.core.peers import PeerPolicy
from entropy_appliance.core.pool import ReseedPolicy
from entropy_appliance.net import tls
from entropy_appliance.source.sources import SourceSpec
from entropy_appliance.web.app import DEFAULT_MAX_BYTES, DEFAULT_SEED_WAIT

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


# -- one table of defaults ---------------------------------------------------------


def section(title: str, underline: str) -> str:
    text = (ROOT / "README.rst").read_text()
    body = text.split(f"\n{title}\n{underline * len(title)}\n", 1)[1]
    return re.split(r"\n[^\n]+\n[~^=-]{4,}\n", body, maxsplit=1)[0]


def env_table() -> dict[str, tuple[str, str]]:
    """The README's ENTROPY_* table: variable -> (option cell, default cell)."""
    lines = section("Configuration from the environment", "~").splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=====") and "  =" in line]
    first, _, last = borders[:3]
    starts = [m.start() for m in re.finditer(r"=+", lines[first])]
    rows: dict[str, tuple[str, str]] = {}
    for line in lines[borders[1] + 1:last]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_the_readme_table_has_every_option_and_its_default() -> None:
    rows = env_table()
    public = [s for s in SETTINGS if not s.internal]
    for s in public:
        variable = variable_name(s.name[3:] if s.kind == "flag" and s.name.startswith("no-") else s.name)
        assert variable in rows, f"{variable} is missing from the README's table"
        option, default = rows[variable]
        assert option.startswith(f"``--{s.name}``"), (variable, option)
        if s.kind == "flag":
            # A no-X flag is off by default, so X is on (1); any other flag is off (0).
            assert default == ("``1``" if s.name.startswith("no-") else "``0``"), variable
        elif s.default is None:
            assert not re.fullmatch(r"``[^`]+``", default), f"{variable}: the README names a default"
        else:
            assert default == f"``{s.default}``", (variable, default, s.default)
    assert len(rows) == len(public), sorted(set(rows) - {variable_name(s.name) for s in public})


def test_help_shows_the_table_defaults() -> None:
    text = " ".join(str(Options()).split())
    for s in SETTINGS:
        if s.kind == "value" and s.default is not None:
            assert f"[default: {s.default}]" in text, s.name
        if s.kind == "list":
            # Endpoints can be turned off; sources cannot.
            disables = "" if s.name == "source" else "; 'none' disables"
            assert f"(repeatable; default {s.default}{disables})" in text, s.name


def test_the_readme_prose_names_the_same_defaults() -> None:
    text = (ROOT / "README.rst").read_text()
    found = re.findall(r"(?<!/)``--([a-z0-9-]+)(?: [A-Z]+)?``\s+\((?:repeatable, )?default\s+"
                       r"(``[^`]+``|[^,;:)\s]+)", text)
    assert len(found) >= 12
    for name, value in found:
        assert value.strip("`") == DEFAULTS[name], (name, value)
    assert f"``--shutdown-timeout`` seconds (default {DEFAULTS['shutdown-timeout']})" in " ".join(
        section("Signals", "~").split())
    pair = f"``--tls-key``/``--tls-cert`` (default ``{DEFAULTS['tls-key']}`` and ``{DEFAULTS['tls-cert']}``)"
    assert pair in " ".join(text.split())


def unit_lines() -> list[str]:
    """The systemd service unit, continuation lines joined."""
    text = (ROOT / "contrib/systemd/entropy-appliance.service").read_text()
    return text.replace("\\\n", " ").splitlines()


def test_the_systemd_unit_sets_only_the_defaults() -> None:
    settings = dict(line.removeprefix("Environment=").split("=", 1)
                    for line in unit_lines() if line.startswith("Environment=ENTROPY_"))
    options = {variable_name(s.name): s for s in SETTINGS}
    used = [v for v in settings if v in options]
    assert used, "the unit sets no option"
    for variable in used:
        assert settings[variable] in ("", options[variable].default), variable
    assert set(settings) - set(options) <= NOT_OPTIONS
    # The stop timeout leaves room for the drain's deadline, as its comment says.
    (comment,) = [line for line in unit_lines() if "by default)" in line]
    assert re.search(r"\((\d+) s by default\)", comment)[1] == DEFAULTS["shutdown-timeout"]  # type: ignore[index]
    (timeout,) = [line for line in unit_lines() if line.startswith("TimeoutStopSec=")]
    assert float(timeout.split("=")[1]) > float(DEFAULTS["shutdown-timeout"] or 0) * 2


def test_the_parsed_defaults_are_the_library_defaults(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = parse_config([])
    assert c.source == SourceSpec("auto") and c.min_entropy is None
    assert c.policy == ReseedPolicy() and c.peers == PeerPolicy() and c.alpha == DEFAULT_ALPHA
    assert c.seed_wait == DEFAULT_SEED_WAIT and c.max_bytes == DEFAULT_MAX_BYTES
    assert c.shutdown_timeout == DEFAULT_SHUTDOWN_TIMEOUT
    assert (c.tls.key, c.tls.cert) == (tls.DEFAULT_KEY, tls.DEFAULT_CERT) and c.tls.self_signed and c.tls.h2
    assert (c.stream, c.http, c.https) == (("tcp:9000",), ("tcp:8080",), ("ssl:8443",))
    assert c.role == "single" and c.onion is None


# -- the shutdown sequence -------------------------------------------------------


def test_the_readme_shutdown_sequence_is_the_stop_phases() -> None:
    steps = re.findall(r"^\s+\d+\. ``([a-z-]+)``:", section("Signals", "~"), flags=re.M)
    assert steps == list(STOP_PHASES)


def test_module_map_names_every_module() -> None:
    """The README's Architecture section has an entry for every module of both packages."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "README.rst").read_text()
    section = text[text.index("\nArchitecture\n"):text.index("\nOperations\n")]
    missing = []
    for package in ("entropy_appliance", "entropy_fetch"):
        for path in sorted((root / package).rglob("*.py")):
            if path.stem in ("__init__", "__main__"):
                continue
            if f"``{path.stem}``" not in section and f"``{path.name}``" not in section:
                missing.append(str(path.relative_to(root)))
    assert missing == []
