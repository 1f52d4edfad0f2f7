"""What the pipeline benchmarks share: a fresh data directory holding a copy of the tiny models, the main job's
synthetic questions, and the search corpus they need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.bootstrap import facts
from tasks.core.models import bootstrap_dir

AUTOTRAJ = [sys.executable, "-m", "flows.cli"]


def fresh_data_dir(prefix: str) -> Path:
    """A new data directory with the tiny models copied from AUTOTRAJ_HOME (default ./.autotraj; built
    there first if absent), made this process's AUTOTRAJ_HOME with a Prefect database of its own."""
    source = Path(os.environ.get("AUTOTRAJ_HOME", ".autotraj")).absolute()
    subprocess.run([*AUTOTRAJ, "bootstrap"], check=True, env={**os.environ, "AUTOTRAJ_HOME": str(source)})
    home = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(bootstrap_dir(source), bootstrap_dir(home))
    os.environ["AUTOTRAJ_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect-home")  # a fresh Prefect database: only this run's runs
    return home


def synth_queries(n: int, seed: int) -> str:
    """Generate and import the main job's mixture (arithmetic and towns) here; returns the dataset's name."""
    command = [*AUTOTRAJ, "data", "synth", "--task", "tir", "--n", str(n), "--seed", str(seed)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return f"tir-s{seed}-n{n}"


def search_corpus_override() -> str:
    """The config override that points the search tool at the towns' corpus `synth_queries` wrote."""
    return f"tools.search.corpus={facts.corpus_path(os.environ['AUTOTRAJ_HOME'])}"
