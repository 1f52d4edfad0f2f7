"""The learning result on the synthetic task: what repair and the trajectory reward model add, over seeds.

Runs the main job's pipeline (`autotraj pipeline`, cpu profile: rollout, score, repair, pairs, SFT on
high-quality data only and on high-quality + repaired data, reward model, GRPO with and without the
RM bonus, evaluation) once per seed in a fresh data directory. Each seed draws its own training and
held-out questions and seeds every sampler and trainer; the tiny teacher and repairer are copied from
the existing build (AUTOTRAJ_HOME, default ./.autotraj; built first if absent, not timed). For each
seed and pooled over seeds (every held-out question one pair) it prints the paired differences, with
95% paired-bootstrap intervals and permutation p-values:
- SFT (HQ + repaired) − SFT (HQ only): accuracy, over all questions and on the hard stratum (difficulty 3:
  three arithmetic steps, or two searches and an operation);
- GRPO (RM bonus) − GRPO (outcome only): accuracy, mean quality and length.
The last line is JSON with those figures and whether each target holds.

usage: python benchmarks/learning.py [--seeds 1,2,3] [--questions 300] [--test-questions 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import defaultdict
from typing import Any

from data_home import AUTOTRAJ, fresh_data_dir, search_corpus_override, synth_queries

from flows.pipeline import ROLES
from schemas.config import load_config
from schemas.lake import Lake
from tasks.scoring.evaluation import paired_values, subsets_of
from tasks.scoring.statistics import paired_difference
from tasks.stages.evaluate import score_evaluation

TEACHER, HQ_ONLY, REPAIRED, OUTCOME_ONLY, RM_BONUS = ROLES
HARD = "difficulty=3"
# (name, model a, model b, metric, subset): each reported as b − a.
COMPARISONS = (
    ("repair_accuracy", HQ_ONLY, REPAIRED, "accuracy", "all"),
    ("repair_accuracy_hard", HQ_ONLY, REPAIRED, "accuracy", HARD),
    ("rm_accuracy", OUTCOME_ONLY, RM_BONUS, "accuracy", "all"),
    ("rm_quality", OUTCOME_ONLY, RM_BONUS, "mean_quality", "all"),
    ("rm_length", OUTCOME_ONLY, RM_BONUS, "mean_tokens", "all"),
)
SEEDED = ("rollout.seed", "sft.seed", "reward_model.seed", "grpo.seed")


def run_seed(seed: int, questions: int, test_questions: int) -> str:
    """One pipeline run; returns its eval_results version id."""
    train, test = synth_queries(questions, seed), synth_queries(test_questions, 777 + seed)
    overrides = [item for key in SEEDED for item in ("--set", f"{key}={seed}")] + ["--set", search_corpus_override()]
    command = [*AUTOTRAJ, *overrides, "pipeline", train, "--test-queries", test, "--name", f"learn-s{seed}"]
    done = subprocess.run(command, capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode:
        raise SystemExit(f"seed {seed}: the pipeline failed (exit {done.returncode}): {done.stderr[-3000:]}")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("eval_results: ")]
    return line.split(": ", 1)[1].strip()


def question_values(lake: Lake, eval_results: str) -> dict[tuple[str, str, str], tuple[list[float], list[float]]]:
    """Per comparison: the two models' paired figures on this run's held-out questions."""
    info = lake.resolve(eval_results)
    roles = {row["model_id"]: row["label"] for row in lake.read(info).to_pylist()}
    versions = [lake.resolve(ref) for ref in info.input_versions if ref.startswith("rollouts/")]
    _, by_model, _ = score_evaluation(lake, versions, list(roles), load_config("cpu").score)
    answers = {roles[model]: {row["query_id"]: row for row in rows} for model, rows in by_model.items()}
    queries = lake.read(lake.input_of(versions[0], "queries"), columns=["query_id", "task", "metadata"]).to_pylist()
    values = {}
    for name, first, second, metric, subset in COMPARISONS:
        questions = [query["query_id"] for query in queries if subset in subsets_of(query, 1, "difficulty")]
        values[name, first, second] = paired_values(answers[first], answers[second], metric, questions)
    return values


def summary(first: list[float], second: list[float]) -> dict[str, Any]:
    """A paired difference as JSON."""
    result = paired_difference(first, second)
    return {"difference": result.difference, "ci_low": result.low, "ci_high": result.high,
            "p_value": result.p_value, "n": result.n}  # fmt: skip


def main() -> None:
    """Run every seed, then print per-seed and pooled paired differences and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--test-questions", type=int, default=200)
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]

    home = fresh_data_dir("autotraj-learning-")
    print(f"data directory: {home}", flush=True)

    pooled: dict[tuple[str, str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    per_seed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for seed in seeds:
        eval_results = run_seed(seed, args.questions, args.test_questions)
        for key, (first, second) in question_values(Lake(home), eval_results).items():
            per_seed[key[0]].append({"seed": seed, **summary(first, second)})
            pooled[key][0].extend(first)
            pooled[key][1].extend(second)
    figures: dict[str, Any] = {}
    print(f"\n{'comparison':<22} {'seed':>6} {'b − a':>8} {'95% interval':>20} {'p':>8} {'n':>5}")
    for name, first, second, metric, subset in COMPARISONS:
        total = summary(*pooled[name, first, second])
        figures[name] = {"a": first, "b": second, "metric": metric, "subset": subset,
                         "per_seed": per_seed[name], "pooled": total}  # fmt: skip
        for row in [*per_seed[name], {"seed": "pooled", **total}]:
            interval = "–" if row["ci_low"] is None else f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
            p_value = "–" if row["p_value"] is None else f"{row['p_value']:.3g}"
            print(f"{name:<22} {row['seed']!s:>6} {row['difference']:>+8.3f} {interval:>20} {p_value:>8} {row['n']:>5}")

    def pooled_low(name: str) -> float | None:
        return figures[name]["pooled"]["ci_low"]

    def pooled_high(name: str) -> float | None:
        return figures[name]["pooled"]["ci_high"]

    targets = {
        "repair_helps_on_hard": (pooled_low("repair_accuracy_hard") or 0.0) > 0,
        "rm_quality_not_lower": (pooled_high("rm_quality") or 0.0) >= 0,
        "rm_length_not_higher": (pooled_low("rm_length") or 0.0) <= 0,
        "rm_accuracy_not_lower": (pooled_high("rm_accuracy") or 0.0) >= 0,
    }
    target = {
        "repair_accuracy_hard": "pooled 95% interval above 0",
        "rm_quality, rm_accuracy": "not lower: the pooled interval reaches 0 or above",
        "rm_length": "not higher: the pooled interval reaches 0 or below",
    }
    print(json.dumps({"seeds": seeds, "figures": figures, "targets_met": targets, "target": target,
                      "data_directory": str(home)}))  # fmt: skip


if __name__ == "__main__":
    main()
