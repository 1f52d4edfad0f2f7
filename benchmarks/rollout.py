"""Rollout throughput: this engine vs one trajectory at a time, and vs the backend's ceiling.

Same tiny teacher (the bootstrap build), same queries, greedy decoding, real Python tool:
  (a) sequential: one trajectory at a time, one generate call per turn over the whole context
      (the paper's scripts);
  (b) this engine: every trajectory advances together, one batched generate call per turn, each
      turn going on from the KV cache the previous turn left;
  (c) ceiling: one single-pass batched generate of the same number of tokens, no tools, no stops.
Prints trajectories/s for (a) and (b), their ratio, and (b)/(c); the last line is JSON.

usage: python benchmarks/rollout.py [--queries 64] [--samples 4] [--sequential 24] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from schemas.config import load_config
from tasks.bootstrap import synth
from tasks.bootstrap.build import bootstrap
from tasks.core.prompts import Prompts, encode_prompt
from tasks.generation.engine import EngineLimits, RolloutEngine, Trajectory
from tasks.generation.llm import SamplingParams, TransformersBackend
from tasks.generation.tools import ToolRunner
from tools_sandbox.executor import SandboxPool

TARGET_SPEEDUP = 10.0
TARGET_CEILING = 0.7


def trajectories(backend: TransformersBackend, problems: list[synth.Problem], samples: int) -> list[Trajectory]:
    """Fresh trajectories: `samples` per problem."""
    prompts = Prompts.from_config()
    result = []
    for problem in problems:
        text, ids = encode_prompt(backend.tokenizer, prompts.system, problem.question)
        result += [Trajectory(problem.id, sample, text, ids) for sample in range(samples)]
    return result


class ReencodingBackend:
    """The backend as the paper's scripts use it: every turn re-encodes the whole context."""

    def __init__(self, backend: TransformersBackend):
        self.backend, self.tokenizer, self.name = backend, backend.tokenizer, backend.name

    def generate(self, contexts, stop, params, keys=None):
        """Generate without keys, so nothing is carried from one turn to the next."""
        return self.backend.generate(contexts, stop, params)


def main() -> None:
    """Measure (a), (b) and (c) in one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=24, help="trajectories timed one at a time for (a)")
    parser.add_argument("--batch", type=int, default=128, help="generate batch size for (b) and (c)")
    args = parser.parse_args()

    config = load_config("cpu")
    build = bootstrap(config.runtime.data_dir)
    backend = TransformersBackend(build.teacher, batch_size=args.batch)
    problems = synth.generate(args.queries, seed=4242, prefix="bench")
    greedy = SamplingParams(temperature=0.0)
    limits = EngineLimits(max_new_tokens_per_turn=256)
    with SandboxPool(config.tools.python) as pool:
        runner = ToolRunner(pool, None, config.tools.max_result_chars)
        engine = RolloutEngine(backend, runner, limits)
        engine.run(trajectories(backend, problems[:2], 1), greedy)  # warm-up

        batch = trajectories(backend, problems, args.samples)
        started = time.perf_counter()
        engine.run(batch, greedy)
        engine_seconds = time.perf_counter() - started

        one_by_one = trajectories(backend, problems, 1)[: args.sequential]
        started = time.perf_counter()
        for trajectory in one_by_one:
            RolloutEngine(ReencodingBackend(backend), runner, limits).run([trajectory], greedy)
        sequential_seconds = time.perf_counter() - started
        runner.close()

    completion_tokens = sum(len(t.completion_ids) for t in batch)
    mean_tokens = max(1, round(completion_tokens / len(batch)))
    contexts = [t.prompt_ids for t in batch]
    started = time.perf_counter()
    for start in range(0, len(contexts), args.batch):
        chunk = contexts[start : start + args.batch]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), backend.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, context in enumerate(chunk):
            ids[row, width - len(context) :] = torch.tensor(context)
            mask[row, width - len(context) :] = 1
        with torch.inference_mode():
            backend.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=mean_tokens,
                min_new_tokens=mean_tokens,
                do_sample=False,
                pad_token_id=backend.tokenizer.pad_token_id,
            )
    ceiling_seconds = time.perf_counter() - started

    engine_rate = len(batch) / engine_seconds
    sequential_rate = len(one_by_one) / sequential_seconds
    ceiling_rate = len(batch) / ceiling_seconds
    figures = {
        "trajectories": len(batch),
        "mean_completion_tokens": mean_tokens,
        "engine_trajectories_per_s": round(engine_rate, 2),
        "sequential_trajectories_per_s": round(sequential_rate, 3),
        "ceiling_trajectories_per_s": round(ceiling_rate, 2),
        "ratio": round(engine_rate / sequential_rate, 1),
        "ceiling_ratio": round(engine_rate / ceiling_rate, 2),
        "tool_calls": sum(t.num_tool_calls for t in batch),
        "target": {"ratio": TARGET_SPEEDUP, "ceiling_ratio": TARGET_CEILING},
    }
    print(f"{len(batch)} trajectories ({args.queries} queries x {args.samples}), greedy, {mean_tokens} tokens each")
    print(f"(a) one at a time: {sequential_rate:.3f} trajectories/s (timed on {len(one_by_one)})")
    print(f"(b) this engine:   {engine_rate:.2f} trajectories/s, {figures['ratio']}x (a) (target {TARGET_SPEEDUP}x)")
    ceiling = figures["ceiling_ratio"]
    print(f"(c) ceiling:       {ceiling_rate:.2f} trajectories/s; (b)/(c) = {ceiling} (target {TARGET_CEILING})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
