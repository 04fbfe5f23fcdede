"""How an error reads in one line: what scripts print, and what wraps another library's failure."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def check_choice(flag: str, value, choices) -> None:
    """The one wording of "not one of": ValueError naming the flag, the value and every choice."""
    if value not in choices:
        raise ValueError(f"{flag} {value} is not one of {', '.join(choices)}")
