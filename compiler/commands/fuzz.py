"""`zhenwu fuzz`: a differential fuzzing campaign (generated programs, every pipeline)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from zhenwu.compiler.fuzz.campaign import run_campaign
from zhenwu.isa.errors import UsageError


def check_seconds(seconds: float) -> float:
    """A campaign runs for a positive, finite number of seconds."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise UsageError(f"--seconds {seconds:g}: a campaign runs for a positive, finite number "
                         "of seconds")
    return seconds


def run(args) -> int:
    from zhenwu.progress import StatusLine

    check_seconds(args.seconds)
    out_dir = Path(args.out)
    if getattr(args, "bad_inputs", False):
        return run_bad_inputs(args, out_dir)
    status = StatusLine(sys.stderr)

    def progress(result, elapsed: float) -> None:
        status.update(f"fuzz: {result.programs} programs, {len(result.failures)} failures, "
                      f"{elapsed:.0f}/{args.seconds:.0f} s")

    try:
        result = run_campaign(args.seconds, args.seed, out_dir, bisect=args.bisect,
                              progress=progress)
    finally:
        status.close()
    rate = result.programs / max(result.seconds, 1e-9) * 60
    print(f"{result.programs} programs in {result.seconds:.0f} s ({rate:.0f} per minute), "
          f"{len(result.failures)} failures")
    for failure in result.failures:
        print(f"FAIL [{failure['pipeline']}] {failure['message'].splitlines()[0]}")
        print(f"  program: {failure['program']}")
        print(f"  reproduce: {failure['reproduce']}")
        if "culprit_pass" in failure:
            print(f"  culprit pass: {failure['culprit_pass']}")
    return 1 if result.failures else 0


def run_bad_inputs(args, out_dir: Path) -> int:
    """`zhenwu fuzz --bad-inputs`: the bad-input campaign (compiler/fuzz/bad_inputs.py)."""
    from zhenwu.compiler.fuzz.bad_inputs import run_bad_input_campaign

    tty = sys.stderr.isatty()

    def progress(result, elapsed: float) -> None:
        if tty:
            print(f"\rbad inputs: {result.cases} cases, {len(result.failures)} failures, "
                  f"{elapsed:.0f}/{args.seconds:.0f} s", end="", file=sys.stderr, flush=True)

    result = run_bad_input_campaign(args.seconds, args.seed, out_dir, progress=progress)
    if tty:
        print(file=sys.stderr)
    statuses = ", ".join(f"exit {k}: {v}" for k, v in sorted(result.statuses.items()))
    print(f"{result.cases} bad inputs in {result.seconds:.0f} s ({statuses}), "
          f"{len(result.failures)} failures")
    for failure in result.failures:
        print(f"FAIL {failure['problem']}")
        print(f"  zhenwu {' '.join(failure['argv'])}")
        print(f"  files: {failure['files']}")
    return 1 if result.failures else 0
