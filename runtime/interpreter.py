"""`run_program`: run an M890 program on a simulated chip (docs/internals.md section 4).

Loads the inputs into lazily paged GM at their tensors' addresses, decodes the program once,
runs every core of the chip (SPMD: each core runs the whole program, `GETID` tells them
apart) in the discrete-event model of runtime/engine.py, then reads the outputs back and
builds the report (and the trace when asked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from zhenwu.isa.dtypes import convert, np_dtype
from zhenwu.isa.errors import ChipTrap, InputError
from zhenwu.isa.program import ENGINES, NUM_EVENTS, Program
from zhenwu.runtime.blas import single_blas_thread
from zhenwu.runtime.context import ScalarContext
from zhenwu.runtime.decode import decode_program
from zhenwu.runtime.engine import CoreState, Simulator, Timing, dma_compute_overlap
from zhenwu.runtime.fastforward import FastForward
from zhenwu.runtime.l2 import L2Cache
from zhenwu.runtime.memory import GlobalMemory, LocalMemory
from zhenwu.runtime.report import KernelTime, Report
from zhenwu.runtime.trace import TraceRecorder

# the engines this interpreter models, in their table order (S first); NET comes with
# multi-chip support
MODELLED_ENGINES = tuple(e for e in ENGINES if e != "NET")
DEFAULT_MAX_INSTRUCTIONS = 50_000_000
# A chip that issues this many instructions in a row without dispatching any engine
# instruction is spinning (an empty loop, a loop of SIG.S): stopped in seconds, before its
# pending event tokens fill the host's memory. An explicit budget sets this limit too.
DEFAULT_MAX_IDLE_INSTRUCTIONS = 1 << 18


@dataclass
class RunResult:
    """What a run gives back.

    - `outputs`: the `out`/`inout` tensors by name, in directive order (empty with
      `timing_only`, which computes no values);
    - `report`: a `runtime.report.Report` (`.cycles`, `.seconds`, `.flops`, ... `.to_json()`);
    - `trace`: the Chrome/Perfetto trace event dict when `trace=True`, else None.
    """

    outputs: dict[str, np.ndarray]
    report: Report
    trace: dict | None


def run_program(program: Program, machine, inputs: dict[str, np.ndarray], *,
                timing_only: bool = False, max_instructions: int | None = None,
                trace: bool = False, progress=None, fast_forward: bool = True) -> RunResult:
    """Run `program` on every core of one chip described by `machine`.

    `inputs` maps each `in`/`inout` tensor name to an array of the tensor's shape (cast to
    its dtype; `inout` and `const` tensors may be omitted and start as zeros; with
    `timing_only` every input may be omitted). With `timing_only` no
    instruction computes on data and no tensor data is allocated: the cycles are the same (costs
    depend on operands and descriptors, never on data), the outputs are empty, and the
    race check is skipped (it needs the order of real accesses); bounds are checked from the
    addresses alone, once per distinct operand set.
    `max_instructions` bounds the instructions executed over all cores (a runaway program
    traps; default 50 million) and, by default, 2**18 instructions in a row with no engine
    instruction dispatched (a spinning loop traps in seconds); an explicit `max_instructions`
    sets both. `progress(cycle, instructions)`, when given, is called every few thousand
    events of the run (the simulated cycle reached and instructions executed so far), for a
    progress display. With `timing_only` and `fast_forward` (the default, off when a trace is
    recorded), the steady state of loop nests is skipped ahead (runtime/fastforward.py).
    Raises `ChipTrap` (exit status 3) when the chip traps and
    `InputError` for inputs that do not fit the program.
    """
    functional = not timing_only
    gm = GlobalMemory(machine.hbm_bytes) if functional else None
    check_tensors(program, machine)
    load_inputs(program, inputs, gm)
    engines = MODELLED_ENGINES
    l2 = L2Cache(machine.l2_bytes, machine.l2_line_bytes, machine.l2_block_bytes,
                 machine.hbm_row_bytes) if machine.l2_bytes else None
    ops = decode_program(program, machine, engines, functional=functional, gm=gm, l2=l2)
    cores = []
    for index in range(machine.cores):
        memories = {
            "L1": LocalMemory(machine.l1_bytes, "L1"),
            "ACC": LocalMemory(machine.acc_bytes, "ACC"),
        }
        core = CoreState(index, 0, len(engines), NUM_EVENTS, memories, ("L1", "ACC"),
                         race_check=functional)
        core.scalar_ctx = ScalarContext(core, machine, program, chip=0, chips=1)
        cores.append(core)
    timing = Timing.for_machine(machine, l2)
    recorder = TraceRecorder(machine.clock_hz, list(engines), machine.cores) if trace else None
    kernel_names = [name for name, _ in program.kernels]
    simulator = Simulator(
        ops, timing, list(engines), cores,
        max_instructions=max_instructions or DEFAULT_MAX_INSTRUCTIONS,
        max_idle_instructions=max_instructions or DEFAULT_MAX_IDLE_INSTRUCTIONS, trace=recorder,
        kernels=kernel_names, progress=progress,
    )
    if timing_only and fast_forward and recorder is None:
        simulator.fast_forward = FastForward(simulator, program)
    # IEEE results (inf, NaN) are the chip's arithmetic, not host warnings
    with single_blas_thread(), np.errstate(all="ignore"):
        cycles = simulator.run()
    outputs = read_outputs(program, gm) if functional else {}
    report = build_report(program, machine, simulator, cycles, timing_only)
    return RunResult(outputs, report, recorder.to_dict() if recorder is not None else None)


def check_tensors(program: Program, machine) -> None:
    """ChipTrap when a tensor of the program lies outside the chip's GM."""
    for tensor in program.tensors:
        if tensor.address < 0 or tensor.address + tensor.nbytes > machine.hbm_bytes:
            raise ChipTrap(
                f"tensor '{tensor.name}' [{tensor.address:#x}, "
                f"{tensor.address + tensor.nbytes:#x}) is outside GM "
                f"({machine.hbm_bytes:#x} bytes on {machine.name})")


