"""The TIR grammar (DESIGN.md §3): tags, stop strings, tool calls, the <result> segment, format checks.

    <think> … </think> <code> … </code> <result> … </result> … <answer> … \\boxed{…} </answer>

Prompts live in tasks/core/prompts.py; this module is only the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TAGS = ("think", "code", "search", "result", "answer")
TAG_TOKENS = tuple(token for tag in TAGS for token in (f"<{tag}>", f"</{tag}>"))
TOOL_STOPS = {"</code>": "python", "</search>": "search"}
ANSWER_STOP = "</answer>"
STOP_STRINGS = (*TOOL_STOPS, ANSWER_STOP)
_CODE_FENCE = re.compile(r"^\s*```(?:python|py)?\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def tool_segment_text(output: str) -> str:
    """The text the engine appends after a tool call: the tool's output inside <result> tags."""
    return f"\n<result>\n{output.rstrip()}\n</result>\n"


@dataclass(frozen=True)
class ToolCall:
    """A tool call parsed from the end of a model segment."""

    tool: str  # "python" | "search"
    argument: str  # code or query
    error: str | None = None  # why it could not be parsed


def parse_tool_call(segment: str, stop: str) -> ToolCall:
    """The code or query between the last opening tag and the stop tag the segment ends with."""
    tool = TOOL_STOPS[stop]
    tag = stop.replace("/", "")
    start = segment.rfind(tag)
    end = segment.rfind(stop)
    if start < 0 or end < start:
        return ToolCall(tool, "", error=f"{stop} without an opening {tag}")
    argument = segment[start + len(tag) : end]
    if tool == "python":
        fenced = _CODE_FENCE.match(argument)
        argument = fenced.group(1) if fenced else argument
        argument = argument.strip("\n")
    else:
        argument = " ".join(argument.split())
    if not argument.strip():
        return ToolCall(tool, "", error=f"empty {tag} block")
    return ToolCall(tool, argument)


_BOXED = re.compile(r"\\boxed\{")


def extract_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{…} (balanced braces), or None."""
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position].strip()
    return None


def format_problem(response: str) -> str | None:
    """Why a trajectory breaks the TIR grammar, or None when it is valid.

    Valid: think tags pair, every tool call is closed and followed by a result, and there is exactly
    one answer, at the end, holding \\boxed{}.
    """
    if response.count("<think>") != response.count("</think>"):
        return "unpaired <think> tags"
    for tag in ("code", "search"):
        opened, closed = response.count(f"<{tag}>"), response.count(f"</{tag}>")
        if opened != closed:
            return f"unclosed <{tag}> call"
    calls = response.count("</code>") + response.count("</search>")
    if response.count("<result>") != calls or response.count("</result>") != calls:
        return "a tool call without its <result>"
    if response.count("<answer>") != 1 or response.count("</answer>") != 1:
        return "no single <answer> block"
    answer = response[response.index("<answer>") : response.index("</answer>")]
    if extract_boxed(answer) is None:
        return "the answer has no \\boxed{}"
    if response.rstrip().endswith("</answer>") is False:
        return "text after </answer>"
    return None
