"""The op table (compiler/graph/ops.py): every op has every facet, the layers read them, and
an op added through the table alone compiles, fuses, matches the reference and is fuzzed
(the walk-through "How to add an op" in docs/internals.md)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from backend_helpers import compile_and_run
from backend_helpers import machine as compiled_machine
from zhenwu.compiler.backend.kernel_ir import Vec
from zhenwu.compiler.backend.lower import may_be_immediate
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.frontend.builtins import BUILTINS
from zhenwu.compiler.fuzz import generator
from zhenwu.compiler.fuzz.campaign import check_program
from zhenwu.compiler.graph import opdocs
from zhenwu.compiler.graph.ir import Op, TensorType, Value
from zhenwu.compiler.graph.opfacets import OUT, Step
from zhenwu.compiler.graph.ops import OPS, register_op, unary_op, unregister_op
from zhenwu.compiler.passes.fuse import epilogue_ok, fusable_elementwise
from zhenwu.isa.instructions import INSTRUCTIONS

FRONTEND_FORMS = ("unary", "binary", "operator", "reduce", "special")


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_has_every_facet(name):
    op = OPS[name]
    assert op.frontend is not None and op.frontend.form in FRONTEND_FORMS
    assert op.frontend.name or op.frontend.operator, "an op .zt spells somehow"
    assert op.doc and "|" not in op.doc  # one cell of the generated table
    assert op.fuzz is not None
    assert op.fuzz.template or op.fuzz.step or op.fuzz.not_drawn
    lowerings = [op.vector is not None, op.reduce_instr is not None, bool(op.kernel)]
    assert sum(lowerings) == 1, "one way to lower it"
    if op.vector is not None:
        vector = op.vector
        variants = [vector.steps, vector.int_steps or ()] + [s for _, _, s in vector.attr_steps]
        for step in (step for steps in variants for step in steps):
            definition = INSTRUCTIONS[step.instr]  # a real instruction of the ISA
            assert definition.engine == "VX"
            if step.cond is not None:
                assert step.cond in definition.suffixes[0].values
            assert len(step.srcs) == len(definition.operands) - 3  # dst ... rows, cols
    if op.reduce_instr is not None:
        assert INSTRUCTIONS[op.reduce_instr].group == "reductions"
    if op.fusion == "elementwise" and op.arity:
        assert op.vector is not None, "an elementwise op with operands runs on the VX"
    if op.fusion == "elementwise" and op.arity == 2:
        assert op.verb, "a binary op names its verb in diagnostics"
    if op.frontend.form == "unary" and not op.float_only:  # integer-valued on integers
        for value in (-3, 0, 5):
            want = op.reference([np.asarray(value, np.int32)], {})
            assert op.int_math(value) == int(want)


def test_the_frontend_spells_every_op_its_entry_names():
    for name, op in OPS.items():
        if op.frontend.name is not None:
            assert op.frontend.name in BUILTINS, name
    # the generic forms take the entry's parameters and defaults
    assert BUILTINS["gelu"].params == ["x", "approximate"]
    assert BUILTINS["gelu"].defaults == {"approximate": True}
    assert BUILTINS["sum"].params == ["x", "axis", "keepdims"]


def test_the_docs_list_every_op_as_the_table_says():
    text = opdocs.DOC.read_text()
    assert opdocs.updated(text) == text, "run `python -m zhenwu.compiler.graph.opdocs`"
    for name in OPS:
        assert f"| `{name}` |" in text


def test_the_fuzzer_draws_every_op_of_the_table():
    unary, binary = generator.unary_forms(), generator.binary_forms()
    by_step = {}
    for name, op in OPS.items():
        if op.fuzz.template:
            assert name in (unary if op.arity == 1 else binary), name
        elif op.fuzz.step:
            assert hasattr(generator.ProgramBuilder, f"step_{op.fuzz.step}"), name
            by_step[name] = op.fuzz.step
    assert [name for name, op in OPS.items() if op.fuzz.not_drawn] == ["shard"]
    # the steps named really produce their ops
    seen = Counter()
    for seed in range(150):
        fn = load_program("fuzz.zt", text=generator.random_program(seed))
        seen.update(op.kind for op in fn.ops)
    assert {name for name in by_step if not seen[name]} == set()


def _op(kind: str, dtypes: tuple[str, ...], attrs=None) -> Op:
    values = tuple(Value(i, TensorType(dt, (4, 4))) for i, dt in enumerate(dtypes))
    result = OPS[kind].infer(tuple(v.type for v in values), attrs or {})
    return Op(9, kind, values, attrs or {}, Value(9, result), None, None)


def test_immediates_follow_the_instructions_operand_kinds():
    # a float immediate where the step's InstrDef operand takes one
    assert may_be_immediate(_op("add", ("f32", "f32")), 0)
    assert may_be_immediate(_op("lt", ("f32", "f32")), 1)
    assert may_be_immediate(_op("pow", ("f32", "f32")), 1)
    assert may_be_immediate(_op("where", ("bool", "f32", "f32")), 2)
    # refused: VSEL's condition is a tile, a unary op's source is a tile, and integer
    # division rewrites its divisor in place
    assert not may_be_immediate(_op("where", ("bool", "f32", "f32")), 0)
    assert not may_be_immediate(_op("exp", ("f32",)), 0)
    assert not may_be_immediate(_op("div", ("i32", "i32")), 0)
    assert not may_be_immediate(_op("div", ("i32", "i32")), 1)
    assert not may_be_immediate(_op("pow", ("i32", "i32")), 1)


def test_fusion_asks_the_table():
    assert fusable_elementwise(_op("div", ("f32", "f32")))
    assert not fusable_elementwise(_op("div", ("i32", "i32")))  # rewrites an operand
    assert not fusable_elementwise(_op("iota", (), {"n": 4, "dtype": "i32"}))
    assert epilogue_ok(_op("gelu", ("f32",), {"approximate": True}))
    assert not epilogue_ok(_op("gelu", ("f32",), {"approximate": False}))  # reads x late
    assert not epilogue_ok(_op("lt", ("f32", "f32")))
    assert not epilogue_ok(_op("where", ("bool", "f32", "f32")))


# ---------------------------------------------------------------- "How to add an op"

def _softsign() -> None:
    """The walk-through's op: softsign(x) = x / (1 + |x|), one entry, three VX steps."""
    register_op(unary_op(
        "softsign", lambda x: x / (1.0 + np.abs(x)),
        (Step("VABS"), Step("VADD", (OUT, 1.0)), Step("VDIV", ("in0", OUT))),
        "x / (1 + |x|)", fuzz="softsign({x})", float_only=True))


