"""Python tool latency and throughput: the fork-server pool vs a fresh `python -c` per snippet.

The baseline is the usual approach (and the paper's scripts'): start a new interpreter for every
snippet, which re-imports sympy each time. Both run in this process, on this machine, now. Latency
is one call at a time; throughput is a batch with two workers (two concurrent subprocesses for the
baseline). Prints a table, then one JSON object as its last line.

usage: python benchmarks/sandbox.py [--tier auto] [--calls 400] [--baseline-calls 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from schemas.config import PythonToolConfig
from tools_sandbox.executor import SandboxPool

SNIPPETS = {
    "sympy": "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.solve(x**2 - 5*x + 6, x))",
    "plain": "print(sum(i * i for i in range(1000)))",
}
EXPECTED = {"sympy": "[2, 3]\n", "plain": "332833500\n"}
WORKERS = 2
TARGET_RATIO = 20.0
TARGET_CALLS_PER_S = 80.0


def fresh_interpreter(code: str) -> str:
    """The baseline: a new Python process per snippet."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout


def percentiles(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile, in milliseconds."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p90 * 1e3


def latencies(run, code: str, calls: int) -> list[float]:
    """Wall time of `calls` sequential runs."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        run(code)
        samples.append(time.perf_counter() - started)
    return samples


def throughput(run_many, code: str, calls: int) -> float:
    """Calls per second for a batch of identical snippets."""
    started = time.perf_counter()
    run_many([code] * calls)
    return calls / (time.perf_counter() - started)


def main() -> None:
    """Measure both approaches and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="auto")
    parser.add_argument("--calls", type=int, default=400, help="pool calls per measurement")
    parser.add_argument("--baseline-calls", type=int, default=12, help="fresh-interpreter calls per measurement")
    args = parser.parse_args()

    figures: dict[str, float | str] = {}
    with SandboxPool(PythonToolConfig(), workers=WORKERS, tier=args.tier) as pool:
        figures["tier"] = pool.isolation.tier
        for name, code in SNIPPETS.items():
            assert pool.run(code).stdout == EXPECTED[name] and fresh_interpreter(code) == EXPECTED[name]
            pool_median, pool_p90 = percentiles(latencies(pool.run, code, min(args.calls, 100)))
            base_median, base_p90 = percentiles(latencies(fresh_interpreter, code, args.baseline_calls))
            figures |= {
                f"{name}_pool_median_ms": round(pool_median, 2),
                f"{name}_pool_p90_ms": round(pool_p90, 2),
                f"{name}_subprocess_median_ms": round(base_median, 2),
                f"{name}_subprocess_p90_ms": round(base_p90, 2),
                f"{name}_latency_ratio": round(base_median / pool_median, 1),
            }
            with ThreadPoolExecutor(WORKERS) as threads:
                base_rate = throughput(
                    lambda codes: list(threads.map(fresh_interpreter, codes)), code, args.baseline_calls
                )
            pool_rate = throughput(pool.map, code, args.calls)
            figures |= {
                f"{name}_pool_calls_per_s": round(pool_rate, 1),
                f"{name}_subprocess_calls_per_s": round(base_rate, 1),
            }

    print(f"tier: {figures['tier']}, {WORKERS} workers")
    print(f"{'snippet':8} {'approach':12} {'median ms':>10} {'p90 ms':>10} {'calls/s':>10}")
    for name in SNIPPETS:
        for approach in ("subprocess", "pool"):
            print(
                f"{name:8} {approach:12} {figures[f'{name}_{approach}_median_ms']:>10} "
                f"{figures[f'{name}_{approach}_p90_ms']:>10} {figures[f'{name}_{approach}_calls_per_s']:>10}"
            )
    print(
        f"median latency, sympy snippet: {figures['sympy_latency_ratio']}x lower with the pool (target {TARGET_RATIO}x)"
    )
    print(f"pool throughput, plain snippet: {figures['plain_pool_calls_per_s']} calls/s (target {TARGET_CALLS_PER_S})")
    figures |= {
        "ratio": figures["sympy_latency_ratio"],
        "target": {"ratio": TARGET_RATIO, "plain_pool_calls_per_s": TARGET_CALLS_PER_S},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
