"""User-facing errors.

Every problem a user can cause (a wrong name, a missing folder, a corrupt image, a diverging loss,
an invalid config value) is raised as a :class:`KitError` whose message is one line naming the
problem and the fix. The CLI prints it as ``error: <message>`` and exits with status 2, without a
traceback; library users can catch it like any exception.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Iterable


class KitError(Exception):
    """A problem caused by the user's input; the message is one line and says how to fix it."""


class RunFailed(KitError):
    """A run that trained but whose numbers cannot be trusted: a loss or a weight that is not finite, or a loss
    far above chance level. Such a run is never published; its staging folder stays for inspection."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> KitError:
    """Build the error for an unknown registry name, listing the valid ones (closest first)."""
    valid = sorted(valid)
    return KitError(f"unknown {kind} '{name}'{did_you_mean(name, valid)}; valid {kind}s: {', '.join(valid)}")


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the valid name closest to ``name``, or ``""`` when none is close."""
    close = get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for one-line errors about damaged files."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__
