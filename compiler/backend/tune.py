"""`--tune`: a bounded search of matmul tilings on the timing model (DESIGN.md section 5).

The cost model ranks every tiling of each matrix product (compiler/backend/gemm.py). The
search times the model's choice and the next candidates of each product on the interpreter
(timing-only, that kernel alone), within a time budget, and keeps a candidate only when it
is faster than the model's choice, so the result is never worse than no tuning. Results
are cached on disk by program and machine (`$ZHENWU_CACHE`, default ~/.cache/zhenwu/tune).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

CANDIDATES = 4          # per product: the model's choice and the next three
BUDGET_SECONDS = 30.0


def cache_dir() -> Path:
    return Path(os.environ.get("ZHENWU_CACHE", Path.home() / ".cache" / "zhenwu")) / "tune"


def cache_key(graph, machine) -> str:
    from compiler.graph.printer import print_function

    text = print_function(graph) + "\n" + repr(machine) + "\nv1"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _kernel_cycles(kernel, tensors, machine) -> int:
    """Cycles of one kernel alone on the timing model (placeholder inputs)."""
    import numpy as np

    from compiler.backend.codegen import generate
    from compiler.backend.hbm import plan_hbm
    from compiler.backend.kernel_ir import KernelProgram
    from isa.asm import parse_assembly
    from runtime import run_program

    roles = [replace(t, role="in") if t.role == "temp" else t for t in tensors]
    planned = plan_hbm(KernelProgram(tuple(roles), (kernel,)), machine.hbm_bytes)
    program = parse_assembly(generate(planned, machine.name), "<tune>")
    inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape) or (1,))
              for t in program.inputs}
    return run_program(program, machine, inputs, timing_only=True).report.cycles


def tune_gemm_tiles(graph, machine, plan, budget_seconds: float = BUDGET_SECONDS
                    ) -> dict[int, tuple[int, int, int]]:
    """Matmul op id -> (tile_m, tile_n, tile_k) that beat the cost model on the timing
    model; empty when the model's choices stand."""
    from compiler.backend.fusion import FusedLowering

    path = cache_dir() / f"{cache_key(graph, machine)}.json"
    try:
        return {int(k): tuple(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        pass
    start = time.perf_counter()

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
        best_cycles = _kernel_cycles(kernel_of[mm_id], tensors, machine)
        for cand in candidates[1:CANDIDATES]:
            if time.perf_counter() - start > budget_seconds:
                break
            trial = dict(chosen)
            trial[mm_id] = (cand.tile_m, cand.tile_n, cand.tile_k)
            _, trial_tensors, trial_kernels = lowered(trial)
            kernel = next(k for k in trial_kernels if mm_id in k.op_ids)
            cycles = _kernel_cycles(kernel, trial_tensors, machine)
            if cycles < best_cycles:
                best_cycles = cycles
                chosen[mm_id] = trial[mm_id]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(k): list(v) for k, v in chosen.items()}))
    except OSError:
        pass  # a read-only cache only costs the search next time
    return chosen
