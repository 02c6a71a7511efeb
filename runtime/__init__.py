"""The cycle-approximate interpreter of M890 programs (docs/design.md section 8).

    from zhenwu.runtime import run_program, RunResult
    result = run_program(program, machine, inputs, timing_only=False, max_instructions=None,
                         trace=False)
    result.outputs   # dict[str, np.ndarray]: `out`/`inout` tensors by name, directive order
    result.report    # runtime.report.Report: .cycles .seconds .flops .hbm_read_bytes
                     # .hbm_write_bytes .busy_cycles .busy_fraction .stall_cycles
                     # .instructions .kernels .overlap_cycles; .to_json() .to_text()
    result.trace     # Chrome/Perfetto trace event dict (trace=True) or None

Every core of the chip runs the program (SPMD; `GETID` tells the cores apart). The results
come from isa's reference semantics, the cycles from a discrete-event model of each core's
scalar unit and in-order engine queues with the costs of isa's cost formulas and a shared HBM
bandwidth server; both are deterministic. A trap (race, deadlock, out-of-bounds access, an
event or queue left at HALT, a runaway program) raises `isa.errors.ChipTrap`; inputs that do
not fit the program raise `isa.errors.InputError`.

Modules: interpreter.py (run_program), decode.py (Program -> ops, once), engine.py (the
timing model and checks), context.py (isa's ExecContext), memory.py (lazy GM, L1/ACC),
bandwidth.py (shared servers), races.py (vector clocks), report.py, trace.py, blas.py.
"""

from zhenwu.runtime.interpreter import RunResult, run_program
from zhenwu.runtime.report import Report

__all__ = ["Report", "RunResult", "run_program"]
