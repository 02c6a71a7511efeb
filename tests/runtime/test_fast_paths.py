"""The interpreter's shortcuts give exactly the cycles of the plain paths they replace.

- ALU instructions step on the core's registers with their operands resolved at decode
  (runtime/decode.py `_alu_step`) instead of running `execute` through a ScalarContext;
- the L2 works a box's lines out once per shape and offset in a block and shifts that
  template for every other box of the kind (runtime/l2.py `L2Cache.lines`).

Each program runs with the shortcuts and with them turned off (the plain paths patched back
in), and every number of the report must agree: cycles, bytes, L2 hits, busy and stall cycles.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from runtime_helpers import machine_with
from zhenwu.runtime import decode, run_program
from zhenwu.runtime.l2 import L2Cache, Lines, box_lines

SOURCES = {
    "gemm": "fn main(a: bf16[256, 512], b: bf16[512, 384]) -> bf16[256, 384] {\n"
            "    return a @ b\n}\n",
    "softmax": "fn main(x: f16[96, 1536]) -> f16[96, 1536] {\n"
               "    return cast(softmax(x, axis=-1), f16)\n}\n",
    "layernorm": "fn main(x: f16[64, 1024], g: f16[1024], b: f16[1024]) -> f16[64, 1024] {\n"
                 "    return cast(layernorm(x, g, b, eps=1e-5), f16)\n}\n",
    "gelu": "fn main(x: f16[98304]) -> f16[98304] {\n    return cast(gelu(x), f16)\n}\n",
}


def _compiled(name: str, machine):
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program

    return compile_function(load_program(f"<{name}>", text=SOURCES[name]), machine,
                            CompileOptions()).program


def _plain_lines(self, address, shape, strides, itemsize):
    lines, nbytes = box_lines(address, shape, strides, itemsize, self.line_bytes)
    return Lines(lines, nbytes, self.line_bytes, self.shift)


def _numbers(report) -> dict:
    return {"cycles": report.cycles, "instructions": report.instructions,
            "hbm": (report.hbm_read_bytes, report.hbm_write_bytes),
            "l2": (report.l2_read_bytes, report.l2_hit_bytes), "flops": report.flops,
            "busy": report.busy_cycles, "stalls": report.stall_cycles,
            "kernels": [(k.name, k.start_cycle, k.cycles) for k in report.kernels]}


def _run(program, machine, *, timing_only: bool, fast_forward: bool) -> dict:
    rng = np.random.default_rng(0)
    inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32)
              for t in program.inputs}
    return _numbers(run_program(program, machine, inputs, timing_only=timing_only,
                                fast_forward=fast_forward).report)


@pytest.mark.parametrize("machine_name", ["m890", "a100"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_shortcuts_give_the_cycles_of_the_plain_paths(name, machine_name, monkeypatch):
    machine = machine_with(4, machine_name)
    program = _compiled(name, machine)
    fast = {mode: _run(program, machine, timing_only=mode != "functional",
                       fast_forward=mode == "fast-forward")
            for mode in ("functional", "timing-only", "fast-forward")}
    with monkeypatch.context() as patch:
        patch.setattr(decode, "_alu_step", lambda *args: None)
        patch.setattr(L2Cache, "lines", _plain_lines)
        plain = {mode: _run(program, machine, timing_only=mode != "functional",
                            fast_forward=mode == "fast-forward")
                 for mode in ("functional", "timing-only", "fast-forward")}
    assert fast == plain
    assert fast["functional"] == fast["timing-only"]  # timing-only changes no cycle either


def test_shifted_box_lines_equal_the_lines_worked_out_directly():
    """A box moved by whole blocks: the template's blocks move, nothing else changes; checked
    against the direct computation on random boxes at random addresses."""
    rng = random.Random(0)
    for _ in range(300):
        line = rng.choice([64, 128])
        block = line * rng.choice([1, 4, 32, 64])
        cache = L2Cache(1 << 20, line, block, rng.choice([None, line, 1024]))
        item = rng.choice([1, 2, 4])
        rows, cols = rng.randrange(1, 40), rng.randrange(1, 300)
        stride = rng.choice([cols, cols + rng.randrange(0, 500), 0, 3 * block]) * item
        address = rng.randrange(0, 1 << 30)
        box = (address, (rows, cols), (stride, item), item)
        # the template, its written rows worked out first (a shifted copy must move them)
        template = cache.lines(address % block + block * rng.randrange(0, 9), *box[1:])
        cache.partly_written_rows(template)
        shifted, direct = cache.lines(*box), _plain_lines(cache, *box)
        for field in ("blocks", "masks", "full", "line_block", "line_bit", "line_nbytes"):
            mine, theirs = getattr(shifted, field), getattr(direct, field)
            assert (mine is None) == (theirs is None), field
            if mine is not None:
                assert mine.tolist() == theirs.tolist(), field
        assert (shifted.total, shifted.lines) == (direct.total, direct.lines)
        assert cache.partly_written_rows(shifted).tolist() == \
            cache.partly_written_rows(direct).tolist()


def test_fast_forward_waits_for_a_rhythm_not_a_racing_scalar():
    """16 batches of q @ k (one k step per tile, 16 tiles per core): core 0's scalar queues
    its first tiles' instructions and takes back edges 23 cycles apart while its engines
    fall behind. Those periods look alike, but the backlog grows: jumping over them made
    the kernel 22% fast (25,001 cycles against 31,904). A jump now needs every core at the
    same place with the same backlog at the back edges it compares."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    source = ("fn main(q: bf16[16, 1024, 128], k: bf16[16, 128, 1024]) "
              "-> bf16[16, 1024, 1024] { return q @ k }\n")
    program = compile_function(load_program("<qk>", text=source), machine,
                               CompileOptions()).program
    full = _run(program, machine, timing_only=True, fast_forward=False)
    assert _run(program, machine, timing_only=True, fast_forward=True)["cycles"] == full["cycles"]


