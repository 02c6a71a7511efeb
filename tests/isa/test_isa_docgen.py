"""docs/isa.md is generated from the definitions and must not be stale."""

from __future__ import annotations

from pathlib import Path

from zhenwu.isa.docgen import generate
from zhenwu.isa.instructions import INSTRUCTIONS

DOC = Path(__file__).parents[2] / "docs" / "isa.md"


def test_docs_isa_md_is_up_to_date():
    assert DOC.read_text() == generate(), "docs/isa.md is stale: python -m zhenwu.isa.docgen > docs/isa.md"


def test_docs_cover_every_instruction_with_syntax_and_cost():
    text = generate()
    for defn in INSTRUCTIONS.values():
        section = text.split(f"### {defn.mnemonic}\n", 1)[1].split("\n### ", 1)[0]
        assert defn.syntax() in section
        assert f"Cost: {defn.cost_doc}." in section
        assert f"Semantics: {defn.summary}." in section
    assert "393 TFLOP/s" in text and "## Execution model" in text
