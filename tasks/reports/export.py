"""Export SFT examples and preference pairs for other trainers: TRL, LLaMA-Factory (alpaca), ShareGPT.

These formats hold the trajectory as one assistant message, tool results included: a trainer that
should not learn tool output must mask `<result>…</result>` itself (AutoTraj's own SFT stage does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

FORMATS = ("trl", "llamafactory", "sharegpt")
KINDS = {"sft": "sft_examples", "pairs": "preference_pairs"}


def _response(row: Mapping[str, Any]) -> str:
    return "".join(segment["text"] for segment in row["segments"])


def _trl(kind: str, row: Mapping[str, Any], system: str) -> dict:
    prompt = [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}]
    if kind == "sft":
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": _response(row)}]}
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def _llamafactory(kind: str, row: Mapping[str, Any], system: str) -> dict:
    base = {"system": system, "instruction": row["prompt"], "input": ""}
    if kind == "sft":
        return base | {"output": _response(row)}
    return base | {"chosen": row["chosen"], "rejected": row["rejected"]}


def _sharegpt(kind: str, row: Mapping[str, Any], system: str) -> dict:
    human = {"from": "human", "value": row["prompt"]}
    if kind == "sft":
        return {"system": system, "conversations": [human, {"from": "gpt", "value": _response(row)}]}
    return {
        "system": system,
        "conversations": [human],
        "chosen": {"from": "gpt", "value": row["chosen"]},
        "rejected": {"from": "gpt", "value": row["rejected"]},
    }


CONVERTERS: dict[str, Callable[[str, Mapping[str, Any], str], dict]] = {
    "trl": _trl,
    "llamafactory": _llamafactory,
    "sharegpt": _sharegpt,
}


def export_rows(kind: str, rows: Iterable[Mapping[str, Any]], fmt: str, system: str, out: Path) -> int:
    """Write rows of `kind` ('sft' or 'pairs') as JSON lines in `fmt`; return how many."""
    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}; choose from {', '.join(KINDS)}")
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(CONVERTERS[fmt](kind, row, system), ensure_ascii=False) + "\n")
            count += 1
    return count
