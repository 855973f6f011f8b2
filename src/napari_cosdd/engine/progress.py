"""Formatting progress for people: shared by the command line and the widgets."""

from __future__ import annotations


def format_duration(seconds: float | None) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'; None (unknown) -> '?'."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def run_to_end(gen):
    """Drive a generator to its end and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
