"""A fresh `zhenwu compile` imports no numpy (isa/lazy.py): that import was about a third of
compiling a small program in a new process. When this fails, the message names the module
whose import read a numpy attribute (a table of `np.exp` at import time: use
`numpy_function("exp")`, or build the table at first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys, traceback
culprit = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "ml_dtypes") and not culprit:
            stack = [f for f in traceback.extract_stack() if "zhenwu" in f.filename
                     or "/compiler/" in f.filename or "/isa/" in f.filename]
            culprit.append("".join(traceback.format_list(stack[-4:])))
        return None

sys.meta_path.insert(0, Watch())
from zhenwu.compiler import cli
status = cli.main(["compile", sys.argv[1], "-o", sys.argv[2]])
print("STATUS", status)
print("LOADED", "numpy" in sys.modules, "ml_dtypes" in sys.modules)
print(culprit[0] if culprit else "")
"""


def test_compile_imports_no_numpy(tmp_path):
    source = tmp_path / "mlp.zt"
    source.write_text("fn main(x: f32[64, 64], w: f32[64, 64], b: f32[64]) -> f32[64, 64] "
                      "{ return relu(x @ w + b) @ w }\n")
    done = subprocess.run([sys.executable, "-c", PROBE, str(source), str(tmp_path / "out.s")],
                          check=False, capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert "STATUS 0" in done.stdout, done.stdout + done.stderr
    assert "LOADED False False" in done.stdout, done.stdout
    assert (tmp_path / "out.s").read_text().count("MMA.f32.f32") == 2


LAZY_PROBE = r"""
import sys
sys.modules.pop("zipfile", None)  # some hosts import it at start-up (a site .pth file)
from zhenwu.compiler import cli
from zhenwu.compiler.frontend import checker
status = cli.main(["compile", sys.argv[1], "-o", sys.argv[2]])
print("STATUS", status, "PRELUDE PARSED", bool(checker._PRELUDE),
      "ZIPFILE", "zipfile" in sys.modules)
"""


def test_small_compile_skips_prelude_and_zipfile(tmp_path):
    """A program that calls no prelude composite never parses the prelude, and a compile
    never imports zipfile (only .npz inputs need it)."""
    source = tmp_path / "mlp.zt"
    source.write_text("fn main(x: f32[64, 64], w: f32[64, 64]) -> f32[64, 64] "
                      "{ return relu(x @ w) }\n")
    done = subprocess.run([sys.executable, "-c", LAZY_PROBE, str(source), str(tmp_path / "o.s")],
                          check=False, capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert "STATUS 0 PRELUDE PARSED False ZIPFILE False" in done.stdout, \
        done.stdout + done.stderr


def test_lazy_prelude_names_match_its_parse():
    """The prelude's names come from a scan of its `fn` lines; they must be exactly the
    functions its parse defines (else a composite would be missed or unknown)."""
    from zhenwu.compiler.frontend import ast
    from zhenwu.compiler.frontend.checker import PRELUDE, load_prelude

    parsed = [item.name for item in load_prelude().items if isinstance(item, ast.FnDef)]
    assert sorted(PRELUDE) == sorted(parsed)
    assert "softmax" in PRELUDE and PRELUDE["softmax"].name == "softmax"
    assert "nope" not in PRELUDE


MANY_PROBE = r"""
import sys
from zhenwu.compiler import cli
for path in sys.argv[2:]:
    assert cli.main(["compile", path, "-o", sys.argv[1]]) == 0, path
print("NUMPY", "numpy" in sys.modules)
"""


def test_compiling_programs_with_constants_imports_no_numpy(tmp_path):
    """Constants (a layernorm's eps, a softmax scale, a -inf mask) are rounded to their
    dtype without numpy (`round_float`), so compiling these imports none."""
    bench = ROOT / "samples" / "bench"
    programs = [bench / "layernorm.zt", bench / "qwen_block.zt",
                bench / "attention_causal_1024.zt",
                bench / "attention_forms" / "attn_einsum_seq_major.zt"]
    done = subprocess.run([sys.executable, "-c", MANY_PROBE, str(tmp_path / "o.bin"),
                           *map(str, programs)], check=False, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert "NUMPY False" in done.stdout, done.stdout + done.stderr


def test_round_float_is_numpy_s_rounding():
    import math
    import random
    import struct

    import numpy as np
    from zhenwu.compiler.graph.dtypes import np_dtype, round_float

    rng = random.Random(3)
    values = [0.0, -0.0, 1e-45, 2.0**-150, 65504.0, 65519.0, 65520.0, 3.4e38, 3.5e38, 1e300,
              math.pi, math.inf, -math.inf]
    for _ in range(3000):
        values.append(rng.choice((-1, 1)) * rng.random() * 2.0 ** rng.uniform(-150, 130))
        # bf16 ties and their neighbours: the round-to-even cases
        tie = struct.unpack("<f", struct.pack("<I", (rng.getrandbits(15) << 16) | 0x8000))[0]
        values += [tie, -tie, tie * (1 + 2.0**-40), tie * (1 - 2.0**-40)]
    with np.errstate(over="ignore"):
        for dtype in ("f32", "f16", "bf16", "fp8"):
            for value in values:
                want = float(np.asarray(value).astype(np_dtype(dtype)))
                got = round_float(value, dtype)
                assert (got == want and math.copysign(1, got) == math.copysign(1, want)) or (
                    math.isnan(got) and math.isnan(want)), (dtype, value, got, want)
    assert math.isnan(round_float(math.nan, "bf16"))
