"""Generated programs (the fuzz generator's, seeded) and every sample, compiled at -O0 and run
with every interpreter check on (races, deadlock, bounds, events back to 0 at HALT): none
traps, and each matches the reference evaluator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from backend_helpers import compile_and_run
from zhenwu.compiler.backend.kernel_ir import parse_kernels, print_kernels
from zhenwu.isa.errors import InputError

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.zt"))
# small sizes for the symbolic dims of the samples
SIZES = {"B": 2, "S": 8, "N": 5, "C": 37}


def sample_shapes(path: Path) -> dict[str, int]:
    """Small sizes for every symbolic dim of a sample's entry."""
    from zhenwu.compiler.frontend import load_program

    try:
        load_program(str(path), shapes={"ZZ_PROBE": 1})
    except InputError as err:
        match = re.search(r"symbolic dims: ([\w, ]+)\)", err.message)
        if match and match.group(1) != "none":
            return {name.strip(): SIZES.get(name.strip(), 3)
                    for name in match.group(1).split(",")}
    return {}


@pytest.mark.parametrize("machine_name", ["m890", "z810e"])
@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample(path, machine_name):
    compile_and_run(path.read_text(), machine_name=machine_name, shapes=sample_shapes(path))


@pytest.mark.parametrize("seed", range(40))
def test_generated_program(seed):
    from zhenwu.compiler.fuzz.generator import random_program

    _, compiled, _, _ = compile_and_run(random_program(1000 + seed), seed=seed)
    text = compiled.kernels_text  # the Kernel IR of every program prints and parses back
    assert parse_kernels(text) == compiled.kernels
    assert print_kernels(parse_kernels(text)) == text