def test_multipass_softmax_fast_forwards_to_its_full_simulation():
    """A 4096 x 4096 f16 softmax on the A100 read in three passes (validate's form): before
    the backlog condition its first periods (scalars racing ahead) were taken for a rhythm
    and the run was 13% fast (64.2 us against 73.6)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine

    machine = load_machine("a100")
    source = ("fn main(x: f16[4096, 4096]) -> f16[4096, 4096] {\n"
              "    return cast(softmax(x, axis=-1), f16)\n}\n")
    program = compile_function(load_program("<softmax>", text=source), machine,
                               CompileOptions(multipass_rows=True)).program
    full = _run(program, machine, timing_only=True, fast_forward=False)["cycles"]
    fast = _run(program, machine, timing_only=True, fast_forward=True)["cycles"]
    assert abs(fast - full) <= 0.02 * full


def test_a_jump_leaves_the_l2_as_the_skipped_periods_would(monkeypatch):
    """A layer norm whose rows are too long for L1 reads the tensor once per pass (mean,
    variance, write); the tensor (16 MiB) is twice the L2 (8 MiB). A jump in a pass must
    leave in the L2 what the skipped iterations would have, and move the transfers queued
    before it to the rows they now read: without that, the next pass hit the lines the
    skipped fills would have evicted (4% fast here; 12-14% on the A100's 8192 x 4096 and
    4096 x 8192 validation points)."""
    from dataclasses import replace

    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.frontend import load_program
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import fastforward

    made = []
    original = fastforward.FastForward.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(fastforward.FastForward, "__init__", recording)
    machine = replace(load_machine("a100"), cores=16, l2_bytes=8 << 20)
    source = ("fn main(x: f16[1024, 8192], g: f16[8192], b: f16[8192]) -> f16[1024, 8192] {\n"
              "    return cast(layernorm(x, g, b, eps=1e-5), f16)\n}\n")
    # compiled for a large L2, so that its passes each sweep the whole tensor (for this
    # L2 they would run group of rows by group of rows, fusion._row_groups)
    program = compile_function(load_program("<layernorm>", text=source),
                               replace(machine, l2_bytes=1 << 30), CompileOptions()).program
    full = _run(program, machine, timing_only=True, fast_forward=False)["cycles"]
    fast = _run(program, machine, timing_only=True, fast_forward=True)["cycles"]
    (ff,) = made
    assert ff.replays >= 1
    assert abs(fast - full) <= 0.01 * full
