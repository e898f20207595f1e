"""Errors meant for people: where the problem is and what was expected, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input (data, flags, files). The CLI prints it as one line and exits 1.

    ``source`` names the file (or dataset), ``location`` the line or example index, ``field`` the
    column or flag involved.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        location: str | int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.location = location
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.location is not None:
            where.append(str(self.location))
        prefix = ":".join(where)
        if self.field:
            prefix = f"{prefix} field '{self.field}'" if prefix else f"field '{self.field}'"
        return f"{prefix}: {self.message}" if prefix else self.message


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for an unknown name, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def one_line(text: object) -> str:
    """A (library) message on one line: its non-blank lines, stripped, joined by single spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def require(value: T | None, flag: str, command: str) -> T:
    """``value``, or a UserError saying that ``command`` needs ``--flag``."""
    if value is None:
        raise UserError(f"{command} needs --{flag}")
    return value
