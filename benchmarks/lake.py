"""Grouped aggregate over 1M trajectory score rows: the lake through DuckDB vs one JSON file in Python.

The baseline is what the paper's scripts do: json.load one file of scored trajectories and aggregate
in a Python loop. Both sides compute the same quality histogram per label (10 bins), and the results
are checked equal. Prints a table, then one JSON object as its last line.

usage: python benchmarks/lake.py [--rows N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.lake import Lake, Lineage

LABELS = np.array(["high_quality", "correct_low_quality", "wrong"])
HISTOGRAM_SQL = (
    "SELECT label, least(floor(quality * 10), 9)::INTEGER AS bin, count(*) AS n "
    "FROM scores GROUP BY ALL ORDER BY label, bin"
)


def synthetic_scores(rows: int, seed: int = 0) -> pa.Table:
    """Scores-table rows shaped like a real scoring run: 4 candidates per query."""
    rng = np.random.default_rng(seed)
    confidence = rng.integers(0, 2, rows).astype(float)
    length = rng.random(rows)
    repetition = rng.random(rows)
    correct = rng.random(rows) < 0.6
    ids = np.arange(rows)
    return pa.table(
        {
            "trajectory_id": pa.array([f"t{i}" for i in ids]),
            "query_id": pa.array([f"q{i // 4}" for i in ids]),
            "extracted_answer": pa.array(rng.integers(0, 10_000, rows).astype(str)),
            "correct": correct,
            "outcome": correct.astype(float),
            "verify_error": pa.nulls(rows, pa.string()),
            "format_ok": rng.random(rows) < 0.95,
            "format_reason": pa.nulls(rows, pa.string()),
            "confidence": confidence,
            "length_score": length,
            "repetition_score": repetition,
            "quality": 0.4 * confidence + 0.3 * length + 0.3 * repetition,
            "n_words": rng.integers(20, 400, rows).astype(np.int32),
            "tool_calls": rng.integers(0, 4, rows).astype(np.int32),
            "tool_errors": rng.integers(0, 2, rows).astype(np.int32),
            "redundant_tool_calls": rng.integers(0, 2, rows).astype(np.int32),
            "label": LABELS[np.where(correct, rng.integers(0, 2, rows), 2)],
        }
    )


def python_histogram(path: Path) -> dict[tuple[str, int], int]:
    """The baseline: load the whole JSON file and aggregate in a Python loop."""
    with path.open() as handle:
        records = json.load(handle)
    counts: Counter[tuple[str, int]] = Counter()
    for record in records:
        counts[(record["label"], min(int(record["quality"] * 10), 9))] += 1
    return dict(counts)


def duckdb_histogram(lake: Lake) -> dict[tuple[str, int], int]:
    """The lake: one SQL aggregate over the latest scores version."""
    result = lake.sql(HISTOGRAM_SQL).to_pylist()
    return {(row["label"], row["bin"]): row["n"] for row in result}


def _timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    """Build both stores, time both aggregates, print the figures and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="autotraj-bench-") as scratch:
        data = synthetic_scores(args.rows)
        lake = Lake(Path(scratch) / "home")
        start = time.perf_counter()
        lake.write("scores", "bench", data, Lineage(stage="benchmark"))
        write_lake_s = time.perf_counter() - start

        json_path = Path(scratch) / "scores.json"
        records = data.to_pylist()
        start = time.perf_counter()
        with json_path.open("w") as handle:
            json.dump(records, handle)
        del records
        write_json_s = time.perf_counter() - start

        baseline_s, baseline = _timed(lambda: python_histogram(json_path), args.repeats)
        lake_s, ours = _timed(lambda: duckdb_histogram(lake), args.repeats)
        if ours != baseline:
            raise SystemExit(f"histograms differ: {ours} vs {baseline}")
        json_mb = json_path.stat().st_size / 1e6
        parquet_mb = sum(p.stat().st_size for p in lake.data_path.rglob("*.parquet")) / 1e6

    ratio = baseline_s / lake_s
    print(f"rows                        {args.rows:>12,}")
    print(f"write: lake (Parquet)       {write_lake_s:>10.2f} s   {parquet_mb:8.1f} MB")
    print(f"write: one JSON file        {write_json_s:>10.2f} s   {json_mb:8.1f} MB")
    print(f"histogram: JSON + Python    {baseline_s:>10.3f} s   (median of {args.repeats})")
    print(f"histogram: lake via DuckDB  {lake_s:>10.3f} s   (median of {args.repeats})")
    print(f"speed-up                    {ratio:>10.1f} x")
    print(
        json.dumps(
            {
                "benchmark": "lake_grouped_aggregate",
                "rows": args.rows,
                "duckdb_s": round(lake_s, 4),
                "json_python_s": round(baseline_s, 4),
                "ratio": round(ratio, 2),
                "lake_write_s": round(write_lake_s, 3),
                "json_write_s": round(write_json_s, 3),
                "parquet_mb": round(parquet_mb, 1),
                "json_mb": round(json_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
