"""Ray, the one way heavy work is spread: a local Ray by default, RAY_ADDRESS for a cluster."""

from __future__ import annotations

import logging
import os
from typing import Any

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
