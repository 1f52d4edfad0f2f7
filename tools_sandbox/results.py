"""Shaping tool output for the model: the one place that decides what goes inside <result>."""

from __future__ import annotations

TRUNCATION_MARKER = "\n... [output truncated: {hidden} more characters]"


def truncate(text: str, max_chars: int) -> str:
    """Cap text at max_chars, ending with a visible marker that says how much was cut."""
    if len(text) <= max_chars:
        return text
    hidden = len(text) - max_chars
    return text[:max_chars] + TRUNCATION_MARKER.format(hidden=hidden)
