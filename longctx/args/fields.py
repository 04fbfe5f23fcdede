"""Field and list parsers shared by the argument groups: one-line help, comma-separated numbers."""

from __future__ import annotations

from dataclasses import field


def help_field(text: str, **kwargs) -> dict:
    """A dataclass field with its `--help` line."""
    return field(metadata={"help": text}, **kwargs)


def parse_positive_ints(flag: str, text: str) -> list[int]:
    """'2048,4096' -> [2048, 4096], sorted and without repeats; ValueError naming the flag otherwise."""
    try:
        values = sorted({int(piece) for piece in str(text).split(",") if piece.strip()})
    except ValueError:
        raise ValueError(f"{flag} {text} must be a comma-separated list of integers") from None
    if not values or values[0] <= 1:
        raise ValueError(f"{flag} {text} must name lengths above 1 token")
    return values


def parse_depths(flag: str, text: str | None) -> list[float] | None:
    """'0,50,100' (percent) -> [0.0, 0.5, 1.0]; None stays None."""
    if text is None or not str(text).strip():
        return None
    try:
        percents = [float(piece) for piece in str(text).split(",") if piece.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text} must be comma-separated percentages, e.g. 0,25,50,75,100") from None
    if not percents or not all(0 <= percent <= 100 for percent in percents):
        raise ValueError(f"{flag} {text}: depths are percentages between 0 and 100")
    return sorted({percent / 100 for percent in percents})