@pytest.fixture
def softsign():
    _softsign()
    try:
        yield OPS["softsign"]
    finally:
        unregister_op("softsign")
    assert "softsign" not in BUILTINS and "softsign" not in generator.unary_forms()


def test_an_op_added_through_the_table_compiles_fuses_and_matches(softsign):
    source = ("fn main(x: f32[96, 200], y: f32[96, 200]) -> f32[96, 200] {\n"
              "    return softsign(x * y) + y\n}\n")
    for level in (0, 2):
        _, compiled, _, _ = compile_and_run(source, opt_level=level)
        assert compiled.kernel_count == (3 if level == 0 else 1)  # fused with mul and add
    kernels = compiled.kernels.kernels
    ops = [s.op for nest in kernels[0].nests for s in nest.statements() if isinstance(s, Vec)]
    assert ops == ["MUL", "ABS", "ADD", "DIV", "ADD"]
    # integer arguments become f32 (float_only), numbers are computed at check time
    compile_and_run("fn main(x: i32[8, 16]) -> f32[8, 16] { return softsign(x) * softsign(1.0) }",
                    opt_level=2)
    # it reads x after writing its result: not run in place on a matmul's accumulator
    _, compiled, _, _ = compile_and_run(
        "fn main(x: f32[32, 48], w: f32[48, 64]) -> f32[32, 64] { return softsign(x @ w) }",
        opt_level=2)
    assert compiled.kernel_count == 2


def test_an_op_added_through_the_table_is_fuzzed(softsign):
    assert generator.unary_forms()["softsign"] == "softsign({x})"
    # the unary step draws it among the table's forms: one program of such steps checked
    for seed in range(200):
        builder = generator.ProgramBuilder(generator.RandomChooser(random.Random(seed)))
        builder.new_param((7, 33))
        builder.step_unary()
        if "softsign(" in builder.lines[-1]:
            break
    else:
        raise AssertionError("the unary step never drew softsign")
    text = builder.text([builder.values[-1]])
    assert "softsign(" in text
    check_program(text, seed=seed)


