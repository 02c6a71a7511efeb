"""Collective kernels are built as instructions (no assembly text) and print exactly as the
text-writing implementation they replaced did.

`tests/data/collective_golden.json` holds, per case, a digest (the first 20 hex digits of
the SHA-256) and the line count of every chip's printed program (`print_program`, chips
joined with a `;; chip k` line), or the error the case gives. The goldens were derived from
the implementation that wrote assembly lines and read them back (main at be5b1d4), before
the kernels were built directly: the printed text is identical, register and event numbers
included, for every kind and algorithm on 1-32 chips, the specs the compiler builds itself
(out-of-place all-gather, odd groups, pipelined and rhd hierarchical all-reduces), the
asynchronous all-reduce's start and done regions, and the collective kernels of SPMD
programs. A change that legitimately changes the code regenerates them with
`python tests/test_collective_golden.py --write` and says why.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from zhenwu.compiler.backend.emitter import Emitter
from zhenwu.compiler.collective_codegen import (
    CollectiveSpec,
    Region,
    collective_program,
    collective_programs,
    emit_async_allreduce_done,
    emit_async_allreduce_start,
)
from zhenwu.isa.asm import print_program
from zhenwu.isa.errors import UsageError
from zhenwu.isa.machine import load_machine
from zhenwu.isa.program import TensorDecl

GOLDEN = Path(__file__).parent / "data" / "collective_golden.json"
M890 = load_machine("m890")
KINDS = ("allreduce", "allgather", "reducescatter", "alltoall")
ALGORITHMS = (None, "direct", "oneshot", "ring", "rhd")
SIZES = (4096, 1 << 20, 64 << 20)   # latency-bound, middle, chunked ring / pipelined

PROGRAM_CASES = [(kind, size, chips, algorithm) for kind in KINDS for chips in (1, 2, 3, 4, 8)
                 for algorithm in ALGORITHMS for size in SIZES]
PROGRAM_CASES += [("allreduce", size, chips, algorithm) for size in SIZES
                  for chips in (16, 24, 32)
                  for algorithm in (None, "hierarchical(rhd)", "hierarchical(ring)")]

SPEC_CASES = [(f"allgather-out-of-place-{algorithm}",
               {"kind": "allgather", "algorithm": algorithm, "group": (0, 1, 2, 3),
                "src": ("piece", 0, 1000, "f32"), "dst": ("buf", 0, 4000, "f32")})
              for algorithm in ("direct", "ring", "rhd")]
SPEC_CASES += [
    ("ring-odd-group", {"kind": "allreduce", "algorithm": "ring", "group": (1, 3, 5, 7, 6),
                        "src": ("buf", 64, 4000, "bf16"), "chunks": 3}),
    ("alltoall-one-chip", {"kind": "alltoall", "algorithm": "direct", "group": (2,),
                           "src": ("buf", 0, 256, "f32"), "dst": ("out", 0, 256, "f32")}),
    ("allreduce-one-chip", {"kind": "allreduce", "algorithm": "ring", "group": (0,),
                            "src": ("buf", 0, 256, "f32")}),
    *[(f"hier-pipelined-{pipeline}",
       {"kind": "allreduce", "algorithm": "hierarchical(ring)", "group": tuple(range(16)),
        "src": ("buf", 0, 4000, "f32"), "chips_per_node": 8, "pipeline": pipeline})
      for pipeline in (2, 3)],
    ("hier-rhd-spec", {"kind": "allreduce", "algorithm": "hierarchical(rhd)",
                       "group": tuple(range(32)), "src": ("buf", 0, 4096, "f32"),
                       "chips_per_node": 8, "chunks": 2}),
]
SPEC_TENSORS = [TensorDecl("buf", "f32", (8192,), 0, "inout"),
                TensorDecl("piece", "f32", (1000,), 0x10000, "in"),
                TensorDecl("out", "f32", (64,), 0x20000, "out")]

ASYNC_CASES = [((0, 1), 31), ((0, 1, 2, 3), 30), ((2, 6), 5), (tuple(range(8)), 31)]

_MLP = """
fn main(x: bf16[T, D], w1: bf16[D, F@tp], b1: f32[F@tp], w2: bf16[F@tp, D],
        b2: f32[D]) -> f32[T, D] {{
    h = relu(x @ w1 + b1)
    return {result}
}}
"""
SPMD_CASES = [
    ("mlp-sync", _MLP.format(result="h @ w2 + b2"), {"T": 32, "D": 64, "F": 128}, "tp=4", 1),
    ("mlp-async", _MLP.format(result="softmax(h @ w2 + b2, axis=-1)"),
     {"T": 32, "D": 64, "F": 128}, "tp=2", 4),
    ("two-axes", """
