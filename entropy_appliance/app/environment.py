"""
Options from the environment: every ``--some-option`` may also be given as
``ENTROPY_SOME_OPTION``.

:class:`EnvironmentOptions` is a mixin for a ``twisted.python.usage.Options``
subclass.  It derives the variables from the parser's own tables (every
``optParameters`` entry, every ``optFlags`` entry and every ``opt_*``
method), so an option added later is covered without touching this module.
The rules:

- Precedence: the command line, then the environment, then the defaults.
  A variable is ignored for an option that the command line gives.
- Parameters take the value as it is.  An empty value counts as unset, as
  systemd's ``Environment=NAME=`` means.
- Repeatable options (those whose value is a list, like ``--stream``) take
  a whitespace-separated list: endpoint descriptions contain colons and may
  contain commas, never unquoted whitespace.
- Flags take ``1/0``, ``true/false``, ``yes/no`` or ``on/off``.  A flag
  named ``no-X`` can also be given positively: ``ENTROPY_X=0`` is
  ``--no-X``, ``ENTROPY_X=1`` leaves it off.
- A bad value fails at startup with the variable named in front of the
  option's own message.
- An unknown ``ENTROPY_*`` variable is logged as a warning, never an error
  (the systemd units set a few for their helper; see :data:`NOT_OPTIONS`).
"""

from __future__ import annotations

import getopt
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twisted.logger import Logger
from twisted.python import usage

__all__ = [
    "PREFIX",
    "NOT_OPTIONS",
    "EnvironmentOptions",
    "EnvSetting",
    "variable_name",
    "parse_bool",
]

PREFIX = "ENTROPY_"

#: ``ENTROPY_*`` variables that belong to the systemd units' device probe,
#: not to the appliance; they are accepted silently.
NOT_OPTIONS = frozenset({"ENTROPY_MODULE", "ENTROPY_PROBE_TIMEOUT", "ENTROPY_PROBE_ROOT",
                         "ENTROPY_MODPROBE"})

#: Options that only print and exit; they have no variable.
_NO_VARIABLE = frozenset({"help", "version"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_log = Logger()


def variable_name(option: str) -> str:
    """``reseed-bits`` -> ``ENTROPY_RESEED_BITS``."""
    return PREFIX + option.upper().replace("-", "_")


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); raises ValueError."""
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; use 1 or 0 (true/false, yes/no, on/off)")


@dataclass(frozen=True)
class EnvSetting:
    """One option taken from the environment: the variable, its text, the option."""

    variable: str
    value: str
    option: str


class EnvironmentOptions(usage.Options):
    """
    A ``usage.Options`` whose options may also come from ``ENTROPY_*``
    environment variables.

    ``environ`` (default ``os.environ``) can be replaced before
    :meth:`parseOptions`.  After parsing, ``env_settings`` lists what the
    environment supplied and ``env_warnings`` the unknown variables.
    """

    environ: Mapping[str, str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.env_settings: list[EnvSetting] = []
        self.env_warnings: list[str] = []
        for name in list(self.docs):
            if name in _NO_VARIABLE or name.startswith("_"):
                continue
            doc = self.docs[name] or ""
            if self._takes_argument(name):
                tag = f"[env: {variable_name(name)}]"
            elif name.startswith("no-"):
                tag = f"[env: {variable_name(name[3:])}=0]"
            else:
                tag = f"[env: {variable_name(name)}=1]"
            self.docs[name] = f"{doc} {tag}".strip()

    # -- the option tables ---------------------------------------------------

    def _takes_argument(self, name: str) -> bool:
        return name + "=" in self.longOpt

    def _option_names(self) -> list[str]:
        names = [o.rstrip("=") for o in self.longOpt]
        return [n for n in names if n not in _NO_VARIABLE and not n.startswith("_")]

    def _canonical(self, opt: str) -> str | None:
        """The dispatch name of a command-line option (as ``parseOptions`` mangles it)."""
        name = opt[2:] if opt.startswith("--") else opt[1:]
        if name not in self.synonyms:
            name = name.replace("-", "_")
        synonym = self.synonyms.get(name)
        return None if synonym is None else str(synonym)

    def _given(self, argv: Sequence[str]) -> set[str]:
        """Names of the options that the command line sets."""
        try:
            opts, _ = getopt.getopt(list(argv), self.shortOpt, self.longOpt)
        except getopt.error:
            return set()  # the real parse reports it
        given: set[str] = set()
        for opt, _arg in opts:
            name = self._canonical(opt)
            if name is not None:
                given.add(name)
        return given

    # -- the environment -----------------------------------------------------

    def environment_arguments(self, argv: Sequence[str]) -> list[str]:
        """
        The command-line arguments the environment stands for, for options
        that ``argv`` does not give.  Fills ``env_settings`` and
        ``env_warnings``; raises UsageError for a bad flag value.
        """
        environ = os.environ if self.environ is None else self.environ
        given = self._given(argv)
        names = self._option_names()
        known: set[str] = set(NOT_OPTIONS)
        args: list[str] = []
        self.env_settings = []
        for name in names:
            variables = [variable_name(name)]
            negated = not self._takes_argument(name) and name.startswith("no-")
            if negated:
                variables.append(variable_name(name[3:]))
            known.update(variables)
            for variable in variables:
                value = environ.get(variable, "")
                if not value.strip() or name in given:
                    continue
                args += self._arguments(name, variable, value, positive=negated and variable != variables[0])
                self.env_settings.append(EnvSetting(variable, value, name))
        self.env_warnings = [
            f"{variable} is not an option of this appliance and is ignored; "
            "see --help for the ENTROPY_* variables"
            for variable in sorted(environ)
            if variable.startswith(PREFIX) and variable not in known
        ]
        for warning in self.env_warnings:
            _log.warn("{warning}", warning=warning)
        return args

    def _arguments(self, name: str, variable: str, value: str, positive: bool) -> list[str]:
        if self._takes_argument(name):
            if isinstance(self.get(name), list):
                return [f"--{name}={item}" for item in value.split()]
            return [f"--{name}={value}"]
        try:
            on = parse_bool(value)
        except ValueError as e:
            raise usage.UsageError(f"{variable}={value!r}: {e}") from None
        # ENTROPY_H2=0 stands for --no-h2; ENTROPY_NO_H2=1 too.
        return [f"--{name}"] if on != positive else []

    def _explain(self, error: usage.UsageError) -> usage.UsageError:
        """Name the variable behind an option that the message mentions."""
        message = str(error)
        by_option = {s.option: s for s in self.env_settings}
        for mentioned in re.findall(r"--([a-z0-9][a-z0-9-]*)", message):
            setting = by_option.get(mentioned)
            if setting is not None:
                return usage.UsageError(f"{setting.variable}={setting.value!r}: {message}")
        if self.env_settings and not re.search(r"--[a-z]", message):
            listed = ", ".join(f"{s.variable}={s.value!r}" for s in self.env_settings)
            return usage.UsageError(f"{message} (settings from the environment: {listed})")
        return error

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse the environment's options, then the command line's, then validate."""
        argv = list(sys.argv[1:] if options is None else options)
        env_args = self.environment_arguments(argv)
        try:
            # The environment goes first, so the command line could override
            # it even for an option parsed twice; _given already drops those.
            super().parseOptions(env_args + argv)
        except usage.UsageError as e:
            raise self._explain(e) from None
