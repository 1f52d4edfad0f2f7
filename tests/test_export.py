"""`autotraj export` in each consumer's own tool format, read back by the consumer where it runs here."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import pytest

from schemas.lake import Lake, Lineage

QUESTION = "How many letters does the capital of Zorbia have?"
PASSAGE = "ZORBIA-PASSAGE: the capital of Zorbia is Quellmark."
OUTPUT = "987654321"
CODE = "print(987654320 + 1)"


def _segment(kind: str, text: str, tool: str | None = None) -> dict:
    return {"kind": kind, "tool": tool, "text": text, "token_ids": [1], "n_tokens": 1}


def _segments(answer: str) -> list[dict]:
    """A trajectory that searches, runs code and answers; the tool outputs are distinctive strings."""
    return [
        _segment("model", "<think> Look the capital up. </think>\n<search> capital of Zorbia </search>"),
        _segment("tool", f"\n<result>\n{PASSAGE}\n</result>\n", "search"),
        _segment("model", f"<think> Count with Python. </think>\n<code>\n{CODE}\n</code>"),
        _segment("tool", f"\n<result>\n{OUTPUT}\n</result>\n", "python"),
        _segment("model", f"<answer> The final answer is \\boxed{{{answer}}} </answer>"),
    ]


def _text(segments: list[dict]) -> str:
    return "".join(segment["text"] for segment in segments)


@pytest.fixture()
def exported(lake: Lake, cli, tmp_path: Path):
    """An SFT example and a preference pair in the lake, and a function that exports them with the CLI."""
    chosen, rejected = _segments("9"), _segments("8")
    sft = {
        "example_id": "e1",
        "query_id": "q1",
        "origin": "repair",
        "source_id": "r1",
        "prompt": QUESTION,
        "segments": chosen,
        "quality": 1.0,
    }
    pair = {"pair_id": "p1", "query_id": "q1", "prompt": QUESTION, "chosen": _text(chosen), "rejected": _text(rejected),
            "chosen_segments": chosen, "rejected_segments": rejected, "source_label": "wrong", "repair_id": "r1",
            "source_trajectory_id": "t1", "chosen_quality": 1.0, "rejected_quality": 0.9, "chosen_outcome": 1.0,
            "rejected_outcome": 0.0}  # fmt: skip
    lake.write("sft_examples", "demo", [sft], Lineage(stage="pairs"))
    lake.write("preference_pairs", "demo", [pair], Lineage(stage="pairs"))

    def export(kind: str, fmt: str) -> list[dict]:
        out = tmp_path / fmt / f"{kind}.jsonl"
        result = cli("export", kind, "--format", fmt, "--out", str(out), "--system", "SYSTEM")
        assert result.exit_code == 0, result.output
        assert f"wrote 1 rows of {'sft_examples' if kind == 'sft' else 'preference_pairs'}/demo@1" in result.output
        return [json.loads(line) for line in out.read_text().splitlines()]

    return export


def _spans(ids: list[int], keep: list[bool]) -> list[list[int]]:
    """Contiguous runs of ids where keep is true."""
    pairs = zip(ids, keep, strict=True)
    return [[token for token, _ in run] for flag, run in itertools.groupby(pairs, key=lambda pair: pair[1]) if flag]


def test_trl_sft_export_trains_only_what_the_model_wrote(exported, tiny_models, tmp_path: Path) -> None:
    import datasets
    import trl
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = exported("sft", "trl")
    messages = rows[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    search_call = messages[2]["tool_calls"][0]
    assert search_call["function"] == {"name": "search", "arguments": {"query": "capital of Zorbia"}}
    assert messages[2]["content"] == "<think> Look the capital up. </think>"
    assert messages[3] == {"role": "tool", "tool_call_id": search_call["id"], "name": "search", "content": PASSAGE}
    assert messages[4]["tool_calls"][0]["function"]["arguments"] == {"code": CODE}
    assert [tool["function"]["name"] for tool in json.loads(rows[0]["tools"])] == ["python", "search"]

    # TRL's own dataset preparation, with a real model family's template (TRL swaps in its training variant).
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    dataset = datasets.load_dataset("json", data_files=str(tmp_path / "trl" / "sft.jsonl"), split="train")
    args = SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=str(tiny_models.teacher), args=args, train_dataset=dataset, processing_class=tokenizer)
    example = trainer.train_dataset[0]
    ids = example["input_ids"]
    trained = [tokenizer.decode(run) for run in _spans(ids, [label != -100 for label in example["labels"]])]
    whole = tokenizer.decode(ids)
    assert PASSAGE in whole and OUTPUT in whole  # the tool output is in the sequence ...
    assert not any(PASSAGE in run or OUTPUT in run or "tool_response" in run for run in trained)  # ... never trained
    trained_text = "".join(trained)
    for written in ("Look the capital up.", "capital of Zorbia", "987654320 + 1", "\\boxed{9}"):
        assert written in trained_text
    assert QUESTION not in trained_text and "SYSTEM" not in trained_text


def test_trl_pairs_export_is_conversational_preference_data(exported) -> None:
    from trl.data_utils import is_conversational

    (row,) = exported("pairs", "trl")
    assert is_conversational(row)
    assert row["prompt"] == [{"role": "system", "content": "SYSTEM"}, {"role": "user", "content": QUESTION}]
    assert row["chosen"][-1]["content"].endswith("\\boxed{9} </answer>")
    assert row["rejected"][-1]["content"].endswith("\\boxed{8} </answer>")
    assert [m["role"] for m in row["chosen"]] == ["assistant", "tool", "assistant", "tool", "assistant"]


def test_openai_export_follows_the_fine_tuning_format(exported) -> None:
    (row,) = exported("sft", "openai")
    assert row["parallel_tool_calls"] is False and {t["function"]["name"] for t in row["tools"]} == {"python", "search"}
    messages = row["messages"]
    owed: dict[str, str] = {}
    for message in messages:
        if message["role"] == "assistant" and "tool_calls" in message:
            (call,) = message["tool_calls"]
            assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
            owed[call["id"]] = call["function"]["name"]
            assert json.loads(call["function"]["arguments"]) in ({"query": "capital of Zorbia"}, {"code": CODE})
        elif message["role"] == "tool":
            assert set(message) == {"role", "tool_call_id", "content"}
            assert owed.pop(message["tool_call_id"])  # answers a call made before it, once
    assert not owed
    # Tool output only in tool turns, which fine-tuning never trains on.
    for message in messages:
        if message["role"] != "tool":
            assert PASSAGE not in str(message["content"]) and OUTPUT not in str(message["content"])
    (pair,) = exported("pairs", "openai")
    assert pair["input"]["messages"][-1] == {"role": "user", "content": QUESTION}
    assert pair["preferred_output"][0]["role"] == "assistant" and "\\boxed{9}" in pair["preferred_output"][0]["content"]
    assert "\\boxed{8}" in pair["non_preferred_output"][0]["content"]


def test_sharegpt_export_alternates_human_and_gpt_with_tool_output_on_the_human_side(exported) -> None:
    (row,) = exported("sft", "sharegpt")
    turns = row["conversations"]
    assert row["id"] == "e1" and turns[0] == {"from": "system", "value": "SYSTEM"}
    # FastChat's rule: after an optional system turn, human and gpt alternate, starting with human.
    assert [turn["from"] for turn in turns[1:]] == ["human", "gpt"] * 3
    assert "".join(turn["value"] for turn in turns[2:]) == _text(_segments("9"))
    assert all(PASSAGE not in turn["value"] and OUTPUT not in turn["value"] for turn in turns if turn["from"] == "gpt")
    (pair,) = exported("pairs", "sharegpt")
    assert pair["chosen"]["from"] == pair["rejected"]["from"] == "gpt"


def _llamafactory_call(value: str) -> dict:
    """Parse a function_call turn the way LLaMA-Factory 0.9.5 does (text before <tool_call>{json}</tool_call>)."""
    match = re.search(r"<tool_call>(.*?)</tool_call>", value, re.DOTALL)
    return json.loads(match.group(1) if match else value)


def test_llamafactory_export_uses_function_call_and_observation_turns_and_registers_itself(
    exported, tmp_path: Path
) -> None:
    (row,) = exported("sft", "llamafactory")
    turns = row["conversations"]
    assert row["system"] == "SYSTEM" and json.loads(row["tools"])[0]["function"]["name"] == "python"
    assert [turn["from"] for turn in turns] == ["human", *["function_call", "observation"] * 2, "gpt"]
    assert _llamafactory_call(turns[1]["value"]) == {"name": "search", "arguments": {"query": "capital of Zorbia"}}
    assert turns[1]["value"].startswith("<think> Look the capital up. </think><tool_call>")
    assert _llamafactory_call(turns[3]["value"]) == {"name": "python", "arguments": {"code": CODE}}
    assert (turns[2]["value"], turns[4]["value"]) == (PASSAGE, OUTPUT)
    (pair,) = exported("pairs", "llamafactory")
    assert pair["conversations"] == [{"from": "human", "value": QUESTION}]
    assert pair["chosen"]["from"] == "gpt" and "\\boxed{8}" in pair["rejected"]["value"]

    info = json.loads((tmp_path / "llamafactory" / "dataset_info.json").read_text())
    assert info["sft"]["file_name"] == "sft.jsonl" and info["sft"]["formatting"] == "sharegpt"
    assert info["sft"]["columns"] == {"messages": "conversations", "system": "system", "tools": "tools"}
    assert info["pairs"]["ranking"] is True and info["pairs"]["columns"]["chosen"] == "chosen"
    assert "ranking" not in info["sft"]


def test_export_failures_are_one_line(exported, cli, lake: Lake, tmp_path: Path) -> None:
    bad = cli("export", "sft", "--format", "csv", "--out", str(tmp_path / "x.jsonl"))
    assert bad.exit_code == 2 and "unknown format 'csv'" in bad.output and not (tmp_path / "x.jsonl").exists()
    info_file = tmp_path / "llamafactory" / "dataset_info.json"
    info_file.parent.mkdir()
    info_file.write_text("[]")
    clash = cli("export", "sft", "--format", "llamafactory", "--out", str(info_file.parent / "sft.jsonl"))
    assert clash.exit_code == 2 and "is not a JSON object" in clash.output


LLAMAFACTORY = ["llamafactory==0.9.5", "omegaconf==2.3.0", "antlr4-python3-runtime==4.9.3"]


@pytest.mark.external
def test_llamafactory_loads_the_export_and_masks_observations(exported, tiny_models, tmp_path: Path) -> None:
    """LLaMA-Factory 0.9.5 itself, installed into a throwaway directory (`make test-external`)."""
    import subprocess
    import sys

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *LLAMAFACTORY]
    subprocess.run(install, check=True, timeout=600)
    # LLaMA-Factory imports torchaudio at module level for audio inputs, which these exports have none of.
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "torchaudio.py").write_text("")
    # Its declared range stops at transformers 5.6; DISABLE_VERSION_CHECK is its own switch for newer ones.
    env = {**os.environ, "PYTHONPATH": f"{site}:{tmp_path / 'stub'}", "DISABLE_VERSION_CHECK": "1"}
    exported("sft", "llamafactory")
    exported("pairs", "llamafactory")
    script = Path(__file__).parent / "external" / "llamafactory_load.py"

    def load(stage: str, name: str) -> dict:
        command = [sys.executable, str(script), str(tmp_path / "llamafactory"), str(tiny_models.tokenizer), stage, name]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.splitlines()[-1])

    sft = load("sft", "sft")
    assert sft["examples"] == 1 and PASSAGE in sft["text"] and OUTPUT in sft["text"]
    assert not any(PASSAGE in run or OUTPUT in run for run in sft["trained"])
    trained = "".join(sft["trained"])
    for written in ("Look the capital up.", '"query": "capital of Zorbia"', "987654320 + 1", "\\boxed{9}"):
        assert written in trained
    pairs = load("rm", "pairs")
    assert pairs["examples"] == 1 and "\\boxed{9}" in "".join(pairs["trained"])
