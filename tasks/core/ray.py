"""Ray, the one way heavy work is spread: a local Ray by default, RAY_ADDRESS for a cluster."""

from __future__ import annotations

import os
from typing import Any

from tasks.core.models import SERVED_KEY_ENVS


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` / RAY_ADDRESS, or start a private local Ray once per process.

    Private: `address="local"` starts a new Ray even when a `ray start` cluster is registered on this
    host, which Ray would otherwise join (and refuse the CPU count given here).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def generation_actor_options(actors: int) -> dict[str, Any]:
    """One actor per GPU when there are GPUs; otherwise CPU actors with fractional CPUs; spread over the
    cluster's nodes either way.

    Fractional: two 1-CPU actors on a 2-CPU machine can hang waiting for each other's resources.
    The driver's served-model keys go with them: a Ray that was started earlier has not seen them.
    """
    import ray

    keys = {name: os.environ[name] for name in SERVED_KEY_ENVS if os.environ.get(name)}
    options: dict[str, Any] = {"runtime_env": {"env_vars": keys}} if keys else {}
    if ray.cluster_resources().get("GPU", 0) >= actors:
        return options | {"num_gpus": 1, "scheduling_strategy": "SPREAD"}
    return options | {"num_cpus": 0.5, "scheduling_strategy": "SPREAD"}


def root_cause(error: BaseException) -> BaseException:
    """The error a remote task or a Ray Train worker raised, out of Ray's wrappers.

    `ray.get` re-raises a task's error as a RayTaskError that is also an instance of the original
    class; Ray Train wraps a worker's error in TrainingFailedError / WorkerGroupError, whose cause
    chain (or `worker_failures`) holds it. Unwrapped, a permanent error stays permanent.
    """
    seen: set[int] = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            current = next(iter(failures.values()))
            continue
        inner = getattr(current, "cause", None)
        if isinstance(inner, BaseException):
            current = inner
            continue
        if current.__cause__ is not None and type(current).__module__.startswith("ray."):
            current = current.__cause__
            continue
        break
    return current
