"""User-facing errors.

Every bad input raises :class:`HeadgameError` with one line that names the problem and the
fix. The CLI prints it as ``error: ...`` and exits with code 2 (no traceback unless
``--debug``).
"""

from __future__ import annotations


class HeadgameError(ValueError):
    """A problem with the user's input or environment, with a one-line fix-it message."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line only: the CLI prints it verbatim.
        super().__init__(" ".join(str(message).split()))