def load_inputs(program: Program, inputs: dict[str, np.ndarray], gm: GlobalMemory | None):
    """Write the given tensors into GM: every `in` tensor (required unless timing-only), and
    `inout` and `const` tensors when given (else they start as zeros)."""
    loadable = {t.name: t for t in program.tensors if t.role in ("in", "inout", "const")}
    for name in inputs:
        if name not in loadable:
            known = ", ".join(t.name for t in program.inputs) or "none"
            raise InputError(f"'{name}' is not an input tensor of the program (inputs: {known})")
    for tensor in loadable.values():
        if tensor.name not in inputs:
            if tensor.role != "in" or gm is None:  # timing-only runs need no data
                continue
            raise InputError(f"missing input '{tensor.name}' ({tensor.dtype}"
                             f"{list(tensor.shape)})")
        value = np.asarray(inputs[tensor.name])
        if tuple(value.shape) != tuple(tensor.shape):
            raise InputError(f"input '{tensor.name}' has shape {list(value.shape)}, the tensor "
                             f"is {tensor.dtype}{list(tensor.shape)}")
        if gm is None:
            continue
        data = np.ascontiguousarray(convert(value, tensor.dtype))
        gm.write_bytes(tensor.address, data.view(np.uint8).reshape(-1))


def read_outputs(program: Program, gm: GlobalMemory) -> dict[str, np.ndarray]:
    """The `out`/`inout` tensors of the program, read back from GM."""
    outputs = {}
    for tensor in program.outputs:
        raw = gm.read_bytes(tensor.address, tensor.nbytes)
        outputs[tensor.name] = raw.view(np_dtype(tensor.dtype)).reshape(tensor.shape).copy()
    return outputs


def build_report(program: Program, machine, sim: Simulator, cycles: int, timing_only: bool,
                 engines: tuple[str, ...] = MODELLED_ENGINES):
    """The `Report` of one chip's simulator after its run."""
    engines = list(engines)
    stalls: dict[str, int] = {}
    for core in sim.cores:
        for cause, n in core.stalls.items():
            stalls[cause] = stalls.get(cause, 0) + n
    kernels = [
        KernelTime(name, span[0], span[1] - span[0], moved[0], moved[1])
        for name, span, moved in zip(sim.kernel_names, sim.kernel_spans, sim.kernel_hbm)
        if span[0] >= 0
    ]
    peak = max((machine.peak_flops(dt) for dt, _ in machine.mx_rates
                if dt in ("bf16", "f16")), default=0.0)
    return Report(
        machine=machine.name, clock_hz=machine.clock_hz, chips=1, cores=machine.cores,
        engines=engines, cycles=cycles, instructions=sim.instructions,
        engine_instructions=sim.engine_instructions, flops=sim.flops,
        hbm_read_bytes=sim.hbm_read, hbm_write_bytes=sim.hbm_write, timing_only=timing_only,
        busy_cycles=[dict(zip(engines, core.busy)) for core in sim.cores],
        stall_cycles=stalls, kernels=kernels, peak_flops_per_second=peak,
        overlap_cycles=[dma_compute_overlap(core, engines) for core in sim.cores],
        hbm_bytes_per_second=machine.hbm_bandwidth,
        l2_read_bytes=sim.l2.read_bytes if sim.l2 else 0,
        l2_hit_bytes=sim.l2.hit_bytes if sim.l2 else 0,
        flops_by_dtype={("other" if dt is None else dt): n
                        for dt, n in sim.flops_by_dtype.items()},
        peak_flops_by_dtype={dt: machine.peak_flops(dt) for dt, _ in machine.mx_rates},
    )


__all__ = ["RunResult", "run_program"]
