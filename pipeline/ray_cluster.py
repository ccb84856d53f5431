"""Joining or starting the Ray cluster that the Ray parts of the pipeline run on (the optional extra ``ray``).

``init_local_ray`` starts a local cluster that listens on 127.0.0.1 only: Ray >= 2.50 otherwise resolves
"127.0.0.1" to the machine's network address (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps the loopback address,
read when ``ray`` is imported), and a new local cluster turns on token authentication and writes a token file under
``~/.ray`` unless ``RAY_AUTH_MODE`` is set (here: token mode with a fresh random token in the environment, so
nothing is written to the home directory and only this process and its children hold the token). Usage statistics
are off and there is no dashboard.

``ray_session(address, num_cpus)`` is what the pipeline's own Ray users call: with Ray already initialised it uses
that cluster; with ``address`` ("auto", "ray://head:10001") it joins that cluster; with neither it starts a local
one as above, and on the way out shuts it down and removes its folder.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

LOOPBACK = "127.0.0.1"


def init_local_ray(num_cpus: int = 2, temp_dir: str | None = None, **init_kwargs: Any) -> dict:
    """Start a local Ray cluster bound to 127.0.0.1 (see the module docstring); returns ``ray.init``'s context
    dict plus ``temp_dir``. ``temp_dir`` defaults to a new short folder under /tmp (Ray's socket paths must stay
    short)."""
    imported = "ray" in sys.modules
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    new_token = "RAY_AUTH_MODE" not in os.environ
    if new_token:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    import ray
    from ray._private import ray_constants

    if imported:  # ray read both settings when it was imported: apply them late, the way ray itself does
        ray_constants.ENABLE_RAY_CLUSTER = False
        if new_token:
            from ray._raylet import Config

            Config.initialize("")  # what ray's own _enable_token_auth does to switch this process to token mode
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="ray", dir="/tmp")
    # Started from a worker thread (the teacher engine's), ray.init warns that it sets no SIGTERM handler: that is
    # what we want (the pipeline handles SIGTERM itself), so the warning is not shown.
    worker_log = logging.getLogger("ray._private.worker")
    level = worker_log.level
    worker_log.setLevel(logging.ERROR)
    try:
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir, configure_logging=False,
                       log_to_driver=False, _node_ip_address=LOOPBACK, **init_kwargs)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        worker_log.setLevel(level)
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"Ray came up on {ip}, not {LOOPBACK}")
    return {**ctx.address_info, "temp_dir": temp_dir}


@contextmanager
def ray_session(address: str = "", num_cpus: int = 2) -> Iterator[None]:
    """Ray, initialised for the body: the cluster this process already joined, the one at ``address``, or a new
    loopback-only local cluster of ``num_cpus`` CPUs (shut down and removed afterwards)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield
        return
    if address:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        ray.init(address=address, configure_logging=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    started = init_local_ray(num_cpus=num_cpus)["temp_dir"]
    import ray

    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(started, ignore_errors=True)
