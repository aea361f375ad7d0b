"""User-facing errors.

Every mistake a user can make (a bad flag, a malformed YAML, an unknown task) is raised as a
:class:`UserError`. The CLI turns it into one clear line and exit code 2, never a traceback:
the message must say *what* was wrong, *where* (file, key) and what would be right.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the CLI prints it without a traceback (exit 2)."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)
