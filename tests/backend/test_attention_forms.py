"""The spellings of `zhenwu bench attention_forms` (samples/bench/attention_forms/) at small
sizes: each attention spelling is one flash kernel that writes only its output and reads q, k
and v once (no score matrix, no repeated K/V in HBM), and every spelling, attention or whole
transformer block, gives the reference's numbers with several tiles per core (functional
runs: the race detector sees the reused buffers)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from zhenwu.compiler.roofline import compulsory_bytes

FORMS = Path(__file__).resolve().parents[2] / "samples" / "bench" / "attention_forms"
ATTENTION = sorted(p for p in FORMS.glob("attn_*.zt"))
DECODES = sorted(p for p in FORMS.glob("decode_*.zt"))
BLOCKS = sorted(p for p in FORMS.glob("block_*.zt"))


def _small(path: Path, sizes: dict[str, int]) -> str:
    text = path.read_text()
    for name, value in sizes.items():
        text = re.sub(rf"^const {name} = \d+$", f"const {name} = {value}", text,
                      flags=re.MULTILINE)
    return text


def _run(text: str, inputs_scale: bool = False):
    """Compile at -O2 for the 16-core z810e, run functionally, compare with the reference."""
    from backend_helpers import machine
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import output_tolerance, relative_error
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.runtime import run_program

    fn = load_program("t.zt", text=text)
    inputs = prepare_inputs(fn, {}, 0)
    if inputs_scale:  # weights of a unit-variance layer (else bf16 rounding dominates)
        for param in fn.params:
            if param.name.startswith("w") and param.type.rank == 2:
                value = np.asarray(inputs[param.name], np.float32) / np.sqrt(
                    param.type.shape[0])
                inputs[param.name] = value.astype(inputs[param.name].dtype)
    target = machine("z810e")
    compiled = compile_function(fn, target, CompileOptions(opt_level=2))
    result = run_program(compiled.program, target, compiled.program_inputs(inputs))
    want = evaluate(fn, inputs)
    for got, ref, value in zip(compiled.graph_outputs(result), want, fn.outputs):
        assert relative_error(got, ref) <= output_tolerance(fn, value)
    return fn, compiled, result


@pytest.mark.parametrize("path", ATTENTION, ids=[p.stem for p in ATTENTION])
def test_attention_spelling_is_one_flash_kernel(path):
    # 16 heads x 2 query tiles of 128 on 16 cores: two tiles per core
    fn, compiled, result = _run(_small(path, {"S": 136}))
    assert compiled.kernel_count == 1
    assert compiled.kernels.kernels[0].name.startswith("flash_attention")
    report = result.report
    assert report.hbm_write_bytes == fn.outputs[0].type.nbytes
    # q, k and v once: the shared K/V of a group read through stride-0 views, not copied
    assert report.hbm_read_bytes == sum(p.type.nbytes for p in fn.params)
    assert report.hbm_read_bytes + report.hbm_write_bytes == compulsory_bytes(fn)


@pytest.mark.parametrize("path", BLOCKS, ids=[p.stem for p in BLOCKS])
def test_block_spelling_matches_the_reference(path):
    _, compiled, _ = _run(_small(path, {"S": 136, "D": 128, "F": 256}), inputs_scale=True)
    flash = [k for k in compiled.kernels.kernels if k.name.startswith("flash_attention")]
    assert len(flash) == 1
    # K and V reach the flash kernel through views: no kernel copies them to the heads
    assert not [k.name for k in compiled.kernels.kernels if k.name.startswith("reshape")]


def test_block_spellings_get_the_same_kernels():
    names = {path.stem: [k.name.rsplit("_", 1)[0] for k in _run(
        _small(path, {"S": 136, "D": 128, "F": 256}), inputs_scale=True)[1].kernels.kernels]
        for path in BLOCKS}
    assert len({tuple(kernels) for kernels in names.values()}) == 1, names


def test_every_spelling_has_a_kind():
    from zhenwu.compiler.commands.bench import groups, kind_of

    group = groups()["attention_forms"]
    kinds = [kind_of(p) for p in group.values()]
    assert kinds.count("attention") >= 8 and kinds.count("block") >= 3


def test_head_dims_and_cross_attention():
    for dim in (64, 128, 256):
        fn, compiled, result = _run(f"""
fn main(q: bf16[12, 40, {dim}], k: bf16[12, 300, {dim}], v: bf16[12, 300, {dim}]) -> bf16[12, 40, {dim}] {{
    return softmax(q @ transpose(k, [0, 2, 1]) * 0.125, axis=-1) @ v
}}""")
        assert compiled.kernel_count == 1
        assert result.report.hbm_write_bytes == fn.outputs[0].type.nbytes


DECODE = """
fn main(q: bf16[{b}, 16, 128], k: bf16[{b}, 2, {l}, 128], v: bf16[{b}, 2, {l}, 128]) -> bf16[{b}, 16, 128] {{
    qg = reshape(q, [{b}, 2, 8, 128])
    scores = einsum("bkgd,bktd->bkgt", qg, k) * 0.08838834764831845
    p = softmax(scores, axis=-1)
    return reshape(einsum("bkgt,bktd->bkgd", p, v), [{b}, 16, 128])
}}"""


@pytest.mark.parametrize("b", [1, 3])
def test_decode_attention_splits_the_keys_across_cores(b, monkeypatch):
    # one query per sequence, 8 query heads per KV head: b * 2 query tiles on 16 cores
    fn, compiled, result = _run(DECODE.format(b=b, l=2048))
    assert compiled.kernel_count == 1
    nests = compiled.kernels.kernels[0].nests
    assert len(nests) == 2  # the key ranges, then their combination
    assert nests[0].parallel_tiles > 16 // 2  # more than half the cores stream keys
    # K and V are read once; the partial outputs are the only other traffic
    kv = 2 * fn.params[1].type.nbytes
    assert kv <= result.report.hbm_read_bytes <= 1.1 * kv
    # against one tile per query block (a core per KV head streams all its keys)
    from zhenwu.compiler.backend import flash

    monkeypatch.setattr(flash, "_key_splits", lambda *args: 1)
    _, unsplit, unsplit_result = _run(DECODE.format(b=b, l=2048))
    assert len(unsplit.kernels.kernels[0].nests) == 1
    assert result.report.cycles < 0.8 * unsplit_result.report.cycles


@pytest.mark.parametrize("path", DECODES, ids=[p.stem for p in DECODES])
def test_decode_spelling_reads_the_cache_once(path):
    fn, compiled, result = _run(_small(path, {"L": 2048}))
    assert compiled.kernel_count == 1
    kv = fn.params[1].type.nbytes + fn.params[2].type.nbytes
    assert kv <= result.report.hbm_read_bytes <= 1.1 * kv
