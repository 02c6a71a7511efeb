"""`--tune`: a bounded search of matmul tilings on the timing model.

The cost model ranks every tiling of each matrix product (compiler/backend/gemm.py). The
search times the model's choice and the next candidates of each product (timing-only, that
kernel alone), and keeps a candidate only when it is faster than the model's choice, so the
result is never worse than no tuning.

The budget is a number of candidates per product (`CompileOptions.tune_candidates`), not
seconds, so the compiled code does not depend on the host's speed. The timing model is
injected as `measure(program, machine) -> cycles` by the caller (the CLI passes the
interpreter's), so the backend does not import the runtime. Results are cached on disk by
program, machine and every compile option (`$ZHENWU_CACHE`, default ~/.cache/zhenwu/tune).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

Measure = Callable[[object, object], int]   # (isa Program, machine) -> cycles


def cache_dir() -> Path:
    return Path(os.environ.get("ZHENWU_CACHE", Path.home() / ".cache" / "zhenwu")) / "tune"


def cache_key(graph, machine, options) -> str:
    from zhenwu.compiler.graph.printer import print_function

    text = print_function(graph) + "\n" + repr(machine) + "\n" + repr(options) + "\nv2"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _kernel_cycles(kernel, tensors, machine, measure: Measure) -> int:
    """Cycles of one kernel alone on the timing model."""
    from zhenwu.compiler.backend.codegen import generate_program
    from zhenwu.compiler.backend.hbm import plan_hbm
    from zhenwu.compiler.backend.kernel_ir import KernelProgram

    roles = [replace(t, role="in") if t.role == "temp" else t for t in tensors]
    planned = plan_hbm(KernelProgram(tuple(roles), (kernel,)), machine.hbm_bytes)
    return measure(generate_program(planned, machine.name, machine.cores), machine)


def tune_gemm_tiles(graph, machine, plan, options, measure: Measure
                    ) -> dict[int, tuple[int, int, int]]:
    """Matmul op id -> (tile_m, tile_n, tile_k) that beat the cost model on the timing
    model; empty when the model's choices stand. Tries `options.tune_candidates` tilings
    of each product (the model's choice first)."""
    from zhenwu.compiler.backend.fusion import FusedLowering

    path = cache_dir() / f"{cache_key(graph, machine, options)}.json"
    try:
        return {int(k): tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass

    def lowered(overrides):
        low = FusedLowering(graph, machine, plan)
        low.gemm_tiles = overrides
        tensors, kernels, _ = low.run()
        return low, tensors, kernels

    low, tensors, kernels = lowered({})
    ranked = getattr(low, "gemm_ranked", {})
    chosen: dict[int, tuple[int, int, int]] = {}
    for mm_id, candidates in ranked.items():
        kernel_of = {i: k for k in kernels for i in k.op_ids}
        if mm_id not in kernel_of:
            continue
        best_cycles = _kernel_cycles(kernel_of[mm_id], tensors, machine, measure)
        for cand in candidates[1:options.tune_candidates]:
            trial = dict(chosen)
            trial[mm_id] = (cand.tile_m, cand.tile_n, cand.tile_k)
            _, trial_tensors, trial_kernels = lowered(trial)
            kernel = next(k for k in trial_kernels if mm_id in k.op_ids)
            cycles = _kernel_cycles(kernel, trial_tensors, machine, measure)
            if cycles < best_cycles:
                best_cycles = cycles
                chosen[mm_id] = trial[mm_id]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(k): list(v) for k, v in chosen.items()}))
    except OSError:
        pass  # a read-only cache only costs the search next time
    return chosen
