"""A nest's setup (operands loaded once per core, compiler/backend/codegen.py): the engine
that reads them waits for them, not the scalar stream, and a core with no tile of the nest
skips it. Numbers against the reference with several tiles per core and with cores that
have no tile (the race detector runs on every functional run)."""

from __future__ import annotations

import pytest
from backend_helpers import compile_and_run, machine

# decode's q/k/v projection of one row, then the q and k heads' norms (a weight row and, for
# q, a table row loaded once per core: the setup) and a scaled copy of v, as three nests of
# one kernel side by side
QKV = """
fn main(x: bf16[1, 512], w: bf16[3072, 512], g: f32[128], c: f32[1, 128]) -> (
        bf16[1, 16, 128], bf16[1, 4, 128], bf16[1, 4, 128]) {
    qkv = x @ transpose(w)
    q = reshape(qkv[:, :2048], [1, 16, 128])
    k = reshape(qkv[:, 2048:2560], [1, 4, 128])
    v = reshape(qkv[:, 2560:], [1, 4, 128])
    return cast(rmsnorm(q, g) * c[:, None, :], bf16), cast(rmsnorm(k, g), bf16), v * 2.0
}
"""


def _text(compiled) -> list[str]:
    return [str(instr) for instr in compiled.program.instructions]


@pytest.mark.parametrize("cores", [None, 2, 1])
def test_row_nests_setup_waits_on_the_vector_engine(cores):
    _, compiled, result, _ = compile_and_run(QKV, opt_level=2, cores=cores)
    row_kernel = compiled.kernels.kernels[-1]
    assert [bool(nest.setup) for nest in row_kernel.nests] == [True, True, False]
    # the q nest is 2 tiles (16 heads, 8 a tile), the k nest 1
    assert [nest.parallel_tiles for nest in row_kernel.nests[:2]] == [2, 1]
    text = _text(compiled)
    # a setup (q's weight and table rows, k's weight row) of a nest of at most one tile per
    # core is waited for by the vector engine and skipped by a core without a tile of its
    # nest; with 1 core the q nest is 2 tiles on it and its scalar waits (the race detector
    # sees both forms)
    one_wave = 2 if cores in (None, 2) else 1
    assert sum(line.startswith("WAIT.VX") for line in text) == 0   # all predicated
    waits = [line for line in text if line.startswith("@r") and "WAIT.VX" in line]
    assert len(waits) == one_wave
    # the setup loads of those nests run only on a core with a tile: q's two rows, k's one
    setup_loads = [line for line in text if line.startswith("@r") and "DMA.LD" in line]
    assert len(setup_loads) == (3 if one_wave == 2 else 1)
    if cores is None:
        # the setup's loads and the first tile's are in flight together: the kernel takes its
        # launch and less than three HBM round trips (a load, the compute, the store), where
        # waiting for the setup first took one more
        m890 = machine()
        cycles = result.report.kernels[-1].cycles
        assert cycles - m890.kernel_launch_cycles < 3 * m890.hbm_latency, cycles


def test_products_setup_still_waits_on_the_matrix_engine():
    # a resident RMSNorm prologue: only MMAs read its rows; no skip (its loads go first)
    source = """
fn main(x: bf16[1, 512], g: f32[512], w: bf16[1024, 512]) -> bf16[1, 1024] {
    return cast(cast(rmsnorm(cast(x, f32), g), bf16) @ transpose(w), bf16)
}
"""
    _, compiled, _, _ = compile_and_run(source, opt_level=2, cores=4)
    assert len(compiled.kernels.kernels) == 1 and compiled.kernels.kernels[0].nests[0].setup
    text = _text(compiled)
    assert any(line.startswith("WAIT.MX") for line in text)
    assert not any(line.startswith("@") for line in text)
