"""Helpers for the interpreter's tests (imported as `runtime_helpers`): run assembly text on a
machine, optionally with another core count."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from zhenwu.isa.asm import parse_assembly
from zhenwu.isa.machine import MACHINES_DIR, load_machine, parse_machine
from zhenwu.runtime import run_program

FIXTURES = Path(__file__).parent / "fixtures"


def machine_with(cores: int | None = None, name: str = "m890"):
    """The built-in machine, with its core count changed when `cores` is given."""
    if cores is None:
        return load_machine(name)
    text = (MACHINES_DIR / f"{name}.toml").read_text()
    text = re.sub(r"(\[core\][^\[]*?count\s*=\s*)\d+", rf"\g<1>{cores}", text, count=1)
    return parse_machine(text, f"{name}-{cores}cores")


def run_asm(text: str, inputs: dict | None = None, *, cores: int | None = 1, machine=None,
            **options):
    program = parse_assembly(text, "test.s")
    machine = machine or machine_with(cores)
    if inputs is None:
        rng = np.random.default_rng(0)
        inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32)
                  for t in program.inputs}
    return run_program(program, machine, inputs, **options)
