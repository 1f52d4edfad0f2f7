"""Shaping tool output for the model: the one function that decides what goes inside <result>.

Rollout, repair, GRPO and evaluation all call `format_result`, so a model sees the same text for
the same tool output whichever stage produced the trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tools_sandbox.protocol import ExecResult

if TYPE_CHECKING:
    from tools_sandbox.search import Passage

TRUNCATION_MARKER = "\n... [output truncated: {hidden} more characters]"
NO_PASSAGES = "No results found."


def truncate(text: str, max_chars: int) -> str:
    """Cap text at max_chars, ending with a visible marker that says how much was cut."""
    if len(text) <= max_chars:
        return text
    hidden = len(text) - max_chars
    return text[:max_chars] + TRUNCATION_MARKER.format(hidden=hidden)


def _passages_text(passages: Sequence[Passage]) -> str:
    if not passages:
        return NO_PASSAGES
    blocks = []
    for rank, passage in enumerate(passages, start=1):
        body = passage.contents
        # FlashRAG corpora store contents as '"Title"\ntext'; show the title once.
        first, _, rest = body.partition("\n")
        if rest and first.strip('"') == passage.title:
            body = rest
        blocks.append(f"Doc {rank} (Title: {passage.title}) {' '.join(body.split())}")
    return "\n".join(blocks)


def format_result(output: ExecResult | Sequence[Passage] | str, max_chars: int) -> str:
    """The text inside <result>…</result> for a Python run, a list of passages, or plain text.

    A Python error's last line survives truncation of the output before it (the model needs it more
    than the tail of a long output), and is itself cut to `max_chars` (an exception's text can be
    any size): the result never exceeds max_chars plus one truncation marker.
    """
    if isinstance(output, str):
        return truncate(output, max_chars)
    if not isinstance(output, ExecResult):
        return truncate(_passages_text(output), max_chars)
    printed = output.stdout + output.stderr
    if output.error is None:
        return truncate(printed, max_chars)
    error = truncate(output.error, max_chars)
    room = max(0, max_chars - len(error) - 1)
    body = truncate(printed, room) if printed and room else ""
    if body and not body.endswith("\n"):
        body += "\n"
    return body + error
