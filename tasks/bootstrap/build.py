"""Build the embedded default's models offline: a byte-level BPE tokenizer and two tiny causal LMs.

No pretrained generative model can be downloaded here, so `autotraj bootstrap` trains its own, from
scratch, on synthetic trajectories of the arithmetic task (Python) and the fictional-towns task
(search, and Python for two towns) (tasks/bootstrap/mixture.py):
- the **teacher** imitates a real teacher's spread of quality: clean tool use, hedging, verbose and
  repetitive thinking, redundant tool calls, skipping the tool and guessing a wrong number (and, once
  sampled, copying a number wrongly into its code). Like a real teacher it fails more often the harder
  the question: it is trained to guess on 5% of one-search questions, 20% of two-step and 60% of
  three-step ones (two searches and arithmetic, or three arithmetic steps), so the hard stratum is
  where repairs add examples that filtering alone cannot;
- the **repairer** reads the repair prompt (question + a bad trajectory) and writes a clean one.
Both are Llama-architecture models saved in Hugging Face format, so every later stage loads them
with `AutoModelForCausalLM.from_pretrained(path)` like any real model.

The training loop is a plain PyTorch loop: this is from-scratch pretraining of a ~0.2M-parameter model
on generated data, where TRL/Trainer machinery adds nothing but startup time.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.config import private_dir
from tasks.bootstrap import facts, mixture, synth
from tasks.core.models import bootstrap_dir
from tasks.core.prompts import load_prompt, repair_prompt
from tasks.core.tir import TAG_TOKENS

log = logging.getLogger(__name__)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
# The teacher's styles by difficulty (the problem's steps): mostly right on easy, mostly wrong on hard.
# Sampling at 0.7 sharpens these toward each stratum's most likely style, so the rates the teacher
# shows are more extreme than the ones it is trained on.
TEACHER_STYLES = {
    1: {"clean": 0.55, "hedging": 0.12, "verbose": 0.10, "redundant": 0.18, "skip_tool": 0.05},
    2: {"clean": 0.45, "hedging": 0.12, "verbose": 0.10, "redundant": 0.13, "skip_tool": 0.20},
    3: {"clean": 0.25, "hedging": 0.06, "verbose": 0.04, "redundant": 0.05, "skip_tool": 0.60},
}
# A teacher that copied a number wrongly is a source the repairer must fix by reading the question
# (or the search result), not the bad code.
REPAIR_SOURCES = {"hedging": 0.2, "verbose": 0.15, "redundant": 0.15, "skip_tool": 0.3, "miscopied": 0.2}


@dataclass(frozen=True)
class BootstrapSize:
    """How big and how long: the full build, the test build, or a seconds-long smoke build."""

    vocab_size: int = 2200  # the arithmetic task's words and numbers, and the towns' 552 names
    hidden_size: int = 64
    layers: int = 2  # two layers are enough to copy the question's numbers (an induction circuit)
    heads: int = 4
    intermediate_size: int = 170
    base_steps: int = 2400  # a clean tool user: copying numbers into code and out of results is learned here
    teacher_steps: int = 600
    repairer_steps: int = 700
    batch_size: int = 16
    learning_rate: float = 3e-3
    tokenizer_problems: int = 2000
    number_loss_weight: float = 10.0  # numbers are what the task is about and a small share of the tokens
    check_questions: int = 200  # held-out questions the build's check samples (not an input of the models)

    @classmethod
    def named(cls, name: str) -> BootstrapSize:
        """'full' (the embedded default), 'test' (the test suite's models) or 'smoke' (checks an install)."""
        if name == "full":
            return cls()
        if name == "test":
            # Shorter, yet past the step (about 1000) where the base learns to copy the question
            # into its code: the pipeline test needs some correct answers to train on.
            return cls(base_steps=1200, teacher_steps=250, repairer_steps=250)
        if name == "smoke":
            # Every step of the build in seconds; the models write little that is right.
            return cls(base_steps=120, teacher_steps=30, repairer_steps=30, check_questions=16)
        raise ValueError(f"unknown bootstrap size {name!r}; choose full, test or smoke")


def tokenizer_corpus(size: BootstrapSize, seed: int) -> list[str]:
    """The texts the tokenizer is trained on."""
    rng = random.Random(seed)
    # Every prompt the models will read, often enough that its words become whole tokens.
    repair_prompts = [load_prompt(None, f"repair.{variant}_prompt_file") for variant in ("wrong", "low_quality")]
    corpus = [_system_prompt(), *repair_prompts] * 200
    # Arithmetic trajectories whole, the towns task's wording and names without its numbers (see
    # facts.vocabulary_text).
    corpus += facts.vocabulary_text() * 200
    for problem in synth.generate(size.tokenizer_problems, seed, prefix="tok"):
        style = rng.choice(synth.STYLES)
        corpus += [problem.question, synth.trajectory_text(synth.render(problem, style, rng))]
    return corpus


def build_tokenizer(out_dir: Path, size: BootstrapSize, seed: int) -> Any:
    """Train a byte-level BPE (digits split one by one, TIR tags as whole tokens) and save it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Whole numbers stay one pre-token (GPT-2's split), so a number is the same few tokens wherever
    # it appears, and copying it from the question into code is token identity, which tiny models
    # learn fast (with one token per digit, copying shows up far later).
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(size, seed), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    wrapped.add_tokens(list(TAG_TOKENS))
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(out_dir)
    return wrapped


def check_reload(tokenizer: Any, config: Any) -> None:
    """Fail early unless a model directory holding this tokenizer reloads it token for token."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        reloaded = AutoTokenizer.from_pretrained(directory)
    problem = synth.generate(1, 0, prefix="check")[0]
    sample = _messages_text(tokenizer, problem.question) + synth.trajectory_text(
        synth.render(problem, "clean", random.Random(0))
    )
    if reloaded.encode(sample, add_special_tokens=False) != tokenizer.encode(sample, add_special_tokens=False):
        raise RuntimeError(
            f"the tokenizer reloads as {type(reloaded).__name__} and tokenizes differently from the trained one"
        )


@functools.cache
def _system_prompt() -> str:
    """The bundled system prompt the tiny models are trained to follow (read once per build)."""
    return load_prompt(None, "rollout.system_prompt_file")


def _messages_text(tokenizer: Any, user: str) -> str:
    messages = [{"role": "system", "content": _system_prompt()}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _messages_ids(tokenizer: Any, user: str) -> list[int]:
    return tokenizer.encode(_messages_text(tokenizer, user), add_special_tokens=False)


def encode_example(tokenizer: Any, user: str, segments: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt is not trained on; each segment tokenized on its own, as the engine does."""
    prompt = _messages_ids(tokenizer, user)
    completion = [token for _, text in segments for token in tokenizer.encode(text, add_special_tokens=False)]
    completion.append(tokenizer.eos_token_id)
    return prompt + completion, [-100] * len(prompt) + completion


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def base_example(tokenizer: Any, rng: random.Random) -> tuple[list[int], list[int]]:
    """A fresh problem, answered cleanly: what the base both models start from learns."""
    problem = mixture.training_problem(rng)
    return encode_example(tokenizer, problem.question, mixture.render(problem, "clean", rng))


def teacher_example(tokenizer: Any, rng: random.Random) -> tuple[list[int], list[int]]:
    """A fresh problem, answered in a style drawn from the teacher's mixture for its difficulty."""
    problem = mixture.training_problem(rng)
    style = _pick(rng, TEACHER_STYLES[problem.difficulty])
    return encode_example(tokenizer, problem.question, mixture.render(problem, style, rng))


def repairer_example(tokenizer: Any, rng: random.Random) -> tuple[list[int], list[int]]:
    """A repair prompt around a flawed trajectory, answered with a clean one."""
    problem = mixture.training_problem(rng)
    source = _pick(rng, REPAIR_SOURCES)
    bad = synth.trajectory_text(mixture.render(problem, source, rng))
    user = repair_prompt(problem.question, bad, "wrong" if source in mixture.WRONG_STYLES else "low_quality")
    return encode_example(tokenizer, user, mixture.render(problem, "clean", rng))


def model_config(tokenizer: Any, size: BootstrapSize) -> Any:
    """The tiny Llama's configuration.

    Llama rather than Qwen2: transformers loads every qwen2 model directory with Qwen2Tokenizer,
    which replaces the trained pre-tokenizer with Qwen's (one token per digit); llama directories
    keep the tokenizer they hold.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _length_grouped_batches(
    tokenizer: Any, make_example: Callable, rng: random.Random, batch_size: int, group: int = 8
) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Endless batches of fresh examples; each batch holds examples of similar length (less padding)."""
    while True:
        examples = sorted((make_example(tokenizer, rng) for _ in range(batch_size * group)), key=lambda e: len(e[0]))
        batches = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
        rng.shuffle(batches)
        yield from batches


def train_model(
    tokenizer: Any,
    make_example: Callable[[Any, random.Random], tuple[list[int], list[int]]],
    steps: int,
    size: BootstrapSize,
    seed: int,
    out_dir: Path,
    progress: Callable[[int, float], None] | None = None,
    init_from: Path | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """Train a tiny Llama (from scratch, or on from `init_from`) on fresh examples; save it; return losses."""
    import torch
    from transformers import LlamaForCausalLM, get_wsd_schedule

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = model_config(tokenizer, size)
    model = LlamaForCausalLM.from_pretrained(init_from) if init_from else LlamaForCausalLM(config)
    model.to(device)
    number_weight = torch.tensor(
        [
            size.number_loss_weight if any(c.isdigit() for c in token) else 1.0
            for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        ],
        device=device,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=size.learning_rate, weight_decay=0.01)
    # Warmup, a long stable phase (copying numbers emerges late, at full learning rate), a short decay.
    schedule = get_wsd_schedule(
        optimizer, max(1, steps // 20), num_decay_steps=max(1, steps // 5), num_training_steps=steps
    )
    model.train()
    started = time.monotonic()
    losses: list[float] = []
    batches = _length_grouped_batches(tokenizer, make_example, rng, size.batch_size)
    weighted_tokens = 0.0
    for step in range(steps):
        batch = next(batches)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, row_labels) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(row_labels)
            attention[row, : len(ids)] = 1
        input_ids, labels, attention = input_ids.to(device), labels.to(device), attention.to(device)
        hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        trained = targets != -100
        # The output layer only where there is a label: over a vocabulary of thousands it is most of a
        # step's work, and prompts (long repair prompts above all) and padding have none.
        logits = model.lm_head(hidden[trained])
        per_token = torch.nn.functional.cross_entropy(logits, targets[trained], reduction="none")
        weights = number_weight[targets[trained]]
        total = (per_token * weights).sum()
        loss = total / weights.sum()  # per token: what is reported
        # Batches are grouped by length, so divide by the mean weighted tokens per batch so far, not this
        # batch's own count: every example then weighs the same whether its batch is short or long.
        weighted_tokens += weights.sum().item()
        (total * (step + 1) / weighted_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, loss.item())
    model.eval().to("cpu")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    tail = losses[-max(1, steps // 10) :]
    return {
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "parameters": model.num_parameters(),
        "seconds": round(time.monotonic() - started, 1),
    }


# What each model trains on, in build order: (role, its examples, its steps, the model it starts from).
ROLES: tuple[tuple[str, Callable[[Any, random.Random], tuple[list[int], list[int]]], str, str | None], ...] = (
    ("base", base_example, "base_steps", None),
    ("teacher", teacher_example, "teacher_steps", "base"),
    ("repairer", repairer_example, "repairer_steps", "base"),
)


def recipe_digest(tokenizer: Any, size: BootstrapSize, seed: int) -> str:
    """A fingerprint of what a build trains on and how (sizes, tokenizer corpus, model config, the first
    examples of each model, the training loop): a cached build is reused only while it matches."""
    digest = hashlib.sha256()
    inputs = asdict(size)
    inputs.pop("check_questions")
    config = model_config(tokenizer, size).to_dict()
    config.pop("transformers_version", None)
    digest.update(json.dumps([inputs, config], sort_keys=True).encode())
    for text in tokenizer_corpus(size, seed):
        digest.update(text.encode())
    for _, make_example, _, _ in ROLES:
        rng = random.Random(seed)  # as train_model draws them
        for _ in range(32):
            digest.update(json.dumps(make_example(tokenizer, rng)).encode())
    for function in (train_model, _length_grouped_batches):
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()


@dataclass
class BootstrapResult:
    """Where the models are and what the build measured."""

    directory: str
    teacher: str
    repairer: str
    tokenizer: str
    size: str
    seconds: float
    metrics: dict[str, Any]
    built: bool  # False when the cached build was reused

    @classmethod
    def of(cls, final: Path, manifest: dict[str, Any], built: bool) -> BootstrapResult:
        """The build in `final` (paths from where it is now: a moved data directory keeps its build)."""
        paths = {name: str(final / name) for name in ("teacher", "repairer", "tokenizer")}
        return cls(str(final), **paths, size=manifest["size"], seconds=manifest["seconds"],
                   metrics=manifest["metrics"], built=built)  # fmt: skip


def bootstrap(
    data_dir: str | Path,
    size_name: str = "full",
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str, int, int, float], None] | None = None,
    evaluate: Callable[[Path, int], dict[str, Any]] | None = None,
) -> BootstrapResult:
    """Build (or reuse, while its recipe is unchanged) tokenizer, teacher and repairer under the data directory."""
    import torch
    from transformers import AutoTokenizer

    size = BootstrapSize.named(size_name)
    private_dir(data_dir)
    final = bootstrap_dir(data_dir, size_name, seed)
    manifest = final / "bootstrap.json"
    if manifest.exists() and not force:
        cached = json.loads(manifest.read_text())
        if cached.get("recipe") == recipe_digest(AutoTokenizer.from_pretrained(final / "tokenizer"), size, seed):
            return BootstrapResult.of(final, cached, built=False)
        log.warning("the bootstrap recipe changed since %s was built: building it again", final)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.monotonic()
    # Build beside the final directory and rename, so a killed build never leaves half a model.
    staging = final.with_name(final.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_tokenizer(staging / "tokenizer", size, seed)
    check_reload(tokenizer, model_config(tokenizer, size))
    metrics: dict[str, Any] = {"tokenizer_vocab": len(tokenizer)}
    # Both models start from a clean tool user (as real teachers and repairers start from one instruction
    # model): the skill of copying numbers is learned once, on clean trajectories only, where every
    # example teaches it. The teacher then learns its spread of defects, the repairer to read a repair
    # prompt and answer cleanly.
    for role, make_example, steps_field, init_from in ROLES:
        steps = getattr(size, steps_field)

        def report(step: int, loss: float, role: str = role, steps: int = steps) -> None:
            if progress is not None:
                progress(role, step, steps, loss)

        start = staging / init_from if init_from else None
        metrics[role] = train_model(tokenizer, make_example, steps, size, seed, staging / role, report, start)
    shutil.rmtree(staging / "base")  # only the start of the two models
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    if evaluate is not None:
        evaluation_started = time.monotonic()
        evaluation = evaluate(final, size.check_questions)
        metrics["evaluation"] = evaluation | {"seconds": round(time.monotonic() - evaluation_started, 1)}
    result = {
        "size": size_name,
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics | {"size": asdict(size)},
        "recipe": recipe_digest(tokenizer, size, seed),
    }
    manifest.write_text(json.dumps(result, indent=1))
    return BootstrapResult.of(final, result, built=True)
