"""Ray, the one way heavy work is spread: a local Ray by default, RAY_ADDRESS for a cluster."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.config import PipelineConfig
    from tasks.sft import StepProgress

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` / RAY_ADDRESS, or start a local Ray once per process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def generation_actor_options(actors: int) -> dict[str, Any]:
    """One actor per GPU when there are GPUs; otherwise CPU actors with fractional CPUs.

    Fractional: two 1-CPU actors on a 2-CPU machine can hang waiting for each other's resources.
    """
    import ray

    if ray.cluster_resources().get("GPU", 0) >= actors:
        return {"num_gpus": 1}
    return {"num_cpus": 0.5}


def _training_stages() -> dict[str, Callable[..., Any]]:
    from tasks.grpo import run_grpo
    from tasks.reward_model import run_reward_model
    from tasks.sft import run_sft

    return {"sft": run_sft, "reward_model": run_reward_model, "grpo": run_grpo}


def _train_here(stage: str, config: PipelineConfig, arguments: dict[str, Any]) -> Any:
    from schemas.lake import Lake

    return _training_stages()[stage](Lake.from_config(config.runtime), config=config, **arguments)


def run_training_job(stage: str, config: PipelineConfig, progress: StepProgress | None = None, **arguments: Any) -> Any:
    """Run a training stage (sft, reward_model, grpo) as a Ray Train job; its TrainReport comes back.

    The job requests `runtime.train_gpus` GPUs (one worker each; DeepSpeed from `runtime.deepspeed_config`
    there, UNTESTED here) or one CPU worker, which trains with gloo and no DeepSpeed. The worker's
    step reports reach `progress` through a Ray queue. With `runtime.train_dispatch: local` the stage
    trains in this process instead.
    """
    if stage not in ("sft", "reward_model", "grpo"):
        raise ValueError(f"unknown training stage {stage!r}")
    runtime = config.runtime
    if runtime.train_dispatch == "local":
        return _train_here(stage, config, arguments | {"progress": progress})
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(runtime.ray_address)
    gpus = runtime.train_gpus
    cpu_threads = os.cpu_count() or 1
    steps = Queue(actor_options={"num_cpus": 0})

    def train_loop(payload: dict[str, Any]) -> Any:
        import torch

        if not gpus:  # Ray pins a 1-CPU worker to one thread; the job has the machine's cores
            torch.set_num_threads(cpu_threads)
        report = lambda step, total, info: steps.put_nowait((step, total, info))  # noqa: E731
        return _train_here(payload["stage"], payload["config"], payload["arguments"] | {"progress": report})

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"stage": stage, "config": config, "arguments": arguments},
        scaling_config=ScalingConfig(
            num_workers=max(1, gpus), use_gpu=gpus > 0, resources_per_worker=None if gpus else {"CPU": 1}
        ),
        run_config=RunConfig(
            name=f"{stage}-{uuid.uuid4().hex[:8]}", storage_path=str(Path(runtime.data_dir).resolve() / "ray_results")
        ),
    )
    try:
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(trainer.fit)
            while not job.done() or not steps.empty():
                try:
                    update = steps.get(timeout=0.5)
                except Empty:
                    continue
                if progress is not None:
                    progress(*update)
            result = job.result()
    finally:
        steps.shutdown()  # the queue's actor must not outlive a failed job either
    if result.error is not None:
        raise result.error
    return result.return_value
