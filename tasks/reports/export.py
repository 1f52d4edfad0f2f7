"""Export SFT examples and preference pairs in other trainers' own tool-calling formats.

The SFT exports keep AutoTraj's loss mask: tool output sits only in turns those trainers never train on.
- `trl`: conversational `messages` with assistant `tool_calls` and `tool` turns, plus a `tools` column,
  for TRL's SFTTrainer with `assistant_only_loss=True`; pairs as conversational prompt/chosen/rejected.
- `llamafactory`: LLaMA-Factory's sharegpt with `function_call`/`observation` turns and a `tools`
  column; a `dataset_info.json` entry is written beside the file (ranking for pairs).
- `sharegpt`: FastChat/axolotl ShareGPT: the TIR text as written, model turns `gpt` and tool results
  `human` (the side those trainers mask).
- `openai`: OpenAI's fine-tuning chat JSONL (tool calls with JSON-string arguments and ids; tool turns
  are never trained); pairs in its preference fine-tuning format.
A preference pair's sides are whole trajectories: TRL's DPOTrainer scores its completion turns whole,
and LLaMA-Factory, ShareGPT and OpenAI take one response message per side, so the pair formats hold
tool results inside the scored response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks.core.conversation import TOOLS, chat_messages, turns
from tasks.core.trajectory import response_text

KINDS = {"sft": "sft_examples", "pairs": "preference_pairs"}
TOOLS_JSON = json.dumps(TOOLS)


class ExportError(ValueError):
    """A row that cannot be exported in the asked format."""


def _sides(kind: str, row: Mapping[str, Any]) -> dict[str, Sequence[Mapping[str, Any]]]:
    """The trajectories of a row: its segments (sft), or the chosen and rejected ones (pairs)."""
    if kind == "sft":
        return {"completion": row["segments"]}
    sides = {side: row.get(f"{side}_segments") for side in ("chosen", "rejected")}
    if any(segments is None for segments in sides.values()):
        raise ExportError(f"pair {row.get('pair_id')} has no segments (an old version); re-run `autotraj pairs`")
    return sides


def _prompt(row: Mapping[str, Any], system: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]


def _trl(kind: str, row: Mapping[str, Any], system: str) -> dict:
    sides = _sides(kind, row)
    if kind == "sft":
        return {"messages": _prompt(row, system) + chat_messages(sides["completion"], wire=False), "tools": TOOLS_JSON}
    conversations = {side: chat_messages(segments, wire=False) for side, segments in sides.items()}
    return {"prompt": _prompt(row, system), **conversations, "tools": TOOLS_JSON}


def _llamafactory_turns(segments: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    result = []
    for turn in turns(segments):
        if turn.role == "tool":
            result.append({"from": "observation", "value": turn.content})
        elif turn.arguments is None:
            result.append({"from": "gpt", "value": turn.content})
        else:
            call = json.dumps({"name": turn.tool, "arguments": dict(turn.arguments)}, ensure_ascii=False)
            # LLaMA-Factory (≥ 0.9.5) keeps text before a call when the call is wrapped in its tool-call words.
            value = f"{turn.content}<tool_call>{call}</tool_call>" if turn.content else call
            result.append({"from": "function_call", "value": value})
    return result


def _llamafactory(kind: str, row: Mapping[str, Any], system: str) -> dict:
    sides = _sides(kind, row)
    human = {"from": "human", "value": row["prompt"]}
    if kind == "sft":
        conversation = [human, *_llamafactory_turns(sides["completion"])]
        return {"conversations": conversation, "system": system, "tools": TOOLS_JSON}
    responses = {side: {"from": "gpt", "value": response_text(segments)} for side, segments in sides.items()}
    return {"conversations": [human], **responses, "system": system}


def _sharegpt(kind: str, row: Mapping[str, Any], system: str) -> dict:
    sides = _sides(kind, row)
    opening = [{"from": "system", "value": system}, {"from": "human", "value": row["prompt"]}]
    identity = {"id": row.get("example_id") or row.get("pair_id")}
    if kind == "sft":
        body = [
            {"from": "human" if segment["kind"] == "tool" else "gpt", "value": segment["text"]}
            for segment in sides["completion"]
        ]
        return identity | {"conversations": opening + body}
    responses = {side: {"from": "gpt", "value": response_text(segments)} for side, segments in sides.items()}
    return identity | {"conversations": opening, **responses}


def _openai(kind: str, row: Mapping[str, Any], system: str) -> dict:
    sides = _sides(kind, row)
    if kind == "sft":
        messages = _prompt(row, system) + chat_messages(sides["completion"], wire=True)
        return {"messages": messages, "tools": TOOLS, "parallel_tool_calls": False}
    output = {side: [{"role": "assistant", "content": response_text(segments)}] for side, segments in sides.items()}
    return {
        "input": {"messages": _prompt(row, system)},
        "preferred_output": output["chosen"],
        "non_preferred_output": output["rejected"],
    }


CONVERTERS: dict[str, Callable[[str, Mapping[str, Any], str], dict]] = {
    "trl": _trl,
    "llamafactory": _llamafactory,
    "sharegpt": _sharegpt,
    "openai": _openai,
}
FORMATS = tuple(CONVERTERS)


def llamafactory_entry(kind: str, file_name: str) -> dict[str, Any]:
    """The dataset_info.json entry that registers an export with LLaMA-Factory (columns and tags spelled out)."""
    tags = {
        "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call",
    }  # fmt: skip
    if kind == "sft":
        columns = {"messages": "conversations", "system": "system", "tools": "tools"}
        return {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": tags}
    columns = {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"}
    return {"file_name": file_name, "formatting": "sharegpt", "ranking": True, "columns": columns, "tags": tags}


def register_llamafactory(kind: str, out: Path) -> tuple[Path, str]:
    """Add (or replace) the export's entry in dataset_info.json beside it, keeping the others; return the
    file and the dataset name to pass LLaMA-Factory."""
    info_file = out.parent / "dataset_info.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    if not isinstance(info, dict):
        raise ExportError(f"{info_file} is not a JSON object; move it aside")
    info[out.stem] = llamafactory_entry(kind, out.name)
    info_file.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info_file, out.stem


def export_rows(kind: str, rows: Iterable[Mapping[str, Any]], fmt: str, system: str, out: Path) -> int:
    """Write rows of `kind` ('sft' or 'pairs') as JSON lines in `fmt`; return how many. The file appears
    whole or not at all."""
    if kind not in KINDS:
        raise ExportError(f"unknown export kind {kind!r}; choose from {', '.join(KINDS)}")
    if fmt not in CONVERTERS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    count = 0
    try:
        with partial.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(CONVERTERS[fmt](kind, row, system), ensure_ascii=False) + "\n")
                count += 1
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return count