def test_an_unknown_builtin_is_a_diagnostic_again_once_removed():
    _softsign()
    unregister_op("softsign")
    from zhenwu.isa.errors import ZhenwuError

    with pytest.raises(ZhenwuError, match="unknown function 'softsign'"):
        load_program("t.zt", text="fn main(x: f32[4]) -> f32[4] { return softsign(x) }")


# ---------------------------------------------------------- "How to add an instruction"

@pytest.fixture
def vsoftsign(monkeypatch):
    """The walk-through's instruction: VSOFTSIGN, one `InstrDef` on the special-function
    unit (as an entry of isa/instructions/vector.py's `_SFU` table would make it), and an op
    whose table entry computes with it."""
    from zhenwu.isa.instructions import BY_OPCODE, INSTRUCTIONS, vector

    opcode = 0x7B
    assert opcode not in BY_OPCODE  # the next free opcode of the SFU range
    definition = vector._vx(
        "VSOFTSIGN", opcode, "dst = src / (1 + |src|) (computed in f32)",
        [vector.DST, vector.SRC, vector.ROWS, vector.COLS],
        vector._unary(lambda x: x / (1 + np.abs(x))), vector._sfu_cost(False),
        group=vector.GROUP_SFU, dtypes=vector.FLOAT_VX_DTYPES, unit="SFU")
    monkeypatch.setitem(INSTRUCTIONS, "VSOFTSIGN", definition)
    monkeypatch.setitem(BY_OPCODE, opcode, definition)
    register_op(unary_op("softsign", lambda x: x / (1.0 + np.abs(x)), "VSOFTSIGN",
                         "x / (1 + |x|)", fuzz="softsign({x})", float_only=True))
    try:
        yield definition
    finally:
        unregister_op("softsign")


def test_an_instruction_added_as_one_instrdef_assembles_encodes_and_runs(vsoftsign):
    from zhenwu.isa.encoding import decode_program, encode_program

    _, compiled, _, _ = compile_and_run(
        "fn main(x: bf16[96, 200], y: bf16[96, 200]) -> bf16[96, 200] {\n"
        "    return softsign(x) * y\n}\n", opt_level=2)
    assert compiled.kernel_count == 1
    assert "VSOFTSIGN.bf16" in compiled.asm_text
    assert decode_program(encode_program(compiled.program)) == compiled.program
    nest = compiled.kernels.kernels[0].nests[0]
    assert [s.op for s in nest.statements() if isinstance(s, Vec)] == ["SOFTSIGN", "MUL"]


# ---------------------------------------------------------- "How to add a fused kernel"

def match_silu(fn, users, producers, outputs):
    """The walk-through's matcher: `x * sigmoid(x)` where only the product reads the
    sigmoid (it refuses a sigmoid used elsewhere or stored: that value must reach HBM)."""
    for op in fn.ops:
        if op.kind != "mul":
            continue
        for gate, other in (op.inputs, op.inputs[::-1]):
            sig = producers.get(gate.id)
            if (sig is not None and sig.kind == "sigmoid" and sig.inputs[0] is other
                    and [u.id for u in users[sig.id]] == [op.id] and sig.id not in outputs):
                yield (sig.id, op.id), "x * sigmoid(x)"
                break


def lower_silu(low, ops):
    """The walk-through's lowering: the fused map nest, as a kernel named `silu`."""
    from dataclasses import replace

    low.lower_elementwise(ops)
    low.kernels[-1] = replace(low.kernels[-1], name=f"silu_{len(low.kernels) - 1}")


@pytest.fixture
def silu_kernel(monkeypatch):
    from zhenwu.compiler.backend.groups import register_group_lowering, unregister_group_lowering
    from zhenwu.compiler.passes import fuse

    monkeypatch.setitem(fuse.KERNEL_MATCHERS, "silu", (match_silu, "SiLU", "one pass"))
    register_group_lowering("silu", lower_silu)
    try:
        yield
    finally:
        unregister_group_lowering("silu")


