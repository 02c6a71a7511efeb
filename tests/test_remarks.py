"""Optimisation remarks (`zhenwu explain`, `--remarks`; compiler/remarks.py) and the
latency-aware bound of `zhenwu bench` (compiler/roofline.py's `latency_bound_cycles`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from zhenwu.compiler.remarks import explain, kernel_compulsory_bytes, load_bytes

import zhenwu

ROOT = Path(__file__).resolve().parents[1]
M890 = ROOT / "isa" / "machines" / "m890.toml"
CAUSAL = "arange({s})[:, None] >= arange({s})[None, :]"


def _remarks(source: str, kind: str | None = None, source_pass: str | None = None,
             machine="m890", run: bool = False) -> list[str]:
    prog = zhenwu.compile(source, machine=machine)
    report = prog.run(timing_only=True)[1] if run else None
    return [r.message for r in explain(prog, report).remarks
            if (kind is None or r.kind == kind)
            and (source_pass is None or r.source == source_pass)]


def _machine(tmp_path, **changes) -> str:
    """m890.toml with some `key = value` lines replaced."""
    text = M890.read_text()
    for key, value in changes.items():
        text, count = re.subn(rf'(?m)^{key} = ("[^"]*"|\S+)', f"{key} = {value}", text)
        assert count == 1, key
    path = tmp_path / "machine.toml"
    path.write_text(text)
    return str(path)


# -- attention: one program per reason the matcher refuses -----------------------------------

REFUSED = {
    "boolean input mask": ("""
