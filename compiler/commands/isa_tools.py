"""`zhenwu machines`, `zhenwu asm` and `zhenwu disasm`: the ISA's command-line tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from isa.asm import check_machine, parse_assembly, print_program
from isa.encoding import decode_program, encode_program
from isa.errors import AssemblyError, EncodingError, ZhenwuError
from isa.machine import BUILTIN_MACHINES, Machine, load_machine


def run(args) -> int:
    if args.command == "machines":
        return run_machines(args)
    if args.command == "asm":
        return run_asm(args)
    return run_disasm(args)


# ---- machines -------------------------------------------------------------------------


def _si(value: float, unit: str) -> str:
    """`393 TFLOP/s`, `4 TB/s`, `144 GB`: three significant digits, decimal prefixes."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _binary(value: int) -> str:
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {prefix}"
    return f"{value} B"


def _seconds(value: float) -> str:
    return f"{value * 1e6:.3g} us"


def machine_rows(machine: Machine) -> list[tuple[str, str]]:
    """The rows `zhenwu machines` prints for one machine (label, value)."""
    rows = [
        ("description", machine.description),
        ("cores x clock", f"{machine.cores} x {machine.clock_hz / 1e9:.2f} GHz"),
        ("MX MACs per core per cycle",
         f"{machine.mx_m}x{machine.mx_n}x{machine.mx_k} (bf16 rate 1)"),
    ]
    for dtype in ("bf16", "f16", "fp8", "i8", "f32"):
        rate = machine.mx_rate(dtype)
        unit = "OP/s" if dtype == "i8" else "FLOP/s"
        rows.append((f"peak {dtype} dense",
                     "-" if rate is None else f"{_si(machine.peak_flops(dtype), unit)} "
                     f"(rate {rate:g})"))
    rows += [
        ("VX per core", f"{machine.vx_bytes_per_cycle} B/cycle"),
        ("SFU per core", (f"{machine.sfu_elems_per_cycle} elem/cycle "
                         f"(sin/cos {machine.sfu_trig_elems_per_cycle})")),
        ("L1 / ACC / SMEM per core", (f"{_binary(machine.l1_bytes)} / {_binary(machine.acc_bytes)}"
                                     f" / {_binary(machine.smem_bytes)}")),
        ("L2 shared", _binary(machine.l2_bytes)),
        ("HBM", _si(machine.hbm_bytes, "B")),
        ("HBM bandwidth", (f"{_si(machine.hbm_bandwidth, 'B/s')} "
                          f"({machine.hbm_bytes_per_cycle:.4g} B/cycle)")),
        ("ridge point bf16", "-" if not machine.supports_mx("bf16") else
         f"{machine.ridge_point('bf16'):.4g} FLOP/B"),
        ("DMA ports per core", (f"LD {machine.ld_bytes_per_cycle}, ST "
                               f"{machine.st_bytes_per_cycle} B/cycle")),
        ("latency HBM / L2", f"{machine.hbm_latency} / {machine.l2_latency} cycles"),
        ("latency MX fill / VX / SFU", (f"{machine.mx_fill_latency} / {machine.vx_latency} / "
                                       f"{machine.sfu_latency} cycles")),
        ("latency SRAM / event wake", (f"{machine.sram_latency} / "
                                      f"{machine.event_wake_latency} cycles")),
        ("queue depth", str(machine.queue_depth)),
        ("chip links", (f"{machine.link_count} x {_si(machine.link_bandwidth, 'B/s')} = "
                       f"{_si(machine.link_total_bandwidth, 'B/s')}, alpha "
                       f"{_seconds(machine.link_alpha)}")),
        ("scale-out NIC", (f"{_si(machine.nic_bandwidth, 'B/s')}, alpha "
                          f"{_seconds(machine.nic_alpha)}")),
    ]
    return rows


def format_machines(machines: list[Machine]) -> str:
    """The table of `zhenwu machines`: one column per machine."""
    columns = [dict(machine_rows(m)) for m in machines]
    labels = [label for label, _ in machine_rows(machines[0]) if label != "description"]
    if len(machines) > 1 and all(m.supports_mx("bf16") for m in machines):
        label = f"{machines[0].name} bf16 / this"
        labels.append(label)
        first = machines[0].peak_flops("bf16")
        for machine, column in zip(machines, columns):
            column[label] = f"{first / machine.peak_flops('bf16'):.1f}"
    width = max(len(label) for label in labels) + 2
    col_width = max(max(len(c[label]) for label in labels) for c in columns) + 3
    lines = ["".ljust(width) + "".join(m.name.ljust(col_width) for m in machines).rstrip()]
    for label in labels:
        lines.append((label.ljust(width) + "".join(c[label].ljust(col_width)
                                                   for c in columns)).rstrip())
    for machine in machines:
        lines.append(f"{machine.name}: {machine.description} [{machine.source}]")
    return "\n".join(lines)


def run_machines(args) -> int:
    specs = args.machine or list(BUILTIN_MACHINES)
    machines = [load_machine(spec) for spec in specs]
    if args.json:
        print(json.dumps([m.to_dict() for m in machines], indent=2))
    else:
        print(format_machines(machines))
    return 0


# ---- asm / disasm -----------------------------------------------------------------------


def _read(path: str, binary: bool, error: type[ZhenwuError]):
    try:
        return Path(path).read_bytes() if binary else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"cannot read '{path}': no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read '{path}': {err}") from None


def run_asm(args) -> int:
    program = parse_assembly(_read(args.program, False, AssemblyError), args.program)
    spec = program.machine if program.machine in BUILTIN_MACHINES else args.machine
    check_machine(program, load_machine(spec))
    data = encode_program(program)
    try:
        Path(args.output).write_bytes(data)
    except OSError as err:
        raise EncodingError(f"cannot write '{args.output}': {err}") from None
    return 0


def run_disasm(args) -> int:
    program = decode_program(_read(args.program, True, EncodingError), args.program)
    text = print_program(program)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as err:
            raise EncodingError(f"cannot write '{args.output}': {err}") from None
    else:
        sys.stdout.write(text)
    return 0
