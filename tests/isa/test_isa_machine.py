"""Machine descriptions: the numbers, the derived peaks, the validation, `zhenwu machines`."""

from __future__ import annotations

import dataclasses
import json

import pytest
from zhenwu.compiler.cli import main
from zhenwu.isa.errors import MachineError
from zhenwu.isa.machine import MACHINES_DIR, load_machine, parse_machine

M890_TEXT = (MACHINES_DIR / "m890.toml").read_text()


def test_m890_and_z810e_numbers():
    m890, z810e = load_machine("m890"), load_machine("z810e")
    assert m890.peak_flops("bf16") == 32 * 1.5e9 * 16**3 * 2 == 393.216e12
    assert z810e.peak_flops("bf16") == 16 * 1.0e9 * 16**3 * 2 == 131.072e12
    assert m890.peak_flops("bf16") / z810e.peak_flops("bf16") == 3.0
    assert m890.peak_flops("fp8") == 2 * m890.peak_flops("bf16")
    assert m890.peak_flops("f32") == m890.peak_flops("bf16") / 4
    assert m890.peak_flops_per_cycle("bf16") == 32 * 4096 * 2
    assert (m890.hbm_bytes, z810e.hbm_bytes) == (144_000_000_000, 96_000_000_000)
    assert (m890.link_total_bandwidth, z810e.link_total_bandwidth) == (800e9, 700e9)
    assert (m890.l1_bytes, m890.acc_bytes, m890.smem_bytes) == (1 << 20, 256 << 10, 16 << 10)
    assert (m890.l2_bytes, z810e.l2_bytes) == (64 << 20, 32 << 20)
    assert m890.hbm_bandwidth == 4.0e12 and z810e.hbm_bandwidth == 2.4e12
    assert m890.hbm_bytes_per_cycle == pytest.approx(4.0e12 / 1.5e9)
    assert m890.ridge_point("bf16") == pytest.approx(98.304)
    assert z810e.ridge_point("bf16") == pytest.approx(131.072 / 2.4)
    assert (m890.hbm_latency, m890.l2_latency, m890.mx_fill_latency, m890.vx_latency,
            m890.sfu_latency, m890.event_wake_latency) == (600, 200, 32, 8, 24, 4)
    assert (m890.ld_bytes_per_cycle, m890.st_bytes_per_cycle, m890.queue_depth) == (256, 128, 16)
    assert (m890.link_alpha, m890.nic_bandwidth, m890.nic_alpha) == (2e-6, 50e9, 8e-6)
    assert not z810e.supports_mx("fp8") and z810e.mx_rate("i8") == 2.0
    with pytest.raises(MachineError, match="machine 'z810e' has no matrix support for fp8"):
        z810e.peak_flops("fp8")


