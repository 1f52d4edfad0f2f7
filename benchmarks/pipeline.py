"""Orchestration overhead of the main job's pipeline: wall time per stage and the share Prefect adds.

Runs the `autotraj` pipeline flow (the quickstart's, cpu profile) on a fresh lake in a temporary data
directory. The tiny models are copied from the existing build (AUTOTRAJ_HOME, default ./.autotraj;
built first if absent, which is not timed). The baseline, measured in the same run, is the stages'
own compute: the run time of each stage's task as Prefect recorded it. The overhead is the total
wall time minus that compute (flow and subflow runs, the ephemeral API, cache lookups, artifacts,
config and lake setup), shown as a share of the total; the target is at most 10 %. The last line
is JSON.

usage: python benchmarks/pipeline.py [--questions 300] [--test-questions 200]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

from data_home import fresh_data_dir, search_corpus_override, synth_queries

TARGET_SHARE = 0.10


def stage_runs() -> list[tuple[str, float]]:
    """(stage, seconds) of every stage task run, in start order (the benchmark has its own Prefect home)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(limit=200, sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    return [
        (run.task_key.split("_task")[0], run.total_run_time.total_seconds()) for run in runs if "_task-" in run.task_key
    ]


def main() -> None:
    """Time one pipeline run and print its per-stage table and the overhead share."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--test-questions", type=int, default=200)
    args = parser.parse_args()

    home = fresh_data_dir("autotraj-bench-")
    train, test = synth_queries(args.questions, 1), synth_queries(args.test_questions, 777)

    from flows.pipeline import pipeline_flow

    started = time.perf_counter()
    pipeline_flow(train, test, name="bench", overrides=[search_corpus_override()])
    total = time.perf_counter() - started
    stages = stage_runs()
    compute = sum(seconds for _, seconds in stages)
    overhead = total - compute
    print(f"{'stage':<14}{'seconds':>10}")
    for stage, seconds in stages:
        print(f"{stage:<14}{seconds:>10.1f}")
    print(f"{'stages':<14}{compute:>10.1f}\n{'total wall':<14}{total:>10.1f}")
    print(f"orchestration overhead: {overhead:.1f} s = {overhead / total:.1%} of the total (target <= 10%)")
    shutil.rmtree(home, ignore_errors=True)
    print(
        json.dumps(
            {
                "total_s": round(total, 1),
                "stages_s": round(compute, 1),
                "overhead_s": round(overhead, 1),
                "overhead_share": round(overhead / total, 4),
                "ratio": round(total / compute, 4),
                "target": TARGET_SHARE,
            }
        )
    )


if __name__ == "__main__":
    main()
