"""Where a training stage runs: a Ray Train job (GPU workers, or one CPU worker), or this process.

The dispatch receives the stage's train function; it never imports a stage. The job requests
`runtime.train_gpus` GPUs (one worker each; DeepSpeed from `runtime.deepspeed_config` there,
UNTESTED here) or one CPU worker, which trains with gloo and no DeepSpeed. The worker's step
reports reach the context's progress callback through a Ray queue. A worker's error comes back as
itself (not Ray's wrapper), so a permanent error stays permanent. With `runtime.train_dispatch:
local` the stage trains in this process instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.core.ray import ensure_ray, root_cause
from tasks.core.stage import StageContext, StageResult
from tasks.training.common import already_trained

TrainFunction = Callable[[StageContext], StageResult]


def run_training_job(train: TrainFunction, context: StageContext) -> StageResult:
    """Run `train(context)` as a Ray Train job (or locally, per runtime.train_dispatch); return its result.

    A model already trained with the same fingerprint, inputs and code is returned without a job.
    """
    if (done := already_trained(context.lake, context.name, context.lineage)) is not None:
        return done.result()
    runtime = context.config.runtime
    if runtime.train_dispatch == "local":
        return train(context)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    ensure_ray(runtime.ray_address)
    gpus = runtime.train_gpus
    cpu_threads = os.cpu_count() or 1
    steps = Queue(actor_options={"num_cpus": 0})
    progress = context.progress

    def train_loop(payload: dict[str, Any]) -> Any:
        import torch

        if not gpus:  # Ray pins a 1-CPU worker to one thread; the job has the machine's cores
            torch.set_num_threads(cpu_threads)
        report = lambda step, total, info: steps.put_nowait((step, total, info))  # noqa: E731
        return payload["train"](replace(payload["context"], progress=report))

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": train, "context": replace(context, progress=None)},
        scaling_config=ScalingConfig(
            num_workers=max(1, gpus), use_gpu=gpus > 0, resources_per_worker=None if gpus else {"CPU": 1}
        ),
        run_config=RunConfig(
            name=f"{context.stage}-{uuid.uuid4().hex[:8]}",
            storage_path=str(Path(runtime.data_dir).resolve() / "ray_results"),
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
            try:
                result = job.result()
            except Exception as exc:
                cause = root_cause(exc)
                if cause is exc:
                    raise
                raise cause from exc
    finally:
        steps.shutdown()  # the queue's actor must not outlive a failed job either
    if result.error is not None:
        raise root_cause(result.error)
    return result.return_value
