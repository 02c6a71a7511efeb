"""`zhenwu fuzz`: a differential fuzzing campaign (generated programs, every pipeline)."""

from __future__ import annotations

import sys
from pathlib import Path

from compiler.fuzz.campaign import run_campaign


def run(args) -> int:
    from zhenwu.progress import StatusLine

    out_dir = Path(args.out)
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
