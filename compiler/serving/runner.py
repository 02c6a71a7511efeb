"""Simulate the distinct programs of one or many estimates: cached, in parallel.

The unit of work is one distinct program (same source, same machine): every sweep point and
every layer that shares it shares its simulation. Programs not in the disk cache run in local
processes (`concurrent.futures`), or as Ray tasks when asked (`ray` is an optional extra:
`pip install 'zhenwu[ray]'`; `address=None` starts or joins a local Ray, an address joins a
cluster). There is no scheduler of our own.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

from compiler.serving.simulate import is_cached, simulate_cached
from isa.errors import UsageError


def _simulate_job(job):
    source, name, machine, opt_level = job
    return simulate_cached(source, name, machine, opt_level)


def simulate_all(jobs: list[tuple[str, str, object]], *, processes: int = 0,
                 ray_address: str | None | bool = False, opt_level: int = 2,
                 progress=None) -> dict[tuple[str, str], dict]:
    """Records keyed by (source, machine name) for `jobs` of (source, name, machine).

    `processes`: local worker processes (0: one per CPU). `ray_address`: False for local
    processes, None for a local Ray, or a cluster address.
    """
    unique: dict[tuple[str, str], tuple[str, str, object, int]] = {}
    for source, name, machine in jobs:
        unique.setdefault((source, machine.name), (source, name, machine, opt_level))
    results: dict[tuple[str, str], dict] = {}
    todo = []
    for key, job in unique.items():
        if is_cached(job[0], job[2], opt_level):
            results[key] = _simulate_job(job)
        else:
            todo.append((key, job))
    if not todo:
        return results
    if ray_address is not False:
        return {**results, **_on_ray(todo, ray_address, progress)}
    workers = processes if processes > 0 else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for done, (key, job) in enumerate(todo, start=1):
            results[key] = _simulate_job(job)
            if progress:
                progress(done, len(todo), job[1])
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(_simulate_job, job) for key, job in todo}
        for done, (key, future) in enumerate(futures.items(), start=1):
            results[key] = future.result()
            if progress:
                progress(done, len(todo), key[1] and unique[key][1])
    return results


def _on_ray(todo, address, progress) -> dict:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'zhenwu[ray]' (or drop --ray to use "
                         "local processes)") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(_simulate_job)
    refs = {key: remote.remote(job) for key, job in todo}
    results = {}
    for done, (key, ref) in enumerate(refs.items(), start=1):
        results[key] = ray.get(ref)
        if progress:
            progress(done, len(todo), key[1])
    return results