def test_user_machine_file(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(M890_TEXT.replace('name = "m890"', 'name = "big"')
                    .replace("count = 32", "count = 64"))
    machine = load_machine(str(path))
    assert machine.name == "big" and machine.cores == 64
    assert machine.peak_flops("bf16") == 2 * 393.216e12


def _error(text: str) -> str:
    with pytest.raises(MachineError) as info:
        parse_machine(text, "m.toml")
    return info.value.format()


def test_unknown_key_names_key_file_and_line():
    text = M890_TEXT.replace("queue_depth = 16", "queue_depth = 16\nqueue_dpeth = 3")
    message = _error(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("queue_dpeth"))
    assert message.startswith(f"m.toml:{line}:1: error: unknown key 'core.queue_dpeth' in "
                              "machine file m.toml")


def test_missing_key():
    text = M890_TEXT.replace("sfu_cycles = 24\n", "")
    assert "error: missing key 'latency.sfu_cycles' in machine file m.toml" in _error(text)


def test_wrong_unit():
    text = M890_TEXT.replace('hbm_bytes = "144 GB"', 'hbm_bytes = "144 GHz"')
    message = _error(text)
    assert "'memory.hbm_bytes' = '144 GHz': wrong unit for bytes in m.toml" in message
    text = M890_TEXT.replace("bytes_per_cycle = 512", 'bytes_per_cycle = "512 B"')
    assert "'vx.bytes_per_cycle' takes a plain number, not '512 B' (wrong unit)" in _error(text)


def test_negative_zero_and_fractional_sizes():
    text = M890_TEXT.replace('l1_bytes = "1 MiB"', "l1_bytes = -5")
    assert "'memory.l1_bytes' must be positive, got -5 in m.toml" in _error(text)
    text = M890_TEXT.replace('acc_bytes = "256 KiB"', "acc_bytes = 0")
    assert "'memory.acc_bytes' must be positive, got 0 in m.toml" in _error(text)
    text = M890_TEXT.replace("count = 32", "count = 2.5")
    assert "'core.count' must be a whole number, got 2.5" in _error(text)
    text = M890_TEXT.replace("fp8 = 2.0", "fp9 = 2.0")
    assert "unknown key 'mx.rate.fp9'" in _error(text)
    assert "malformed TOML" in _error("name = ")


def test_unknown_machine_and_missing_file():
    with pytest.raises(MachineError, match="unknown machine 'm891'"):
        load_machine("m891")
    with pytest.raises(MachineError, match="machine file 'nope.toml' not found"):
        load_machine("nope.toml")


def test_zhenwu_machines_table(capsys):
    assert main(["machines"]) == 0
    out = capsys.readouterr().out
    assert "peak bf16 dense             393 TFLOP/s (rate 1)" in out
    assert "131 TFLOP/s (rate 1)" in out
    assert "HBM                         144 GB" in out and "96 GB" in out
    assert "8 x 100 GB/s = 800 GB/s" in out and "7 x 100 GB/s = 700 GB/s" in out
    ratio = next(line for line in out.splitlines() if line.startswith("m890 bf16 / this"))
    assert ratio.split()[4:6] == ["1.0", "3.0"]


def test_zhenwu_machines_json_and_selection(capsys, tmp_path):
    assert main(["machines", "--json", "--machine", "z810e"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data] == ["z810e"]
    derived = data[0]["derived"]
    assert derived["peak_flops"]["bf16"] == 131.072e12 and "fp8" not in derived["peak_flops"]
    assert derived["hbm_bytes_per_second"] == 2.4e12
    assert derived["link_total_bytes_per_second"] == 700e9
    assert data[0]["hbm_bytes"] == 96_000_000_000
    path = tmp_path / "mine.toml"
    path.write_text(M890_TEXT.replace('name = "m890"', 'name = "mine"'))
    assert main(["machines", "--json", "--machine", "m890", "--machine", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data] == ["m890", "mine"]
    assert data[0]["derived"]["peak_flops"]["bf16"] == 393.216e12


def test_zhenwu_machines_bad_file_exit_1(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(M890_TEXT.replace("count = 32", "count = -1"))
    assert main(["machines", "--machine", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error: 'core.count' must be positive, got -1" in err and "Traceback" not in err


@pytest.mark.parametrize("old, new, message", [
    # values that used to pass and break later (issue 18 item 6)
    ("count = 32", "count = 1e-300", "'core.count' must be positive, got 1e-300"),
    ("m = 16", "m = 1e-300", "'mx.m' must be positive, got 1e-300"),
    ('hbm_bytes_per_second = "4.0 TB/s"', "hbm_bytes_per_second = 1e-300",
     "'memory.hbm_bytes_per_second' must be between 1000000 and 1e+16 bytes/s, got 1e-300"),
    ('l1_bytes = "1 MiB"', "l1_bytes = 1e26",
     "'memory.l1_bytes' must be between 1024 and 67108864 bytes, got 1e+26"),
    ('l1_bytes = "1 MiB"', 'l1_bytes = "1 TiB"',
     "'memory.l1_bytes' must be between 1024 and 67108864 bytes, got 1 TiB"),
    ("count = 32", "count = 1000003", "'core.count' must be between 1 and 1024, got 1000003"),
    ("bf16 = 1.0", "bf16 = 1e-300", "'mx.rate.bf16' must be between 0.015625 and 64"),
    ('alpha_seconds = "2 us"', "alpha_seconds = 1e300", "'link.alpha_seconds' must be between"),
])
def test_every_key_is_range_checked_at_its_line(old, new, message):
    text = M890_TEXT.replace(old, new, 1)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith(new))
    error = _error(text)
    assert error.startswith(f"m.toml:{line}:1: error: {message}"), error


def test_every_schema_key_has_a_range():
    from zhenwu.isa.machine import _SCHEMA

    for (section, key), spec in _SCHEMA.items():
        assert spec.low <= spec.high and spec.kind in (int, float), (section, key)
        assert spec.field in {f.name for f in dataclasses.fields(load_machine("m890"))}


def test_l2_blocks_of_64_lines_run(tmp_path):
    """8192-byte blocks of 128-byte lines (64 lines: mask bit 63) used to raise IndexError."""
    path = tmp_path / "wide.toml"
    path.write_text(M890_TEXT.replace("l2_block_bytes = 4096", "l2_block_bytes = 8192"))
    sample = MACHINES_DIR.parents[1] / "samples" / "mlp.zt"
    assert main(["run", str(sample), "--shape", "B=3", "--machine", str(path)]) == 0


def test_machines_on_a_device_or_directory_says_what_is_wrong(capsys, tmp_path):
    assert main(["machines", "--machine", "/dev/null"]) == 1
    assert "machine file '/dev/null' is empty" in capsys.readouterr().err
    assert main(["machines", "--machine", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_toml_that_breaks_the_toml_parser_is_a_machine_error():
    """Found by `zhenwu fuzz --bad-inputs`: tomllib's own ValueError and RecursionError."""
    assert "malformed TOML" in _error(M890_TEXT.replace("count = 32", "count = 1" + "0" * 5000))
    assert "arrays nested too deeply" in _error(M890_TEXT.replace("m = 16", "m = " + "[" * 3000))