fn main(q: bf16[2, 32, 16], k: bf16[2, 32, 16], v: bf16[2, 32, 16],
        mask: bool[32, 32]) -> bf16[2, 32, 16] {
    s = q @ transpose(k, [0, 2, 1]) * 0.25
    return softmax(where(mask, s, -inf), axis=-1) @ v
}""", "the mask is the boolean input 'mask', not i >= j"),
    "strict mask": ("""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[:, None] > arange(24)[None, :]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""", ("the mask drops the diagonal (i > j: the first query sees no key), not i >= j "
         "(query index >= key index)")),
    "upper triangle": ("""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {
    mask = arange(24)[None, :] >= arange(24)[:, None]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""", "the mask is j >= i (the upper triangle), not i >= j"),
    "inexact arange": ("""
fn main(q: f32[130, 16], k: f32[130, 16], v: f32[130, 16]) -> f32[130, 16] {
    causal = arange(130, dtype=i8)[:, None] >= arange(130, dtype=i8)[None, :]
    return softmax(where(causal, q @ transpose(k), -inf), axis=-1) @ v
}""", "the mask's arange(130) is i8, which does not hold 0..129 exactly"),
    "causal cross attention": ("""
fn main(q: f32[16, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[16, 16] {
    mask = arange(16)[:, None] >= arange(24)[None, :]
    return softmax(where(mask, q @ transpose(k), -inf), axis=-1) @ v
}""", ("the mask is [16, 24] against 16 queries and 24 keys: the kernel's causal mask is "
      "i >= j over equal lengths")),
    "finite fill": (f"""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {{
    mask = {CAUSAL.format(s=24)}
    return softmax(where(mask, q @ transpose(k), -30000.0), axis=-1) @ v
}}""", ("the mask fills -30000, not -inf: the kernel skips the masked keys, which is "
          "exact only when they weigh 0")),
    "fp8 scores": (f"""
fn main(q: fp8[40, 16], k: fp8[40, 16], v: fp8[40, 16]) -> fp8[40, 16] {{
    causal = {CAUSAL.format(s=40)}
    return softmax(where(causal, q @ transpose(k), -inf), axis=-1) @ v
}}""", ("the softmax or the product is fp8: only f32, bf16 and f16 have the -inf and range "
       "the kernel's f32 scores reproduce")),
    "narrowing cast": (f"""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {{
    mask = {CAUSAL.format(s=24)}
    s = cast(where(mask, q @ transpose(k), -inf), f16)
    return cast(softmax(s, axis=-1), f32) @ v
}}""", "the scores are cast f32 -> f16 before the softmax, which narrows their range"),
    "negative scale after the mask": (f"""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> f32[24, 16] {{
    mask = {CAUSAL.format(s=24)}
    return softmax(where(mask, q @ transpose(k), -inf) * -0.5, axis=-1) @ v
}}""", "a scale after the mask is not positive (the kernel scales before it masks)"),
    "tensor scale": ("""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16], t: f32[24, 24]) -> f32[24, 16] {
    return softmax(q @ transpose(k) * t, axis=-1) @ v
}""", ("the scores are scaled (mul) by something other than a finite "
                      "scalar constant")),
    "accumulation dtype": ("""
fn main(q: bf16[24, 16], k: bf16[24, 16], v: bf16[24, 16]) -> f32[24, 16] {
    p = softmax(matmul(q, transpose(k), acc=f32), axis=-1)
    return p @ cast(v, f32)
}""", "the first product has its own accumulation dtype or mixes dtypes"),
    "scores also an output": ("""
fn main(q: f32[24, 16], k: f32[24, 16], v: f32[24, 16]) -> (f32[24, 16], f32[24, 24]) {
    s = q @ transpose(k)
    return softmax(s, axis=-1) @ v, s
}""", "%4 matmul of the chain is an output of the program"),
    "softmax over the queries": ("""
fn main(q: f32[16, 8], k: f32[16, 8], v: f32[16, 8]) -> f32[16, 8] {
    return softmax(q @ transpose(k), axis=0) @ v
}""", "the softmax does not normalise the last axis (the keys)"),
    # written out, not the builtin: the matcher reads the ops, not their origin
    "hand-written softmax over the queries": ("""
fn main(q: f32[16, 8], k: f32[16, 8], v: f32[16, 8]) -> f32[16, 8] {
    s = q @ transpose(k)
    e = exp(s - max(s, axis=0, keepdims=true))
    return e / sum(e, axis=0, keepdims=true) @ v
}""", "the softmax does not normalise the last axis (the keys)"),
    "reshape after the softmax": ("""
fn main(q: f32[4, 8], k: f32[8, 8], v: f32[8, 8]) -> f32[4, 8] {
    p = softmax(reshape(q @ transpose(k), [4, 2, 4]), axis=-1)
    return reshape(p, [4, 8]) @ v
}""", "a reshape between the softmax and the second product changes the keys' dim"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_attention_refusal_names_its_reason(name):
    source, reason = REFUSED[name]
    assert _remarks(source, "missed", "attention") == [
        f"softmax not fused into attention: {reason}"]


def test_the_refusal_is_located_at_the_second_product():
    source, _ = REFUSED["boolean input mask"]
    prog = zhenwu.compile(source)
    (remark,) = [r for r in explain(prog).remarks if r.source == "attention"]
    assert (remark.span.line, remark.span.col) == (5, 12)
    assert remark.format().startswith("<string>:5:12: missed [attention]: softmax not fused")


def test_accepted_attention_has_no_missed_remark():
    source = f"""
fn main(q: bf16[2, 32, 16], k: bf16[2, 32, 16], v: bf16[2, 32, 16]) -> bf16[2, 32, 16] {{
    mask = {CAUSAL.format(s=32)}
    s = q @ transpose(k, [0, 2, 1]) * 0.25
    return softmax(where(mask, s, -inf), axis=-1) @ v
}}"""
    prog = zhenwu.compile(source)
    remarks = explain(prog).remarks
    assert [r.kind for r in remarks] == ["passed"]
    assert "one flash-attention kernel" in remarks[0].message
    assert prog.kernel_count == 1


# -- fusion decisions -------------------------------------------------------------------------

def test_a_program_with_no_missed_fusion_gives_no_missed_remark():
    source = """
fn main(x: bf16[64, 128], w: bf16[128, 64], b: bf16[64]) -> bf16[64, 64] {
    return relu(x @ w + b)
}"""
    prog = zhenwu.compile(source)
    remarks = explain(prog, prog.run(timing_only=True)[1]).remarks
    assert prog.kernel_count == 1
    assert remarks and all(r.kind == "passed" for r in remarks)
    assert [r.message for r in remarks] == [
        "fuse %4 add into the matmul kernel of %3: same iteration space",
        "fuse %5 relu into the matmul kernel of %3: same iteration space"]


def test_a_missed_fusion_is_located_and_says_where_the_op_went():
    source = """
fn main(x: f32[64, 128], w: f32[128, 64]) -> (f32[64, 64], f32[64, 1]) {
    y = x @ w
    return y, max(exp(y), axis=-1, keepdims=true)
}"""
    prog = zhenwu.compile(source)
    missed = [r for r in explain(prog).remarks if r.kind == "missed"]
    assert [r.format() for r in missed] == [
        ("<string>:4:19: missed [fuse]: not fused: %3 exp into the matmul kernel of %2: %2 is "
        "also used elsewhere (it is in kernel 1)")]
    assert prog.kernel_count == 2


def test_every_op_is_placed_in_a_kernel_or_said_to_be_a_view():
    prog = zhenwu.compile(ROOT / "samples" / "mlp.zt", shapes={"B": 4})
    explained = explain(prog)
    kernels = {i for k in prog.kernel_ir.kernels for i in k.op_ids}
    for placement in explained.ops:
        assert (placement.kernel is not None) == (placement.op_id in kernels)
        assert placement.span is not None
    assert [p.kernel for p in explained.ops] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]


# -- lints ------------------------------------------------------------------------------------

MLP = """
fn main(x: bf16[4, 64], w1: bf16[64, 32], b1: f32[32], w2: bf16[32, 8]) -> f32[4, 8] {
    h = relu(x @ w1 + b1)
    return h @ w2
}"""


def test_f32_promotion_lint_takes_the_rate_from_the_machine(tmp_path):
    assert _remarks(MLP, "warning") == [
        ("h is f32 because b1 is f32, so h @ w2 runs at the f32 rate (1/4 of bf16): "
        "cast(h, bf16) would be 4x faster")]
    half = _machine(tmp_path, f32="0.5")
    assert _remarks(MLP, "warning", machine=half) == [
        ("h is f32 because b1 is f32, so h @ w2 runs at the f32 rate (1/2 of bf16): "
        "cast(h, bf16) would be 2x faster")]
    # nothing to gain where f32 runs at the bf16 rate, or when the product is bf16 already
    assert _remarks(MLP, "warning", machine=_machine(tmp_path, f32="1.0")) == []
    assert _remarks(MLP.replace("h @ w2", "cast(h, bf16) @ w2").replace("f32[4, 8]",
                                                                        "bf16[4, 8]"),
                    "warning") == []


def test_strided_load_lint():
    source = """
fn main(x: f32[64, 128], y: f32[64, 64]) -> f32[64, 64] {
    return x[:, ::2] + y
}"""
    (warning,) = _remarks(source, "warning")
    assert warning.startswith("kernel 0 (add_0) reads x with no contiguous dim")


# -- per-kernel bytes -------------------------------------------------------------------------

def test_kernel_bytes_against_compulsory_without_an_l2(tmp_path):
    """Without an L2 every DMA byte is an HBM byte: the run's bytes per kernel are what the
    loads' tiles move plus the stores, and the remark names the re-read tensors."""
    machine = _machine(tmp_path, l2_bytes="0")
    prog = zhenwu.compile(ROOT / "samples" / "bench" / "gemm_small_bf16.zt", machine=machine)
    report = prog.run(timing_only=True)[1]
    explained = explain(prog, report)
    (kernel,) = prog.kernel_ir.kernels
    (summary,) = explained.kernels
    assert summary.compulsory_bytes == kernel_compulsory_bytes(kernel, prog.kernel_ir) \
        == 2 * 256 * 512 * 2 + 256 * 256 * 2
    loaded = load_bytes(kernel, prog.kernel_ir)
    assert summary.hbm_bytes == sum(loaded.values()) + 256 * 256 * 2
    assert summary.hbm_bytes == report.hbm_read_bytes + report.hbm_write_bytes
    (remark,) = [r for r in explained.remarks if r.source == "memory"]
    nest = kernel.nests[0]
    tile = "x".join(str(t) for t, k in zip(nest.tile, nest.kinds) if k == "p")
    ratio = summary.hbm_bytes / summary.compulsory_bytes
    assert remark.message.startswith(
        f"kernel 0 (matmul_0) moves {ratio:.1f}x its compulsory bytes "
        f"({summary.hbm_bytes:,} of {summary.compulsory_bytes:,} B): tile {tile} re-reads ")
    for name in ("a", "b"):
        factor = loaded[name] / (256 * 512 * 2)
        assert (f"{name} {factor:.1f}x" in remark.message) == (factor > 1.01)


def test_kernel_bytes_sum_to_the_run_total():
    prog = zhenwu.compile(ROOT / "samples" / "qwen_block.zt", shapes={"S": 32})
    report = prog.run(timing_only=True)[1]
    total = sum(k.hbm_read_bytes + k.hbm_write_bytes for k in report.kernels)
    assert total == report.hbm_read_bytes + report.hbm_write_bytes


# -- the command line ------------------------------------------------------------------------

def _zhenwu(capsys, *args: str) -> tuple[int, str, str]:
    """`zhenwu ARGS` in this process: (exit status, stdout, stderr)."""
    from zhenwu.compiler.cli import main

    try:
        status = main(list(args))
    except SystemExit as err:  # a usage error
        status = err.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_explain_text_and_json(tmp_path, capsys):
    path = tmp_path / "mlp.zt"
    path.write_text(MLP)
    status, out, err = _zhenwu(capsys, "explain", str(path))
    assert status == 0, err
    assert f"{path}: 2 kernels at -O2 on m890" in out
    assert f"{path}:4:12: %9 matmul -> kernel 1 (matmul_1)" in out
    assert f"{path}:4:12: warning [lint]: h is f32 because b1 is f32" in out
    data = json.loads(_zhenwu(capsys, "explain", str(path), "--json")[1])
    assert data["cycles"] > 0 and len(data["kernels"]) == 2
    assert all(k["hbm_bytes"] is not None for k in data["kernels"])
    assert {r["kind"] for r in data["remarks"]} == {"passed", "warning"}
    lint = next(r for r in data["remarks"] if r["kind"] == "warning")
    assert lint["location"] == f"{path}:4:12" and lint["pass"] == "lint"


def test_remarks_flag_on_compile_and_run(tmp_path, capsys):
    path = tmp_path / "mlp.zt"
    path.write_text(MLP)
    status, _, err = _zhenwu(capsys, "compile", str(path), "--remarks", "-o",
                             str(tmp_path / "out.s"))
    assert status == 0, err
    assert "warning [lint]: h is f32" in err
    status, out, err = _zhenwu(capsys, "run", str(path), "--timing-only", "--remarks")
    assert status == 0, err
    assert "warning [lint]: h is f32" in err and "cycles" in out
    status, _, err = _zhenwu(capsys, "run", str(path), "--reference", "--remarks")
    assert status == 2 and "--remarks" in err


# -- the latency-aware bound -----------------------------------------------------------------

def test_latency_bound_of_gemm_small_by_hand():
    """m890.toml: 32 cores x 16x16x16 MACs at 1.5 GHz, 4.0 TB/s, hbm_cycles 600,
    kernel_launch_seconds 2 us. 256 x 512 x 256 bf16: 2*256*512*256 flops over 2*32*4096
    per cycle = 256 cycles (memory: 655,360 B over 2,666.7 B/cycle = 245.8); one kernel:
    launch 3,000 cycles + its first load's round trip 600 + its last store 600."""
    from zhenwu.compiler.commands.bench import BENCH_DIR, run_one
    from zhenwu.compiler.roofline import kernel_latencies, latency_bound_cycles
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    prog = zhenwu.compile(BENCH_DIR / "gemm_small_bf16.zt")
    (latency,) = kernel_latencies(prog.kernel_ir, machine)
    assert (latency.launch_cycles, latency.first_load_cycles, latency.last_store_cycles) \
        == (3000, 600, 600)
    assert latency_bound_cycles(prog.graph_ir, prog.kernel_ir, machine) == 256 + 4200
    row = run_one(BENCH_DIR / "gemm_small_bf16.zt", machine, 2)
    assert row["latency_bound_cycles"] == 4456
    assert row["latency_efficiency"] == 4456 / row["cycles"] <= 1.0
    assert row["efficiency"] == 256 / row["cycles"]


def test_a_kernel_reading_what_an_earlier_one_wrote_waits_for_the_l2_only():
    from zhenwu.compiler.roofline import kernel_latencies
    from zhenwu.isa.machine import load_machine

    machine = load_machine("m890")
    prog = zhenwu.compile(ROOT / "samples" / "mlp.zt", shapes={"B": 4})
    first, second, third = kernel_latencies(prog.kernel_ir, machine)
    assert first.first_load_cycles == machine.hbm_latency
    assert second.first_load_cycles == third.first_load_cycles == machine.l2_latency
    assert {k.last_store_cycles for k in (first, second, third)} == {machine.hbm_latency}


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_programs_explain_every_kernel(seed):
    """The fuzzer's programs (compiler/fuzz/generator.py): every op of every kernel is
    placed in it, and every remark is of a known kind."""
    from zhenwu.compiler.fuzz.generator import random_program
    from zhenwu.compiler.remarks import KINDS

    prog = zhenwu.compile(random_program(seed))
    explained = explain(prog)
    placed = {p.op_id: p.kernel for p in explained.ops}
    for index, kernel in enumerate(prog.kernel_ir.kernels):
        assert all(placed[i] == index for i in kernel.op_ids)
    assert all(r.kind in KINDS for r in explained.remarks)
    json.dumps(explained.to_json())
