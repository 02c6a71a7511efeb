"""Horizontal fusion of independent kernels and the persistent-kernel option
(compiler/backend/merge.py): kernel counts, what is refused, and the numbers against the
reference with several tiles per core (the race detector runs on every functional run)."""

from __future__ import annotations

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.backend.kernel_ir import Kernel, Load, Nest, Store, View
from zhenwu.compiler.backend.merge import merge_all, merge_independent

# a q/k/v projection of one row, then three independent kernels: the norms of the q and k
# heads and a scaled copy of v (decode's shape, small)
QKV = """
fn main(x: bf16[1, 512], w: bf16[3072, 512], g: f32[128]) -> (bf16[1, 16, 128],
        bf16[1, 4, 128], bf16[1, 4, 128]) {
    qkv = x @ transpose(w)
    q = reshape(qkv[:, :2048], [1, 16, 128])
    k = reshape(qkv[:, 2048:2560], [1, 4, 128])
    v = reshape(qkv[:, 2560:], [1, 4, 128])
    return cast(rmsnorm(q, g), bf16), cast(rmsnorm(k, g), bf16), v * 2.0
}
"""

# every kernel depends on the one before: nothing to merge horizontally
CHAIN = """
fn main(x: bf16[4, 512], g: f32[512], w: bf16[2048, 512]) -> bf16[4, 2048] {
    a = cast(rmsnorm(cast(x, f32), g), bf16)
    return cast(silu(a @ transpose(w)) * 2.0, bf16)
}
"""


def test_independent_kernels_after_a_product_are_one_kernel():
    _, compiled, result, _ = compile_and_run(QKV, opt_level=2)
    names = [k.name for k in compiled.kernels.kernels]
    assert len(names) == 2, names          # the product, then one kernel of three nests
    assert len(compiled.kernels.kernels[1].nests) == 3
    assert len(result.report.kernels) == 2


def test_dependent_kernels_stay_apart():
    _, compiled, _, _ = compile_and_run(CHAIN, opt_level=2)
    assert len(compiled.kernels.kernels) >= 2
    assert all(len(k.nests) == 1 for k in compiled.kernels.kernels)


@pytest.mark.parametrize("source", [QKV, CHAIN])
def test_persistent_is_one_kernel_with_the_same_numbers(source):
    _, plain, plain_run, _ = compile_and_run(source, opt_level=2)
    _, compiled, result, _ = compile_and_run(source, opt_level=2, persistent=True)
    assert len(compiled.kernels.kernels) == 1
    assert sum(len(k.nests) for k in compiled.kernels.kernels) == sum(
        len(k.nests) for k in plain.kernels.kernels)
    # one launch instead of several: fewer cycles
    assert result.report.cycles < plain_run.report.cycles


def _kernel(name: str, reads: list[str], writes: list[str]) -> Kernel:
    def view(tensor):
        return View(tensor, "f32", 0, (0,), (16,), (1,), (0,))
    step = tuple(Load(f"l{i}", view(t)) for i, t in enumerate(reads))
    final = tuple(Store(view(t), "b") for t in writes)
    nest = Nest((16,), (16,), ("p",), (), (), step, final)
    return Kernel(name, (), (nest,))


def test_merge_refuses_read_after_write_write_after_read_and_write_after_write():
    a = _kernel("a_0", ["x"], ["t"])
    reads_t = _kernel("b_1", ["t"], ["u"])        # reads what a writes
    writes_x = _kernel("c_2", ["y"], ["x"])       # writes what a reads
    writes_t = _kernel("d_3", ["y"], ["t"])       # writes what a writes
    free = _kernel("e_4", ["x", "y"], ["v"])      # reads what a reads: independent
    for second in (reads_t, writes_x, writes_t):
        assert [k.name for k in merge_independent([a, second])] == ["a_0", second.name]
    merged = merge_independent([a, free])
    assert len(merged) == 1 and len(merged[0].nests) == 2
    # a run stops at the first dependent kernel and starts again from it
    assert [len(k.nests) for k in merge_independent([a, free, reads_t, writes_x])] == [2, 2]
    assert len(merge_all([a, reads_t, writes_x])) == 1
