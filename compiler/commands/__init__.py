"""One module per `zhenwu` subcommand, each with `run(args) -> int`."""

from __future__ import annotations


def compile_options(args):
    """The CompileOptions a command line asks for (-O, --tune, --disable-pass, --persistent,
    --multipass-rows)."""
    from dataclasses import replace

    from zhenwu.api import compile_options as options

    chosen = options(int(args.opt), bool(getattr(args, "tune", False)),
                     getattr(args, "disable_pass", []) or [])
    return replace(chosen, persistent=bool(getattr(args, "persistent", False)),
                   multipass_rows=bool(getattr(args, "multipass_rows", False)))