fn main(x: f32[B@dp, D], w1: f32[D, F@tp],
        w2: f32[F@tp, D]) -> (f32[B@dp, D@tp], f32[B, D], f32[]) {
    y = relu(x @ w1) @ w2
    return y, y, sum(y * y)
}
""", {"B": 16, "D": 32, "F": 64}, "dp=2,tp=4", None),
    ("alltoall-rs", """
fn main(x: f32[B@tp, D], w: f32[D@tp, E]) -> (f32[B, D@tp], f32[B, E@tp]) {
    return x * 2.0, x @ w
}
""", {"B": 16, "D": 32, "E": 8}, "tp=4", None),
    ("pinned-rs", """
fn main(x: f32[B, D], w1: f32[D, F@tp], w2: f32[F@tp, D]) -> f32[B, D] {
    y = shard(relu(x @ w1) @ w2, "tp, _")
    return y * 2.0
}
""", {"B": 16, "D": 32, "F": 64}, "tp=4", None),
]
COLLECTIVE_KERNELS = ("all_reduce_", "all_gather_", "reduce_scatter_", "all_to_all_")


def _digest(texts: list[str]) -> dict:
    joined = "".join(f";; chip {chip}\n{text}" for chip, text in enumerate(texts))
    return {"lines": joined.count("\n"),
            "sha256": hashlib.sha256(joined.encode()).hexdigest()[:20]}


def _collective_text(text: str) -> str:
    """The collective kernels of a printed SPMD chip program (its compute segments'
    kernels are named `s<i>_...`: they belong to compute codegen, not to this test)."""
    out, keep = [], False
    for line in text.splitlines():
        if line.startswith(".kernel "):
            keep = line.split()[1].startswith(COLLECTIVE_KERNELS)
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def _spmd_case(tmp: Path, text: str, shapes: dict, mesh_text: str, chunks) -> list[str]:
    from zhenwu.compiler.backend.pipeline import CompileOptions
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.shard import compile_spmd, parse_mesh, shard_function

    path = tmp / "prog.zt"
    path.write_text(text)
    fn = load_program(str(path), shapes=shapes)
    mesh = parse_mesh(mesh_text)
    compiled = compile_spmd(shard_function(fn, mesh), M890, CompileOptions(), mesh.chips,
                            overlap_chunks=chunks)
    return [_collective_text(text) for text in compiled.asm]


def current(tmp: Path) -> dict:
    """Every case's digest from the code as it is."""
    out = {}
    for kind, size, chips, algorithm in PROGRAM_CASES:
        name = f"{kind}-{size}-{chips}-{algorithm}"
        try:
            programs, cost = collective_programs(kind, size, chips, M890, algorithm=algorithm)
        except UsageError as err:
            out[name] = {"error": err.message}
            continue
        out[name] = {**_digest([print_program(p) for p in programs]),
                     "algorithm": cost.algorithm}
    for name, args in SPEC_CASES:
        args = dict(args, src=Region(*args["src"]))
        if "dst" in args:
            args["dst"] = Region(*args["dst"])
        spec = CollectiveSpec(label="c", **args)
        out["spec-" + name] = _digest([print_program(collective_program(spec, chip,
                                                                        SPEC_TENSORS))
                                       for chip in spec.group])
    for group, core in ASYNC_CASES:
        texts = []
        for chip in group:
            emit = Emitter()
            emit.tensor(TensorDecl("buf", "f32", (1000,), 0, "inout"))
            emit_async_allreduce_start(emit, group, chip, Region("buf", 0, 4000, "f32"), core,
                                       "ar_start")
            emit_async_allreduce_done(emit, [(core, len(group)), (core - 1, 2)], "ar_done")
            emit.op("HALT")
            texts.append(print_program(emit.program()))
        out[f"async-{len(group)}-{group[0]}-{core}"] = _digest(texts)
    for name, text, shapes, mesh, chunks in SPMD_CASES:
        out["spmd-" + name] = _digest(_spmd_case(tmp, text, shapes, mesh, chunks))
    return out


