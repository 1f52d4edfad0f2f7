"""LLM backends behind one small interface: batched continuation of token-id contexts with stop strings.

- TransformersBackend: batched `generate` with left padding and stop strings (CPU or GPU).
- Served models (tasks/generation/served.py: /v1/completions with token ids; chat.py:
  /v1/chat/completions with messages, for hosted APIs); backends.py opens the one a reference names.
- VLLMBackend: vLLM's offline engine (GPU only, `gpu` extra). Not runnable on these machines:
  kept thin and UNTESTED here.

Contexts are token ids, not text: the engine concatenates ids turn by turn and never re-tokenizes
joined text (BPE would merge across a tag boundary).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from tasks.core.hashing import stable_int

log = logging.getLogger(__name__)
Finish = Literal["stop", "eos", "length", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn."""

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    min_new_tokens: int = 0  # EOS and stop strings do not end a turn before this many tokens


@dataclass
class Generation:
    """One continuation: its ids (no EOS, no padding), text, and why it ended."""

    token_ids: list[int]
    text: str
    finish: Finish
    stop: str | None = None  # the stop string it ended on
    logprobs: list[float] | None = None
    error: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens a served model reported


class LLMBackend(Protocol):
    """What the engine needs from a model."""

    name: str
    tokenizer: Any  # a Hugging Face tokenizer: chat template, tool-segment tokenization

    def generate(
        self,
        contexts: Sequence[list[int]],
        stop: Sequence[str],
        params: SamplingParams,
        keys: Sequence[Hashable] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Continue every context until a stop string, EOS or max_new_tokens.

        `keys` name the contexts across calls (one per trajectory) for backends that can reuse work;
        `seeds` give each context its own sampling seed (every sample of a query differs, reproducibly).
        """
        ...


def load_tokenizer(path: str, local_only: bool = False) -> Any:
    """A tokenizer that left-pads and has a pad token; a clear error when `path` names none.

    `local_only`: from a directory or the Hugging Face cache only, never the network (the dry run).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"tokenizer {path!r}: not a local tokenizer directory, nor a Hugging Face model id in the local "
            f"cache ({type(exc).__name__}); name one with --tokenizer or <stage>.tokenizer"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def finish_generation(tokenizer: Any, ids: list[int], stop: Sequence[str], ended_by_eos: bool) -> Generation:
    """Name why a continuation ended, from its ids (EOS already removed)."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    hits = [(text.find(s), s) for s in stop if s in text]
    if hits:
        _, matched = min(hits)
        return Generation(ids, text, "stop", matched)
    return Generation(ids, text, "eos" if ended_by_eos else "length")


class TransformersBackend:
    """Hugging Face transformers: one batched `generate` per call, left padding, stop strings."""

    def __init__(self, model_path: str, batch_size: int = 64, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self._attach(model, load_tokenizer(model_path), model_path, batch_size)

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, name: str, batch_size: int = 64) -> TransformersBackend:
        """A backend over a model already in memory (GRPO generates with the policy it is training)."""
        backend = cls.__new__(cls)
        backend._attach(model, tokenizer, name, batch_size)
        return backend

    def _attach(self, model: Any, tokenizer: Any, name: str, batch_size: int) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.batch_size = batch_size
        self._kept: dict[Hashable, tuple[_KeptBatch, int]] = {}
        self.continued_rows = 0  # contexts that went on from a kept KV cache
        # Set by the completions server for the request it runs: generation stops at the next token
        # once the event is set (its client has gone).
        self.cancel: threading.Event | None = None

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def generate(
        self,
        contexts: Sequence[list[int]],
        stop: Sequence[str],
        params: SamplingParams,
        keys: Sequence[Hashable] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Continue the contexts in batches of `batch_size`.

        With `keys` (one per context, stable across calls: the engine passes its trajectories), a
        context that extends what the last call generated under the same key continues from that
        batch's KV cache, so a turn re-encodes only the tool result instead of the whole context.
        Each row samples from its own generator, seeded by its `seeds` entry, so what a context
        samples does not depend on which other contexts share its batch (sharding, resumes, actors).
        """
        previous, self._kept = self._kept, {}
        results: list[Generation | None] = [None] * len(contexts)
        fresh: list[int] = []
        continuing: dict[int, list[tuple[int, int]]] = {}  # kept batch -> (context index, row)
        for index, context in enumerate(contexts):
            kept = previous.get(keys[index]) if keys is not None else None
            if kept is not None:
                batch, row = kept
                known = batch.tokens[row]
                if len(context) > len(known) and context[: len(known)] == known:
                    continuing.setdefault(id(batch), []).append((index, row))
                    continue
            fresh.append(index)
        batches = {id(batch): batch for batch, _ in previous.values()}
        for batch_id, members in continuing.items():
            indices = [index for index, _ in members]
            self.continued_rows += len(indices)
            inputs = batches[batch_id].extend([row for _, row in members], [contexts[i] for i in indices], self)
            for index, generation in zip(
                indices,
                self._run(
                    inputs,
                    [contexts[i] for i in indices],
                    stop,
                    params,
                    _row_seeds(params, seeds, indices),
                    keys and [keys[i] for i in indices],
                ),
                strict=True,
            ):
                results[index] = generation
        for start in range(0, len(fresh), self.batch_size):
            indices = fresh[start : start + self.batch_size]
            chunk = [contexts[i] for i in indices]
            for index, generation in zip(
                indices,
                self._run(
                    self._left_padded(chunk),
                    chunk,
                    stop,
                    params,
                    _row_seeds(params, seeds, indices),
                    keys and [keys[i] for i in indices],
                ),
                strict=True,
            ):
                results[index] = generation
        return [generation for generation in results if generation is not None]

    def forget(self) -> None:
        """Drop the kept KV caches (the engine calls this when its trajectories are done)."""
        self._kept = {}

    def _left_padded(self, contexts: Sequence[list[int]]) -> tuple[Any, Any, Any]:
        import torch

        width = max(len(ids) for ids in contexts)
        input_ids = torch.full((len(contexts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        return input_ids.to(self.device), attention.to(self.device), None

    def _run(
        self,
        inputs: tuple[Any, Any, Any],
        contexts: Sequence[list[int]],
        stop: Sequence[str],
        params: SamplingParams,
        seeds: list[int] | None,
        keys: Sequence[Hashable] | None,
    ) -> list[Generation]:
        """One generate call over a prepared batch (ids, mask, cache or None); keep its cache by key."""
        import torch

        input_ids, attention, cache = inputs
        width = input_ids.shape[1]
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        if params.temperature <= 0:
            sampling: dict[str, Any] = {"do_sample": False}
        elif seeds is None:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        else:  # greedy over Gumbel-perturbed scores is sampling, with noise drawn per row
            sampling = {"do_sample": False, "logits_processor": row_sampler(params, seeds, self.device)}
        # Stop strings that are single tokens (the bootstrap tokenizer's tags) stop on token ids, which
        # is much cheaper per step than matching strings; anything else goes through stop_strings.
        stop_ids = [self._single_token(s) for s in stop]
        by_id = all(token is not None for token in stop_ids)
        stopping = (
            {"eos_token_id": [eos, *stop_ids]} if by_id else {"eos_token_id": eos, "stop_strings": list(stop) or None}
        )
        extra: dict[str, Any] = {"min_new_tokens": params.min_new_tokens} if params.min_new_tokens else {}
        if self.cancel is not None:
            extra["stopping_criteria"] = [_stop_when_set(self.cancel)]
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                past_key_values=cache,
                max_new_tokens=params.max_new_tokens,
                tokenizer=self.tokenizer,
                pad_token_id=pad,
                **stopping,
                return_dict_in_generate=True,
                output_logits=params.logprobs,
                **sampling,
                **extra,
            )
        new_tokens = output.sequences[:, width:].tolist()
        stop_set = {token for token in stop_ids if token is not None} if by_id else set()
        results = []
        for row, ids in enumerate(new_tokens):
            ended_by_eos = eos in ids
            ids = ids[: ids.index(eos)] if ended_by_eos else ids
            cut = next((position for position, token in enumerate(ids) if token in stop_set), None)
            if cut is not None:  # keep the stop token itself; what follows is padding
                ids, ended_by_eos = ids[: cut + 1], False
            while ids and ids[-1] == pad and not ended_by_eos and pad != eos:
                ids = ids[:-1]  # a row that stopped early is padded to the batch's length
            generation = finish_generation(self.tokenizer, ids, stop, ended_by_eos)
            if params.logprobs:
                logits = torch.stack([step[row] for step in output.logits[: len(ids)]]).float()
                chosen = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids).unsqueeze(1))
                generation.logprobs = chosen.squeeze(1).tolist()
            results.append(generation)
        kept_cache = output.past_key_values
        if keys is not None and kept_cache is not None and kept_cache.get_seq_length() == output.sequences.shape[1] - 1:
            generated_mask = torch.zeros_like(output.sequences[:, width:])
            for row, generation in enumerate(results):
                generated_mask[row, : len(generation.token_ids)] = 1
            batch = _KeptBatch(
                output.sequences,
                torch.cat([attention, generated_mask], dim=1),
                kept_cache,
                [list(context) + generation.token_ids for context, generation in zip(contexts, results, strict=True)],
            )
            self._kept.update((key, (batch, row)) for row, key in enumerate(keys))
        return results


@dataclass
class _KeptBatch:
    """A finished batch's token layout and KV cache, kept so its rows' next turn re-encodes only what is new."""

    sequences: Any  # (rows, width): left pads, context, generated ids, trailing pads
    mask: Any  # 1 on real tokens, 0 on every pad
    cache: Any  # the KV cache over every column but the last
    tokens: list[list[int]]  # each row's real tokens: its context and the ids it kept

    def extend(
        self, rows: list[int], contexts: Sequence[list[int]], backend: TransformersBackend
    ) -> tuple[Any, Any, Any]:
        """Inputs that continue `rows` with their new tokens (left-padded after the kept layout) and the cache."""
        import torch

        index = torch.tensor(rows, device=self.sequences.device)
        self.cache.batch_select_indices(index)
        suffixes = [context[len(self.tokens[row]) :] for row, context in zip(rows, contexts, strict=True)]
        width = max(len(suffix) for suffix in suffixes)
        extra = torch.full((len(rows), width), backend.tokenizer.pad_token_id, dtype=torch.long)
        extra_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, suffix in enumerate(suffixes):
            extra[row, width - len(suffix) :] = torch.tensor(suffix)
            extra_mask[row, width - len(suffix) :] = 1
        device = self.sequences.device
        input_ids = torch.cat([self.sequences[index], extra.to(device)], dim=1)
        attention = torch.cat([self.mask[index], extra_mask.to(device)], dim=1)
        return input_ids, attention, self.cache


class VLLMBackend:
    """vLLM's offline engine. UNTESTED here (no GPU on these machines); needs the `gpu` extra."""

    def __init__(self, model_path: str, **engine_args: Any):
        from vllm import LLM  # lazy: the CPU install has no vllm

        self.name = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.llm = LLM(model=model_path, **engine_args)

    @classmethod
    def wrap(cls, llm: Any, tokenizer: Any, name: str) -> VLLMBackend:
        """A backend over a running vLLM engine (GRPO's colocated engine, which TRL keeps in sync)."""
        backend = cls.__new__(cls)
        backend.name, backend.tokenizer, backend.llm = name, tokenizer, llm
        return backend

    def generate(
        self,
        contexts: Sequence[list[int]],
        stop: Sequence[str],
        params: SamplingParams,
        keys: Sequence[Hashable] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One engine call for the whole batch, a seed per context (vLLM's prefix cache makes `keys`
        unnecessary)."""
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        sampling = [
            VLLMSampling(
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=seeded(params, seeds, index).seed,
                stop=list(stop),
                include_stop_str_in_output=True,
                logprobs=0 if params.logprobs else None,
            )
            for index in range(len(contexts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in contexts], sampling)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = [i for i in completion.token_ids if i != self.tokenizer.eos_token_id]
            generation = finish_generation(self.tokenizer, ids, stop, completion.finish_reason == "stop")
            if completion.finish_reason == "length":
                generation.finish = "length"
            if params.logprobs and completion.logprobs:
                generation.logprobs = [step[i].logprob for step, i in zip(completion.logprobs, ids, strict=False)]
            results.append(generation)
        return results


def _stop_when_set(event: threading.Event) -> Any:
    """A transformers stopping criterion that ends every row once `event` is set."""
    import torch
    from transformers import StoppingCriteria

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **_kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopWhenSet()


def seeded(params: SamplingParams, seeds: Sequence[int] | None, index: int) -> SamplingParams:
    """`params` with the seed of one context (its own, when `seeds` gives one)."""
    return params if seeds is None else replace(params, seed=seeds[index])


def _row_seeds(params: SamplingParams, seeds: Sequence[int] | None, indices: Sequence[int]) -> list[int] | None:
    """The sampling seed of each of these contexts: its own, else one from `params.seed` and its position
    (a single context takes `params.seed` itself, as a served request does), else None (unseeded)."""
    if seeds is not None:
        return [seeds[i] for i in indices]
    if params.seed is None:
        return None
    return [params.seed] if len(indices) == 1 else [stable_int(params.seed, i) for i in indices]


def row_sampler(params: SamplingParams, seeds: list[int], device: Any) -> Any:
    """Logits processors that sample each row with its own generator: temperature, top-p, then Gumbel
    noise, so the greedy pick is a sample from the tempered, truncated distribution (Gumbel-max).

    transformers' sampler draws one multinomial for the whole batch from the global generator, so a
    row's tokens would depend on its batch neighbours; this is the one piece it has no option for.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    class RowGumbel(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            noise = torch.stack(
                [torch.rand(scores.shape[1], generator=g, device=device, dtype=torch.float32) for g in generators]
            )
            gumbel = -torch.log(-torch.log(noise.clamp_min(torch.finfo(torch.float32).tiny)))
            return scores + gumbel.to(scores.dtype)

    processors = [TemperatureLogitsWarper(params.temperature)]
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    return LogitsProcessorList([*processors, RowGumbel()])
