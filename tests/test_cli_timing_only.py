"""`zhenwu run --timing-only` gives cycles for a program far larger than this host's memory:
it draws no inputs and the interpreter allocates no data."""

from __future__ import annotations

import resource
import subprocess
import sys

from zhenwu.isa.machine import load_machine


def _limit_memory():
    limit = 3 << 30  # 3 GiB of address space: the 4 GiB input below cannot be made
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_timing_only_runs_a_program_larger_than_the_host_allows(tmp_path):
    program = tmp_path / "big.zt"
    program.write_text("fn main(x: f32[1073741824]) -> f32[1073741824] {\n"
                       "    return relu(x)\n}\n")
    run = subprocess.run([sys.executable, "-m", "zhenwu", "run", str(program), "--timing-only"],
                         capture_output=True, text=True, preexec_fn=_limit_memory, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "out0: f32 [1073741824]" in run.stdout
    cycles = int(run.stdout.split("cycles ")[1].split()[0])
    # 4 GiB in and 4 GiB out over the chip's HBM bandwidth; within 1.5x of that bound.
    bound = 2 * 4 * 2**30 / load_machine("m890").hbm_bytes_per_cycle
    assert bound < cycles < 1.5 * bound
