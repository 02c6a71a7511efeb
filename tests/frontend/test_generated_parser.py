"""The `.zt` parser is lark's stand-alone parser generated from grammar.lark
(compiler/frontend/_zt_lalr.py). It must be current: made from this grammar, and parsing
programs to the trees lark builds from the grammar itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from zhenwu.compiler.frontend import _zt_lalr, parser, regen_parser

ROOT = Path(__file__).resolve().parents[2]


def test_generated_parser_matches_the_grammar():
    assert _zt_lalr.GRAMMAR_SHA256 == regen_parser.grammar_digest(), (
        "grammar.lark changed: run `python -m zhenwu.compiler.frontend.regen_parser`")


def _programs() -> list[Path]:
    found = sorted(ROOT.glob("samples/**/*.zt")) + [regen_parser.HERE / "prelude.zt"]
    assert len(found) > 5
    return found


def test_generated_parser_builds_lark_s_trees():
    lark = pytest.importorskip("lark")
    reference = lark.Lark(regen_parser.GRAMMAR.read_text(), parser="lalr",
                          propagate_positions=True, maybe_placeholders=True,
                          postlex=parser._NewlinesInBrackets())
    for path in _programs():
        text = path.read_text()
        assert parser._lark().parse(text) == reference.parse(text), path
