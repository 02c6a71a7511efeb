"""Command-line checks of `zhenwu run` that need no program: options that do not apply to
the program's kind, empty paths, a `--machine` that names nothing. Refused at once (usage
errors, exit status 2; an unknown machine is a machine error), never silently ignored."""

from __future__ import annotations

from pathlib import Path

from zhenwu.isa.errors import UsageError

# options that only a .zt program uses: (attribute, flag, the value it has when not given)
_ZT_ONLY = (
    ("check", "--check", False),
    ("reference", "--reference", False),
    ("tune", "--tune", False),
    ("persistent", "--persistent", False),
    ("shape", "--shape", []),
    ("entry", "--entry", None),
    ("disable_pass", "--disable-pass", []),
    ("remarks", "--remarks", False),
)
_PATHS = (("output", "-o"), ("trace", "--trace"), ("report", "--report"))


def check_run_options(args) -> None:
    """Refuse what `args` asks that cannot apply; see the module docstring."""
    for attribute, flag in _PATHS:
        if getattr(args, attribute, None) == "":
            raise UsageError(f"{flag} needs a path (got an empty one)")
    if Path(args.program).suffix in (".s", ".bin"):
        for attribute, flag, unset in _ZT_ONLY:
            if getattr(args, attribute, unset) not in (unset, None):
                raise UsageError(f"{flag} does not apply to assembly ('{args.program}'): it "
                                 "only applies to a .zt program")
    elif getattr(args, "reference", False):
        from zhenwu.isa.machine import load_machine

        load_machine(args.machine)  # the reference uses no machine, but a wrong name is wrong
