"""`zhenwu serve`'s simulations: each generated program compiled and run once, timing-only,
with results cached on disk, many at a time in local processes or on Ray.

This module joins the compiler and the runtime, so it lives with the CLI commands
(compiler/serving/ itself only writes programs and composes numbers).

The cache key is the SHA-256 of the program's source, the machine's numbers, the compile
options and a fingerprint of the compiler's and simulator's own source files (a change to
either recomputes). Records are small JSON files under `$ZHENWU_CACHE` (default
`~/.cache/zhenwu`), in `serve/`. A record holds the simulated cycles and seconds, the FLOPs
and HBM bytes, the kernel count and each kernel's cycles and HBM bytes, the roofline bound,
and the bytes of every parameter and output (so that a warm run needs neither the compiler
nor the simulator).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from zhenwu.isa.errors import UsageError

_ROOT = Path(__file__).resolve().parents[2]
# what the simulated cycles depend on besides the program and the machine
_FINGERPRINTED = ("compiler/backend", "compiler/passes", "compiler/frontend", "compiler/graph",
                  "runtime", "isa")
RECORD_VERSION = 2   # 2: per-kernel times (`kernel_times`)


def cache_dir() -> Path:
    """Where simulation records live: `$ZHENWU_CACHE/serve` or `~/.cache/zhenwu/serve`."""
    base = os.environ.get("ZHENWU_CACHE") or os.path.join(Path.home(), ".cache", "zhenwu")
    return Path(base) / "serve"


@functools.cache
def code_fingerprint() -> str:
    """A hash of the compiler's and simulator's source (the cycles come from this code)."""
    digest = hashlib.sha256()
    for folder in _FINGERPRINTED:
        for path in sorted((_ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".lark", ".zt", ".toml") and path.is_file():
                digest.update(str(path.relative_to(_ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(source: str, machine, opt_level: int, persistent: bool = False) -> str:
    fields = {"source": source, "machine": machine.to_dict(), "opt": opt_level,
              "code": code_fingerprint(), "version": RECORD_VERSION}
    if persistent:
        fields["persistent"] = True
    payload = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def simulate_source(source: str, name: str, machine, opt_level: int = 2,
                    persistent: bool = False) -> dict:
    """Compile `source` for `machine` and run it timing-only: the record described above
    (`persistent`: compiled as one persistent kernel, compiler/backend/merge.py)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.graph.dtypes import itemsize
    from zhenwu.compiler.roofline import roofline
    from zhenwu.runtime import run_program

    fn = load_program(f"<serve:{name}>", text=source)
    start = time.perf_counter()
    compiled = compile_function(fn, machine, CompileOptions(opt_level=opt_level,
                                                            persistent=persistent))
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = run_program(compiled.program, machine, {}, timing_only=True,
                         max_instructions=2_000_000_000)
    simulate_seconds = time.perf_counter() - start
    report = result.report
    bound = roofline(compiled.graph, machine)

    def nbytes(value) -> int:
        count = 1
        for dim in value.type.shape:
            count *= dim
        return count * itemsize(value.type.dtype)

    return {
        "name": name,
        "cycles": report.cycles,
        "seconds": report.seconds,
        "flops": report.flops,
        "hbm_read_bytes": report.hbm_read_bytes,
        "hbm_write_bytes": report.hbm_write_bytes,
        "kernels": compiled.kernel_count,
        "roofline_cycles": bound.cycles,
        "compute_cycles": bound.compute_cycles,
        "compulsory_bytes": bound.compulsory_bytes,
        "instructions": report.instructions,
        # each kernel's cycles (its launch included) and HBM bytes, in program order
        "kernel_times": [{"name": k.name, "cycles": k.cycles,
                          "hbm_bytes": k.hbm_read_bytes + k.hbm_write_bytes}
                         for k in report.kernels],
        "param_bytes": {p.name: nbytes(p) for p in fn.params},
        "output_bytes": [nbytes(v) for v in fn.outputs],
        "compile_seconds": round(compile_seconds, 3),
        "simulate_seconds": round(simulate_seconds, 3),
    }


def simulate_cached(source: str, name: str, machine, opt_level: int = 2,
                    persistent: bool = False) -> dict:
    """`simulate_source`, or its record from the disk cache (with `cached: true`)."""
    key = cache_key(source, machine, opt_level, persistent)
    path = cache_dir() / f"{key}.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            return {**record, "cached": True}
        except (OSError, ValueError):
            pass  # a damaged record is recomputed
    record = simulate_source(source, name, machine, opt_level, persistent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs time
    return {**record, "cached": False}


def is_cached(source: str, machine, opt_level: int = 2, persistent: bool = False) -> bool:
    return (cache_dir() / f"{cache_key(source, machine, opt_level, persistent)}.json").is_file()


# ---- many programs: local processes or Ray ------------------------------------------
# The unit of work is one distinct program (same source, same machine): every sweep point
# and every layer that shares it shares its simulation. Programs not in the disk cache run
# in local processes (concurrent.futures), or as Ray tasks when asked (`ray` is an optional
# extra; no address starts or joins a local Ray, an address joins a cluster). There is no
# scheduler of our own.


def _simulate_job(job):
    source, name, machine, opt_level, *persistent = job
    return simulate_cached(source, name, machine, opt_level, bool(persistent and persistent[0]))


def simulate_all(jobs: list[tuple[str, str, object]], *, processes: int = 0,
                 ray_address: str | None | bool = False, opt_level: int = 2,
                 progress=None, persistent: bool = False) -> dict[tuple[str, str], dict]:
    """Records keyed by (source, machine name) for `jobs` of (source, name, machine).

    `processes`: local worker processes (0: one per CPU). `ray_address`: False for local
    processes, None for a local Ray, or a cluster address.
    """
    if ray_address is not False:
        _import_ray()  # asked for Ray: say so now if it is missing, cached or not
    unique: dict[tuple[str, str], tuple[str, str, object, int]] = {}
    for source, name, machine in jobs:
        unique.setdefault((source, machine.name),
                          (source, name, machine, opt_level, persistent))
    results: dict[tuple[str, str], dict] = {}
    todo = []
    for key, job in unique.items():
        if is_cached(job[0], job[2], opt_level, persistent):
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
                progress(done, len(todo), unique[key][1])
    return results


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'zhenwu[ray]' (or drop --ray to use "
                         "local processes)") from None
    return ray


def _on_ray(todo, address, progress) -> dict:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(_simulate_job)
    refs = {key: remote.remote(job) for key, job in todo}
    results = {}
    for done, (key, ref) in enumerate(refs.items(), start=1):
        results[key] = ray.get(ref)
        if progress:
            progress(done, len(todo), todo[done - 1][1][1])
    return results
