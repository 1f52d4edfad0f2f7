"""The offline tiny models: they load like any Hugging Face model and meet the test-size targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import load_config
from tasks.bootstrap.build import bootstrap, check_reload
from tasks.bootstrap.check import evaluate_build
from tasks.core.tir import TAG_TOKENS


def test_models_load_like_any_hugging_face_model(tiny_models) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    for tag in TAG_TOKENS:  # whole tokens, so stopping at </code> is exact
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    for path in (tiny_models.teacher, tiny_models.repairer):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    figures = tiny_models.metrics
    assert figures["base"]["final_loss"] < figures["base"]["first_loss"] / 2  # it learned, from scratch
    for role in ("teacher", "repairer"):  # then each learned its own part, from the base
        assert figures[role]["final_loss"] < figures[role]["first_loss"]


def test_model_directories_reload_the_trained_tokenizer_exactly(tiny_models) -> None:
    from transformers import AutoTokenizer, Qwen2Config

    trained = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    text = "<|im_start|>user\nA farm collects 11494 eggs.<|im_end|>\n<code>\nprint(11494 // 12)\n</code>"
    for path in (tiny_models.teacher, tiny_models.repairer):
        assert AutoTokenizer.from_pretrained(path).encode(text) == trained.encode(text)
    # The guard behind it: in a qwen2 directory transformers swaps in Qwen2Tokenizer (one token per digit).
    with pytest.raises(RuntimeError, match="tokenizes differently"):
        check_reload(trained, Qwen2Config(vocab_size=len(trained)))


def test_build_is_cached(tiny_models) -> None:
    again = bootstrap(tiny_models.directory.rsplit("/models/", 1)[0], "test", seed=0)
    assert not again.built and again.teacher == tiny_models.teacher and again.metrics == tiny_models.metrics


def test_test_size_build_writes_the_grammar_with_the_teacher_defects(tiny_models, home: Path, capsys) -> None:
    # The test size writes the grammar, searches the towns' corpus, shows the common defects and answers
    # some questions right (the pipeline test trains on those); the correctness targets and the rarest
    # defect (a redundant call, about 1 in 200 sampled answers) need the full size (README: the main job).
    # The check `autotraj bootstrap` ran after the build (the suite's background build is that command),
    # else the same check here on fewer questions.
    figures = tiny_models.metrics.get("evaluation") or evaluate_build(
        Path(tiny_models.directory), load_config("cpu"), questions=64
    )
    assert figures["teacher_searched"] > 0
    with capsys.disabled():
        for model, figure, value, target in figures["rows"]:
            print(f"\n  bootstrap (test size) {model:8} {figure:22} {value:>5}  target {target}", end="")
    # Floors, not the full size's targets: the test-size repairer (250 steps) writes a valid answer to
    # about three in four repair prompts (75% of 200 in the build's check).
    assert figures["teacher_format_valid"] >= 0.8 and figures["repairer_format_valid"] >= 0.7
    defects = figures["teacher_defects"]
    assert defects["hedging"] > 0 and defects["repetitive"] > 0 and defects["skipped_tool"] > 0
    assert figures["teacher_correct"] > 0 and figures["repairer_correct"] > figures["teacher_correct"]
    assert figures["targets_met"] is (
        figures["teacher_format_valid"] >= 0.8
        and 0.3 <= figures["teacher_correct"] <= 0.8
        and figures["teacher_correct_easy"] > figures["teacher_correct_hard"]
        and figures["teacher_searched"] > 0
        and figures["repairer_format_valid"] >= 0.9
        and figures["repairer_correct"] >= 0.7
    )
