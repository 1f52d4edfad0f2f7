"""A separate writer process for the lake's concurrency and crash tests.

usage: lake_worker.py versions DATASET COUNT ROWS     one transaction per version
       lake_worker.py one-transaction DATASET COUNT ROWS   all versions in a single transaction
       lake_worker.py until-stopped DATASET COUNT ROWS  versions until a line arrives on stdin (at most COUNT);
                                                          prints each version id
       lake_worker.py tagged DATASET COUNT ROWS CATALOG DATA_PATH   versions of rows tagged with this process,
                                                          on a shared catalog and data path; prints each version id
Prints `ready` just before writing and `done` after.
"""

from __future__ import annotations

import os
import select
import sys

import pyarrow as pa
import pyarrow.compute as pc

from schemas.lake import Lake, Lineage


def queries(rows: int, tag: str) -> pa.Table:
    ids = pc.cast(pa.array(range(rows)), pa.string())
    return pa.table(
        {
            "query_id": pc.binary_join_element_wise(pa.scalar(tag), ids, ""),
            "question": pc.binary_join_element_wise(pa.scalar("what is the value of item number "), ids, ""),
            "answer": pa.array(["1"] * rows),
            "answers": pa.array([["1"]] * rows),
            "task": pa.array(["math"] * rows),
        }
    )


def main() -> None:
    mode, dataset, count, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    lake = Lake(os.environ["AUTOTRAJ_HOME"], *sys.argv[5:7])
    lake.initialize()
    data = queries(rows, f"{dataset}-{os.getpid()}-")
    print("ready", flush=True)
    if mode == "versions":
        for _ in range(count):
            lake.write("queries", dataset, data, Lineage(stage="worker"))
    elif mode == "until-stopped":
        for _ in range(count):
            print(lake.write("queries", dataset, data, Lineage(stage="worker")).version_id, flush=True)
            if select.select([sys.stdin], [], [], 0)[0]:
                break
    elif mode == "tagged":
        for _ in range(count):
            print(lake.write("queries", dataset, data, Lineage(stage="worker")).version_id, flush=True)
    elif mode == "one-transaction":
        with lake.transaction(Lineage(stage="worker")) as batch:
            for _ in range(count):
                batch.write("queries", dataset, data)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("done", flush=True)


if __name__ == "__main__":
    main()
