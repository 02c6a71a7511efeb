"""The cycle-approximate interpreter of M890 programs (DESIGN.md section 8).

    from runtime import run_program, RunResult
    result = run_program(program, machine, inputs, timing_only=False, max_instructions=None,
                         trace=False)

See `runtime.interpreter.run_program` for the contract, runtime/engine.py for the timing
model, and runtime/report.py / runtime/trace.py for what a run reports.
"""

from runtime.interpreter import RunResult, run_program
from runtime.report import Report

__all__ = ["Report", "RunResult", "run_program"]
