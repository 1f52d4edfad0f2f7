"""The offline tiny models: they load like any Hugging Face model and meet the test-size targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from schemas.config import load_config
from tasks.bootstrap.build import bootstrap, check_reload
from tasks.bootstrap.check import evaluate_build
from tasks.core.models import bootstrap_dir
from tasks.core.tir import TAG_TOKENS


def test_the_committed_test_models_are_what_the_current_recipe_builds(tiny_models) -> None:
    # Else the suite rebuilt them in this session: the tests below ran on fresh models, but the commit's
    # models are stale.
    assert not tiny_models.built, "tests/fixtures/models is stale: run `make test-models` and commit it"


def test_models_load_like_any_hugging_face_model(tiny_models) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    for tag in TAG_TOKENS:  # whole tokens, so stopping at </code> is exact
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    for path in (tiny_models.teacher, tiny_models.repairer):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)


def test_model_directories_reload_the_trained_tokenizer_exactly(tiny_models) -> None:
    from transformers import AutoTokenizer, Qwen2Config

    trained = AutoTokenizer.from_pretrained(tiny_models.tokenizer)
    text = "<|im_start|>user\nA farm collects 11494 eggs.<|im_end|>\n<code>\nprint(11494 // 12)\n</code>"
    for path in (tiny_models.teacher, tiny_models.repairer):
        assert AutoTokenizer.from_pretrained(path).encode(text) == trained.encode(text)
    # The guard behind it: in a qwen2 directory transformers swaps in Qwen2Tokenizer (one token per digit).
    with pytest.raises(RuntimeError, match="tokenizes differently"):
        check_reload(trained, Qwen2Config(vocab_size=len(trained)))


def test_bootstrap_command_builds_checks_and_reuses_its_build_until_the_recipe_changes(
    cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    built = cli("bootstrap", "--size", "smoke")  # every step of the build, in seconds
    directory = bootstrap_dir(home, "smoke")
    assert built.exit_code == 0 and f"built {directory}" in built.output.replace("\n", "")
    assert "held-out synthetic questions" in built.output and "repairer" in built.output
    manifest = json.loads((directory / "bootstrap.json").read_text())
    figures = manifest["metrics"]
    assert figures["base"]["final_loss"] < figures["base"]["first_loss"] / 2  # it learned, from scratch
    for role in ("teacher", "repairer"):  # then each learned its own part, from the base
        assert figures[role]["final_loss"] < figures[role]["first_loss"]
        assert AutoModelForCausalLM.from_pretrained(directory / role).config.model_type == "llama"
    assert len(figures["evaluation"]["rows"]) > 8 and figures["evaluation"]["teacher_format_valid"] >= 0

    # Reused, from wherever the data directory has moved to.
    moved = tmp_path / "moved"
    shutil.move(home, moved)
    monkeypatch.setenv("AUTOTRAJ_HOME", str(moved))
    reused = cli("bootstrap", "--size", "smoke")
    assert reused.exit_code == 0 and "reused" in reused.output
    again = bootstrap(moved, "smoke")
    assert not again.built and again.teacher == str(bootstrap_dir(moved, "smoke") / "teacher")
    assert again.metrics == figures

    # A build from another recipe is built again; interrupted, it leaves the old build in place.
    manifest["recipe"] = "an older recipe"
    (bootstrap_dir(moved, "smoke") / "bootstrap.json").write_text(json.dumps(manifest))
    started: list[str] = []

    def interrupt(role: str, step: int, steps: int, loss: float) -> None:
        started.append(role)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bootstrap(moved, "smoke", progress=interrupt)
    assert started == ["base"] and (bootstrap_dir(moved, "smoke") / "teacher" / "model.safetensors").exists()


def test_test_size_build_writes_the_grammar_with_the_teacher_defects(tiny_models, home: Path, capsys) -> None:
    # The test size writes the grammar, searches the towns' corpus, shows the common defects and answers
    # some questions right (the pipeline test trains on those); the correctness targets and the rarest
    # defect (a redundant call, about 1 in 200 sampled answers) need the full size (README: the main job).
    # The build's own check, with the current code, on 64 of its 200 questions.
    figures = evaluate_build(Path(tiny_models.directory), load_config("cpu"), questions=64)
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
