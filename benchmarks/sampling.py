"""What per-row sampling costs: each row's own generator (Gumbel-max) vs transformers' batch sampler.

Per-row sampling makes a trajectory's tokens independent of its batch (sharding, resumes, actors);
transformers' sampler draws one multinomial for the whole batch from the global generator. Measured
in the same run:
  (a) generate on the tiny teacher (bootstrap build), a batch of 64 prompts, 200 new tokens at 0.7:
      transformers' `do_sample` vs the per-row sampler, tokens/s;
  (b) the sampling step alone at a real vocabulary (151,936, Qwen2.5's), batch 64: softmax +
      multinomial vs temperature + 64 generators' uniform noise + argmax, ms per step.
The last line is JSON; `ratio` is (a)'s per-row / batch throughput (1.0 = free).

usage: python benchmarks/sampling.py [--batch 64] [--tokens 200] [--vocab 151936] [--repeats 3] [--size full]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from schemas.config import load_config
from tasks.bootstrap import synth
from tasks.bootstrap.build import bootstrap
from tasks.core.prompts import Prompts, encode_prompt
from tasks.generation.llm import SamplingParams, TransformersBackend, row_sampler


def _generate_rate(backend: TransformersBackend, contexts: list[list[int]], tokens: int, per_row: bool) -> float:
    """New tokens per second of one batched generate call (no stop strings: every row runs `tokens`)."""
    params = SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.7, seed=1)
    seeds = list(range(len(contexts))) if per_row else None
    started = time.perf_counter()
    generations = backend.generate(contexts, [], params, seeds=seeds)
    elapsed = time.perf_counter() - started
    return sum(len(generation.token_ids) for generation in generations) / elapsed


def _step_ms(batch: int, vocab: int, per_row: bool, steps: int = 20) -> float:
    """Milliseconds per sampling step over (batch, vocab) scores."""
    scores = torch.randn(batch, vocab)
    processors = row_sampler(SamplingParams(temperature=0.7), list(range(batch)), scores.device)
    started = time.perf_counter()
    for _ in range(steps):
        if per_row:
            processors(None, scores).argmax(dim=-1)
        else:
            torch.multinomial(torch.softmax(scores / 0.7, dim=-1), num_samples=1)
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    """Measure both ways, alternating, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="full", help="bootstrap build to use (full, or test: quicker to build)")
    args = parser.parse_args()
    models = bootstrap(load_config().runtime.data_dir, args.size)
    backend = TransformersBackend(models.teacher, batch_size=args.batch)
    prompts = Prompts.from_config()
    contexts = [encode_prompt(backend.tokenizer, prompts.system, p.question)[1]
                for p in synth.generate(args.batch, seed=9, prefix="bench")]  # fmt: skip
    _generate_rate(backend, contexts[:4], 8, per_row=True)  # warm up
    batch_rates, row_rates = [], []
    for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits both alike
        batch_rates.append(_generate_rate(backend, contexts, args.tokens, per_row=False))
        row_rates.append(_generate_rate(backend, contexts, args.tokens, per_row=True))
    batch_rate, row_rate = statistics.median(batch_rates), statistics.median(row_rates)
    batch_step = statistics.median(_step_ms(args.batch, args.vocab, per_row=False) for _ in range(args.repeats))
    row_step = statistics.median(_step_ms(args.batch, args.vocab, per_row=True) for _ in range(args.repeats))
    print(
        f"(a) tiny teacher, batch {args.batch} x {args.tokens} tokens at 0.7: transformers' sampler "
        f"{batch_rate:,.0f} tokens/s, per-row sampler {row_rate:,.0f} tokens/s ({row_rate / batch_rate:.2f}x)"
    )
    print(f"(b) one sampling step, batch {args.batch} x vocab {args.vocab:,}: multinomial {batch_step:.1f} ms, "
          f"per-row Gumbel {row_step:.1f} ms ({row_step / batch_step:.2f}x)")  # fmt: skip
    figures = {"ratio": round(row_rate / batch_rate, 3), "batch_tokens_per_s": round(batch_rate),
               "per_row_tokens_per_s": round(row_rate), "step_ms_multinomial": round(batch_step, 2),
               "step_ms_per_row": round(row_step, 2), "step_ratio": round(row_step / batch_step, 2)}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
