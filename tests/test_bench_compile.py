"""`zhenwu bench --compile`: fresh-process compile times (the times are not asserted)."""

import json

from zhenwu.compiler.cli import main
from zhenwu.compiler.commands.bench_compile import chain_program, op_count


def test_chain_program_has_the_ops_it_names(tmp_path):
    path = tmp_path / "chain.zt"
    path.write_text(chain_program(1000))
    assert op_count(path) == 1000


def test_bench_compile_json_rows(capsys):
    assert main(["bench", "--compile", "--repeat", "1", "--json", "mlp_512"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "mlp_512" and row["ops"] == 5 and row["runs"] == 1
    assert row["median_seconds"] > 0


def test_bench_compile_unknown_program_is_a_usage_error(capsys):
    assert main(["bench", "--compile", "nope"]) == 2
    assert "unknown program 'nope'" in capsys.readouterr().err
