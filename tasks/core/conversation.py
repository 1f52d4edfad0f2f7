"""A stored trajectory as a conversation with native tool calls, the shape chat APIs and other trainers take.

Model segments that end in `<code>…</code>` or `<search>…</search>` become assistant turns carrying
a tool call (the text before the call is the turn's content); tool segments become tool turns whose
content is the result without its `<result>` tags; the last model segment is a plain assistant turn.
The chat backend (tools mode) sends these turns; the exports write them in each trainer's format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.core.tir import ANSWER_STOP, TOOL_STOPS, parse_tool_call

TOOL_ARGUMENT = {"python": "code", "search": "query"}
TOOLS = [
    {"type": "function", "function": {
        "name": "python", "description": "Run Python code in a sandbox; its printed output is returned.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the knowledge corpus; the top passages are returned.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}},
]  # fmt: skip
OPENING = {"</code>": "<code>", "</search>": "<search>", ANSWER_STOP: "<answer>"}


@dataclass(frozen=True)
class Turn:
    """One turn of a trajectory: what the model wrote (and the tool it called), or what a tool returned."""

    role: str  # "assistant" | "tool"
    content: str
    tool: str | None = None  # the called tool (assistant) or the answering one (tool)
    arguments: Mapping[str, str] | None = None  # the call's arguments, for an assistant turn that calls a tool
    call_id: str | None = None  # pairs a call with its result


def tool_result(text: str) -> str:
    """A tool segment's output, without the <result> tags (a `tool` message's content)."""
    inner = text.strip()
    if inner.startswith("<result>") and inner.endswith("</result>"):
        inner = inner[len("<result>") : -len("</result>")]
    return inner.strip("\n")


def _field(segment: Any, name: str) -> Any:
    return segment[name] if isinstance(segment, Mapping) else getattr(segment, name)


def turns(segments: Iterable[Any]) -> list[Turn]:
    """The trajectory's segments (rows or objects with kind/tool/text) as assistant and tool turns."""
    result: list[Turn] = []
    calls = 0
    for segment in segments:
        text = _field(segment, "text")
        if _field(segment, "kind") == "tool":
            result.append(Turn("tool", tool_result(text), _field(segment, "tool"), call_id=f"call_{calls}"))
            continue
        stop = next((s for s in TOOL_STOPS if text.rstrip().endswith(s)), None)
        if stop is None:
            result.append(Turn("assistant", text.strip()))
            continue
        # A malformed call (empty block) keeps its call turn, so the tool turn that answers it stays paired.
        call = parse_tool_call(text.rstrip(), stop)
        calls += 1
        prefix = text[: text.rfind(OPENING[stop])].strip()
        arguments = {TOOL_ARGUMENT[call.tool]: call.argument}
        result.append(Turn("assistant", prefix, call.tool, arguments, f"call_{calls}"))
    return result


def chat_messages(segments: Iterable[Any], *, wire: bool) -> list[dict[str, Any]]:
    """The turns as chat messages: `wire` is the OpenAI API's form (arguments a JSON string, no content
    for a bare call); otherwise Hugging Face chat templates' (arguments a dict, tool turns named)."""
    messages: list[dict[str, Any]] = []
    for turn in turns(segments):
        if turn.role == "tool":
            message = {"role": "tool", "tool_call_id": turn.call_id, "content": turn.content}
            messages.append(message if wire else {**message, "name": turn.tool})
        elif turn.arguments is None:
            messages.append({"role": "assistant", "content": turn.content})
        else:
            arguments = json.dumps(turn.arguments, ensure_ascii=False) if wire else dict(turn.arguments)
            function = {"name": turn.tool, "arguments": arguments}
            messages.append(
                {
                    "role": "assistant",
                    "content": turn.content or (None if wire else ""),
                    "tool_calls": [{"id": turn.call_id, "type": "function", "function": function}],
                }
            )
    return messages