def test_a_fused_kernel_added_by_a_matcher_and_a_lowering(silu_kernel):
    from zhenwu.compiler.passes.fuse import fuse_function

    source = ("fn main(x: f32[96, 200], y: f32[96, 200]) -> f32[96, 200] {\n"
              "    return silu(x + y) * y\n}\n")
    _, compiled, _, _ = compile_and_run(source, opt_level=2)
    # a matched kernel is closed: the add before it and the mul after it are kernels of
    # their own (without the matcher the three are one fused kernel)
    assert [k.name for k in compiled.kernels.kernels] == ["add_0", "silu_1", "mul_2"]
    _, plan = fuse_function(compiled.graph)
    assert any("as one SiLU kernel (x * sigmoid(x)): one pass" in d for d in plan.decisions)
    # refused: the sigmoid is an output too, so the greedy grouping fuses it (one kernel)
    _, compiled, _, _ = compile_and_run(
        "fn main(x: f32[96, 200]) -> (f32[96, 200], f32[96, 200]) {\n"
        "    s = sigmoid(x)\n    return x * s, s\n}\n", opt_level=2)
    assert [k.name for k in compiled.kernels.kernels] == ["fused_0"]


def test_a_fused_kernel_of_a_whole_op_added_by_a_claim_and_a_lowering(monkeypatch):
    """The walk-through's second form: a test-only lowering claims 2x2 max pools (group
    `pool2x2`, the pool kernel renamed) ahead of the max-pool lowering; a 3x3 pool falls
    through to that one."""
    from dataclasses import replace

    from zhenwu.compiler.backend import groups
    from zhenwu.compiler.backend.groups import FusedTarget, WholeOpLowering
    from zhenwu.compiler.backend.pool import lower_pool_group
    from zhenwu.compiler.passes import default_graph_pipeline, get_pass, run_pipeline

    def lower(low, ops):
        lower_pool_group(low, ops)
        low.kernels[-1] = replace(low.kernels[-1], name=f"pool2x2_{len(low.kernels) - 1}")

    def refusal(op, producers, machine):
        return None if tuple(op.attrs["kernel"]) == (2, 2) else "not a 2x2 window"

    monkeypatch.setattr(groups, "WHOLE_OP_LOWERINGS", list(groups.WHOLE_OP_LOWERINGS))
    monkeypatch.setitem(groups.GROUP_LOWERINGS, "pool2x2", lower)
    groups.register_whole_op_lowering(
        WholeOpLowering("2x2-pool", "maxpool2d", "pool2x2", refusal, "one test kernel"),
        first=True)
    two = ("fn main(x: f32[2, 4, 8, 8]) -> f32[2, 4, 4, 4] {\n    return maxpool2d(x, 2)\n}\n")
    _, compiled, _, _ = compile_and_run(two, opt_level=2, cores=2)
    assert [k.name for k in compiled.kernels.kernels] == ["pool2x2_0"]
    fused = run_pipeline(load_program("t.zt", text=two),
                         default_graph_pipeline(FusedTarget(compiled_machine())) + [get_pass("fuse")])
    assert any("the 2x2-pool lowering claims it (one test kernel)" in d
               for d in fused.attrs["fusion"].decisions)
    three = ("fn main(x: f32[2, 4, 10, 10]) -> f32[2, 4, 4, 4] {\n"
             "    return maxpool2d(x, 3, stride=2)\n}\n")
    _, compiled, _, _ = compile_and_run(three, opt_level=2, cores=2)
    assert [k.name for k in compiled.kernels.kernels] == ["maxpool_0"]
    with pytest.raises(ValueError, match="exists"):
        groups.register_whole_op_lowering(
            WholeOpLowering("2x2-pool", "maxpool2d", "pool2x2", refusal, ""))
    with pytest.raises(ValueError, match="no group lowering"):
        groups.register_whole_op_lowering(
            WholeOpLowering("other", "avgpool2d", "nowhere", refusal, ""))


def test_a_vec_statement_names_an_instruction_of_the_isa():
    assert Vec("CMP.lt", "f32", "out", ("a", "b")).instr is INSTRUCTIONS["VCMP"]
    assert Vec("CMP.lt", "f32", "out", ("a", "b")).cond == "lt"
    assert Vec("EXP", "f32", "out", ("a",)).cond is None
    with pytest.raises(ValueError, match="VEPX is no instruction"):
        Vec("EPX", "f32", "out", ("a",))
