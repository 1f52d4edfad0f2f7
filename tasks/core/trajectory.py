"""Trajectory text from stored segments: what the model wrote, and the whole response."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def model_text(segments: Iterable[Mapping[str, Any]]) -> str:
    """What the model wrote, without tool results."""
    return "".join(segment["text"] for segment in segments if segment["kind"] == "model")


def response_text(segments: Iterable[Mapping[str, Any]]) -> str:
    """The whole response: model and tool text in order."""
    return "".join(segment["text"] for segment in segments)
