"""The project's own input errors: what a user gave (a setting, a name, a file, a folder) is wrong,
and the message says what to do. The command line prints these as one line (exit 2); anything else
is a bug, and keeps its traceback.

Each subclasses the built-in error a Python caller would expect, so ``except ValueError`` (or
``FileNotFoundError``, ``KeyError``) goes on catching them.
"""

from __future__ import annotations

__all__ = ["ExistingOutput", "InputError", "MissingInput", "UnknownName"]


class InputError(ValueError):
    """A value the user gave is wrong; the message names it and the fix."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder the user named does not exist, or is not what it should be."""


class ExistingOutput(InputError, FileExistsError):
    """An output the user named already holds something this run must not overwrite."""


class UnknownName(InputError, KeyError):
    """A name (a dataset, a strategy, a preset) that is not in its table."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
