"""Errors a user can act on. The `kronos-rt` entry point (worker/cli/__init__.py) prints
their message in one or two lines instead of a traceback: ConfigError exits 2 (fix a flag
or the environment), StartupError exits 1 (something the command needs is not there)."""
from __future__ import annotations

import re


class ConfigError(ValueError):
    """A flag, environment variable or input file that cannot work as given."""


class StartupError(RuntimeError):
    """A service or resource the command needs at start-up is unreachable or missing."""


def hide_password(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host (for logs and messages)."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", str(url))
