"""`zhenwu machines`, `zhenwu asm` and `zhenwu disasm`: the ISA's command-line tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zhenwu.isa.asm import check_machine, parse_assembly, print_program
from zhenwu.isa.encoding import decode_program, encode_program
from zhenwu.isa.errors import AssemblyError, EncodingError, ZhenwuError
from zhenwu.isa.machine import BUILTIN_MACHINES, format_machines, load_machine


def run(args) -> int:
    if args.command == "machines":
        return run_machines(args)
    if args.command == "asm":
        return run_asm(args)
    return run_disasm(args)


# ---- machines -------------------------------------------------------------------------


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
