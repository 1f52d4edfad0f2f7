"""SFT: labels cover exactly the model-written tokens, the loss falls, and the policy is registered."""

from __future__ import annotations

import random
from pathlib import Path

from schemas.config import load_config
from schemas.lake import Lake, Lineage
from tasks.bootstrap import synth
from tasks.core.prompts import Prompts, encode_prompt
from tasks.training.features import IGNORE, sft_features
from tests.conftest import run_stage_here


def _segments(problem: synth.Problem, style: str = "clean") -> list[dict]:
    rendered = synth.render(problem, style, random.Random(0))
    return [{"kind": "model" if kind == "model" else "tool", "tool": None if kind == "model" else kind, "text": text,
             "token_ids": [], "n_tokens": 0} for kind, text in rendered]  # fmt: skip


def test_labels_are_ignored_exactly_on_prompt_and_tool_tokens(tiny_models) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.teacher)
    system = Prompts.from_config().system
    problem = synth.generate(1, seed=8)[0]
    segments = _segments(problem)
    features = sft_features(tokenizer, system, problem.question, segments)
    ids, labels = features["input_ids"], features["labels"]
    _, prompt_ids = encode_prompt(tokenizer, system, problem.question)
    assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {IGNORE}
    position = len(prompt_ids)
    for segment in segments:
        expected = tokenizer.encode(segment["text"], add_special_tokens=False)
        assert ids[position : position + len(expected)] == expected  # each segment tokenized on its own
        if segment["kind"] == "tool":
            assert set(labels[position : position + len(expected)]) == {IGNORE}
        else:
            assert labels[position : position + len(expected)] == expected
        position += len(expected)
    assert ids[position:] == labels[position:] == [tokenizer.eos_token_id]
    trained = [token for token in labels if token != IGNORE][:-1]
    assert tokenizer.decode(trained) == "".join(s["text"] for s in segments if s["kind"] == "model")
    assert "<result>" not in tokenizer.decode(trained)


def test_sft_trains_as_a_ray_job_registers_and_is_not_repeated(tiny_models, lake: Lake, home: Path, local_ray) -> None:
    problems = synth.generate(16, seed=9, prefix="sft")
    rows = [
        {"example_id": f"s{i}", "query_id": p.id, "origin": "repair", "source_id": f"r{i}", "prompt": p.question,
         "segments": _segments(p), "quality": 1.0}
        for i, p in enumerate(problems)
    ]  # fmt: skip
    lake.write("sft_examples", "tiny", rows, Lineage("pairs"))
    overrides = ["sft.learning_rate=0.003", "sft.batch_size=4", "sft.num_epochs=3"]
    assert load_config("cpu", overrides).runtime.train_dispatch == "ray"
    seen: list[tuple[int, int, str]] = []
    from flows.stage import STAGES, run_stage

    arguments = {"examples": "sft_examples/tiny", "name": "tiny", "base": tiny_models.teacher}
    result = run_stage(STAGES["sft"], arguments, "cpu", overrides, progress=lambda *update: seen.append(update))
    assert [step for step, _, _ in seen] == list(range(1, 13)) and seen[-1][2].startswith("loss ")  # via a Ray queue
    metrics = result.metrics
    assert metrics["examples"] == 16 and metrics["steps"] == 12 and metrics["too_long"] == 0
    assert metrics["final_loss"] < metrics["first_loss"]
    from transformers import AutoModelForCausalLM

    model_row = lake.read("models/tiny").to_pylist()[0]
    assert model_row["model_id"] == result.outputs["model"] and model_row["kind"] == "policy"
    assert model_row["base_model"] == tiny_models.teacher
    AutoModelForCausalLM.from_pretrained(model_row["path"])
    assert lake.resolve("models/tiny").input_versions == (lake.resolve("sft_examples/tiny").version_id,)
    losses = [r for r in lake.read("train_metrics/tiny").to_pylist() if r["name"] == "loss"]
    assert [r["step"] for r in losses] == list(range(1, 13))
    assert list(Path(model_row["path"]).parent.rglob("events.out.tfevents.*"))
    again = run_stage_here("sft", overrides, **arguments)
    assert again.outputs["model"] == result.outputs["model"] and "already trained" in again.summary.title
    assert len(lake.versions("models", "tiny")) == 1


def test_a_permanent_error_comes_back_from_a_ray_job_as_itself(tiny_models, lake: Lake, local_ray) -> None:
    import pytest

    from flows.stage import transient_failure
    from tasks.core.errors import StageInputError

    lake.write("sft_examples", "empty", [], Lineage("pairs"))
    with pytest.raises(StageInputError, match=r"sft_examples/empty@1 has no example to train on: it is empty") as error:
        run_stage_here("sft", [], examples="empty", base=tiny_models.teacher)  # dispatched as a Ray Train job

    class State:  # what Prefect's retry condition reads
        def result(self, raise_on_failure: bool = False) -> BaseException:
            return error.value

    assert transient_failure(None, None, State()) is False  # not retried
