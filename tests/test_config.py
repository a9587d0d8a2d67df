"""
Options from ``ENTROPY_*`` environment variables: precedence, lists, flags,
errors that name the variable, unknown variables, and ``--help``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from entropy_appliance.app.environment import EnvironmentOptions, parse_bool, variable_name
from entropy_appliance.app.options import parse_config
from entropy_appliance.tap import Options
from tests.twistd_helpers import REPO_ROOT

BASE = ["--source", "kernel", "--https", "none"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Parsing --https may generate certs/ in the working directory.
    monkeypatch.chdir(tmp_path)


def parse(env: dict[str, str], *argv: str) -> Options:
    options = Options()
    options.environ = env
    options.parseOptions(list(argv))
    return options


def test_variable_names() -> None:
    assert variable_name("reseed-bits") == "ENTROPY_RESEED_BITS"
    assert variable_name("source") == "ENTROPY_SOURCE"


def test_a_parameter_from_the_environment() -> None:
    c = parse({"ENTROPY_RESEED_BITS": "512", "ENTROPY_SOURCE": "kernel", "ENTROPY_HTTPS": "none"}).config
    assert c.policy.bits == 512
    assert c.source.kind == "kernel"
    assert c.https == ()


def test_the_command_line_wins_over_the_environment() -> None:
    o = parse({"ENTROPY_RESEED_BITS": "512", "ENTROPY_STREAM": "tcp:1:interface=127.0.0.1"},
              *BASE, "--reseed-bits", "1024", "--stream=tcp:2:interface=127.0.0.1")
    assert o.config.policy.bits == 1024
    assert o.config.stream == ("tcp:2:interface=127.0.0.1",)


def test_defaults_apply_when_neither_gives_a_value() -> None:
    c = parse({}, *BASE).config
    assert c.policy.bits == 384
    assert c.stream == ("tcp:9000",)


def test_repeatable_options_take_a_whitespace_separated_list() -> None:
    o = parse({"ENTROPY_STREAM": " tcp:9000:interface=127.0.0.1\n  unix:/run/entropy-stream.sock ",
               "ENTROPY_HTTP": "none"}, *BASE)
    assert o.config.stream == ("tcp:9000:interface=127.0.0.1", "unix:/run/entropy-stream.sock")
    assert o.config.http == ()


@pytest.mark.parametrize(("env", "no_h2"), [
    ({"ENTROPY_H2": "0"}, True),
    ({"ENTROPY_H2": "false"}, True),
    ({"ENTROPY_H2": "1"}, False),
    ({"ENTROPY_H2": "yes"}, False),
    ({"ENTROPY_NO_H2": "1"}, True),
    ({"ENTROPY_NO_H2": "off"}, False),
    ({}, False),
])
def test_negated_flag_both_ways(env: dict[str, str], no_h2: bool) -> None:
    assert parse(env, *BASE).config.tls.h2 is not no_h2


def test_the_command_line_flag_wins() -> None:
    assert not parse({"ENTROPY_H2": "1"}, *BASE, "--no-h2").config.tls.h2


def test_a_positive_flag_from_the_environment() -> None:
    class WithFlag(Options):
        optFlags = [*Options.optFlags, ["verbose", None, "Say more."]]

    o = WithFlag()
    o.environ = {"ENTROPY_VERBOSE": "on"}
    o.parseOptions(BASE)
    assert o["verbose"]


def test_a_bad_flag_value_names_the_variable() -> None:
    with pytest.raises(usage.UsageError, match=r"^ENTROPY_H2='maybe': 'maybe' is not a boolean"):
        parse({"ENTROPY_H2": "maybe"}, *BASE)


def test_a_bad_value_fails_naming_the_variable() -> None:
    with pytest.raises(usage.UsageError) as e:
        parse({"ENTROPY_RESEED_BITS": "12"}, *BASE)
    assert str(e.value).startswith("ENTROPY_RESEED_BITS='12': --reseed-bits '12': must be")


def test_a_bad_value_on_the_command_line_names_no_variable() -> None:
    with pytest.raises(usage.UsageError) as e:
        parse({"ENTROPY_RESEED_INTERVAL": "2"}, *BASE, "--reseed-bits", "12")
    assert str(e.value).startswith("--reseed-bits '12'")


def test_bad_limits_from_the_environment() -> None:
    with pytest.raises(usage.UsageError, match=r"^ENTROPY_PEER_RATE='lots': --peer-rate"):
        parse({"ENTROPY_PEER_RATE": "lots"}, *BASE)
    with pytest.raises(usage.UsageError, match=r"^ENTROPY_SHUTDOWN_TIMEOUT='-1': --shutdown-timeout"):
        parse({"ENTROPY_SHUTDOWN_TIMEOUT": "-1"}, *BASE)


def test_empty_values_count_as_unset() -> None:
    o = parse({"ENTROPY_RESEED_BITS": "", "ENTROPY_HTTPS": " "}, "--source", "kernel", "--https", "none")
    assert o.config.policy.bits == 384


def test_unknown_variables_warn_and_the_units_own_pass_quietly() -> None:
    o = parse({"ENTROPY_RESEED_BTIS": "512", "ENTROPY_MODULE": "quantis_pcie",
               "ENTROPY_PROBE_TIMEOUT": "30", "ENTROPY_PROBE_ROOT": "/", "ENTROPY_MODPROBE": "modprobe",
               "OTHER_THING": "1"}, *BASE)
    assert o.env_warnings == [
        "ENTROPY_RESEED_BTIS is not an option of this appliance and is ignored; "
        "see --help for the ENTROPY_* variables"]
    assert o.config.policy.bits == 384


def test_an_option_added_later_is_covered_without_changes() -> None:
    class Later(EnvironmentOptions):
        optParameters: list[list[Any]] = [["workers", None, "1", "Serving processes."]]

        def __init__(self) -> None:
            super().__init__()
            self["listen"] = []

        def opt_listen(self, endpoint: str) -> None:
            """Listen here (repeatable)."""
            self["listen"].append(endpoint)

        def opt_quiet(self) -> None:
            """Say nothing."""
            self["quiet"] = True

    o = Later()
    o.environ = {"ENTROPY_WORKERS": "2", "ENTROPY_LISTEN": "tcp:1 tcp:2", "ENTROPY_QUIET": "1"}
    o.parseOptions([])
    assert o["workers"] == "2" and o["listen"] == ["tcp:1", "tcp:2"] and o["quiet"]
    assert "[env: ENTROPY_WORKERS]" in str(o)


def test_help_lists_every_variable() -> None:
    text = str(Options())
    for tag in ("[env: ENTROPY_SOURCE]", "[env: ENTROPY_STREAM]", "[env: ENTROPY_HTTPS]",
                "[env: ENTROPY_H2=0]", "[env: ENTROPY_ONION=1]", "[env: ENTROPY_PEER_RATE]",
                "[env: ENTROPY_SHUTDOWN_TIMEOUT]"):
        assert tag in " ".join(text.split()), tag
    assert "ENTROPY_HELP" not in text


def test_parse_bool() -> None:
    assert parse_bool(" TRUE ") and not parse_bool("No")
    with pytest.raises(ValueError):
        parse_bool("2")


def test_twistd_refuses_to_start_naming_the_variable(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "ENTROPY_RESEED_BITS": "12",
           "ENTROPY_HTTPS": "none"}
    done = subprocess.run([sys.executable, "-m", "twisted", "entropy", "--source", "kernel"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ENTROPY_RESEED_BITS='12': --reseed-bits '12': must be an integer" in done.stdout + done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--reseed-interval", "0"], "--reseed-interval '0': must be seconds, 0 < S <= 86400"),
    (["--reseed-bytes", "1K"], "--reseed-bytes '1K': must be between 4K (4096) and 1T"),
    (["--reseed-bytes", "x"], "--reseed-bytes: 'x' is not a size (e.g. 65536, 64K, 16M, 1G)"),
    (["--seed-wait", "301"], "--seed-wait '301': must be seconds, 0 <= S <= 300"),
    (["--reseed-bits", "3.5"], "--reseed-bits '3.5': must be an integer, 256 <= N <= 65536"),
    (["--health-alpha", "2**-9"], "--health-alpha '2**-9': must be between 2**-64 and 2**-10"),
    (["--min-entropy", "0"], "--min-entropy '0': must be a number with 0 < H <= 8"),
    (["--max-bytes", "0"], "--max-bytes: must be between 1 and 1T"),
    (["--peer-streams", "-1"], "--peer-streams '-1': must be an integer, 0 (no limit) or more"),
    (["--peer-rate", "x"], "--peer-rate 'x': must be requests per second, 0 (no limit) or more"),
    (["--idle-timeout", "99999"], "--idle-timeout '99999': must be seconds, 0 <= S <= 86400"),
    (["--header-timeout", "-1"], "--header-timeout '-1': must be seconds, 0 <= S <= 3600"),
    (["--workers", "auto4"], "--workers 'auto4': must be a number of processes, 1 <= N <= 64, or auto"),
    (["--source", "usb"], "--source: unknown source 'usb': use auto, kernel or device:PATH"),
    (["--stream", "tcp:x"], "--stream 'tcp:x' is not a valid server endpoint"),
])
def test_each_bad_value_says_what_to_give(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse({}, *BASE, *argv)
    assert str(e.value).startswith(message)


def test_parsing_has_no_side_effects(tmp_path: Path) -> None:
    """No certificate, no onion key, no source probe: makeService does those."""
    config = parse_config(["--source", "auto", "--onion", "--tor-control", "unix:/run/tor/control",
                           "--onion-key", str(tmp_path / "onion.key")])
    assert config.source.kind == "auto" and config.tls.self_signed
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_prefer_h2_is_a_choice_of_order_and_contradicts_no_h2() -> None:
    assert parse({}, *BASE).config.tls.prefer_h2 is False
    assert parse({}, *BASE, "--prefer-h2").config.tls.prefer_h2 is True
    assert parse({"ENTROPY_PREFER_H2": "1"}, *BASE).config.tls.prefer_h2 is True
    with pytest.raises(usage.UsageError, match="--prefer-h2 and --no-h2"):
        parse({}, *BASE, "--prefer-h2", "--no-h2")