def test_collectives_print_as_the_golden(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    now = current(tmp_path)
    assert sorted(now) == sorted(golden)
    changed = [name for name in golden if now[name] != golden[name]]
    assert not changed, f"{len(changed)} cases print differently: {changed[:10]}"
    # the cases cover every kind and every lowered algorithm, errors aside
    algorithms = {entry.get("algorithm") for entry in golden.values()}
    assert {"direct", "oneshot", "ring", "rhd", "hierarchical(ring)",
            "hierarchical(rhd)"} <= algorithms


def test_collectives_read_no_assembly_text():
    """Building every kind of collective program never reads text: a fresh process that
    builds them has not imported the assembler (isa/asm.py) nor lark."""
    code = (
        "import sys\n"
        "from zhenwu.isa.machine import load_machine\n"
        "from zhenwu.compiler.collective_codegen import collective_programs\n"
        "m = load_machine('m890')\n"
        "for kind in ('allreduce', 'allgather', 'reducescatter', 'alltoall'):\n"
        "    for algorithm in (None, 'direct', 'ring'):\n"
        "        if not (kind == 'alltoall' and algorithm == 'ring'):\n"
        "            collective_programs(kind, 1 << 20, 8, m, algorithm=algorithm)\n"
        "collective_programs('allreduce', 64 << 20, 16, m)\n"
        "collective_programs('allreduce', 4096, 8, m, algorithm='oneshot')\n"
        "collective_programs('allreduce', 4096, 8, m, algorithm='rhd')\n"
        "print(sorted(n for n in sys.modules if n == 'lark' or n.startswith('lark.')\n"
        "             or n in ('zhenwu.isa.asm', 'zhenwu.isa.asm_syntax')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        GOLDEN.write_text(json.dumps(current(Path(folder)), indent=0, sort_keys=True,
                                     separators=(",", ":")) + "\n")


def test_spmd_programs_hold_their_segments_code(tmp_path):
    """Each chip's program holds every segment's instructions as compiled (its HALT
    dropped), in kernels named `s<i>_<kernel>`, with GM tensor names that the chip's tensor
    table declares (a segment's names renamed to the boundary or `s<i>_` names)."""
    from dataclasses import replace

    from zhenwu.compiler.backend.pipeline import CompileOptions
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.shard import compile_spmd, parse_mesh, shard_function
    from zhenwu.isa.program import Symbol

    def kernels(program) -> dict:
        return {m.name: m.index for m in program.markers if m.kind == "kernel"}

    def anonymous(instructions) -> list:
        return [replace(i, operands=tuple(Symbol("?", op.offset) if isinstance(op, Symbol)
                                          else op for op in i.operands))
                for i in instructions if i.mnemonic != "HALT"]

    _, text, shapes, mesh_text, chunks = SPMD_CASES[1]   # overlapped: async regions too
    path = tmp_path / "prog.zt"
    path.write_text(text)
    mesh = parse_mesh(mesh_text)
    compiled = compile_spmd(shard_function(load_program(str(path), shapes=shapes), mesh),
                            M890, CompileOptions(), mesh.chips, overlap_chunks=chunks)
    assert len(compiled.segments) >= 2
    for program in compiled.programs:
        declared = {t.name for t in program.tensors}
        symbols = {op.name for i in program.instructions for op in i.operands
                   if isinstance(op, Symbol)}
        assert symbols <= declared
        held = kernels(program)
        everything = anonymous(program.instructions)
        for segment in compiled.segments:
            index = segment.fn.name.rsplit("_s", 1)[1]
            own = segment.compiled.program
            first, at = next(iter(kernels(own).items()))
            start = held[f"s{index}_{first}"] - at   # its preamble before its first kernel
            body = anonymous(own.instructions)
            assert everything[start:start + len(body)] == body
            for name, offset in kernels(own).items():
                assert held[f"s{index}_{name}"] == start + offset
        others = [name for name in held if not name.startswith("s")]
        assert others and all(name.startswith(COLLECTIVE_KERNELS) for name in others)
