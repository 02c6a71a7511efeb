"""Differential checks of one program, and the `zhenwu fuzz` campaign around them.

`check_program` is the property every generated program must have: compiled at each
pipeline and run on the interpreter (with every trap check on), it gives the reference
evaluator's numbers within the output's tolerance (compiler/check.py), and its source prints back
unchanged through the Graph IR. A failure is a `FuzzFailure` naming the pipeline and what
went wrong; anything else that escapes (an internal error) is a failure too.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from zhenwu.isa.errors import ChipTrap, ZhenwuError

# The pipelines every program is run through: -O0 and -O2; `seeded_pipelines` adds -O2 with a
# random subset of the optional graph passes left out, and for a quarter of the seeds -O2
# with `--persistent` ("O2p": every kernel of the program merged into one), and for a fifth
# -O2 with `--multipass-rows` ("O2m": row kernels as passes that re-read their rows).
PIPELINES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("O0", ()),
    ("O2", ()),
)
OPTIONAL_PASSES = ("canonicalize", "constant-fold", "cse", "dce", "fuse", "hoist-scales")


def seeded_pipelines(seed: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """-O0, -O2, -O2 without a seed-chosen subset of the optional passes, and for some
    seeds -O2 --persistent, -O2 --multipass-rows, and -O2 --multipass-rows on the small-L2
    machine of `pipeline_machine` ("O2g": passes group of rows by group of rows)."""
    rng = random.Random(seed)
    disabled = tuple(p for p in OPTIONAL_PASSES if rng.random() < 0.4)
    persistent = rng.random() < 0.25
    multipass = rng.random() < 0.2
    grouped = rng.random() < 0.15
    return (PIPELINES + ((("O2", disabled),) if disabled else ())
            + ((("O2p", ()),) if persistent else ())
            + ((("O2m", ()),) if multipass else ())
            + ((("O2g", ()),) if grouped else ()))


# "O2g": --multipass-rows on a chip whose L2 is this small and that has this few cores, so
# that the fuzzer's small tensors run their passes group of rows by group of rows, with the
# repeated groups as one loop (fusion._row_groups, codegen._repetition)
GROUPED_L2_BYTES = 256
GROUPED_CORES = 2


def pipeline_machine(name: str, machine):
    """The machine pipeline `name` runs on (`machine`, or the small-L2 one of "O2g")."""
    if not name.endswith("g"):
        return machine
    from dataclasses import replace

    return replace(machine, l2_bytes=GROUPED_L2_BYTES, cores=GROUPED_CORES)


def _flags(name: str) -> str:
    """The command-line flags of pipeline `name` ("O2p": -O2 --persistent, "O2m": -O2
    --multipass-rows, "O2g": the same on a machine file with the small L2 and few cores of
    `pipeline_machine`)."""
    return f"-{name[:2]}" + (" --persistent" if name.endswith("p") else "") + \
        (" --multipass-rows" if name.endswith("m") else "") + \
        (f" --multipass-rows --machine <m890 with l2_bytes = {GROUPED_L2_BYTES} and "
         f"{GROUPED_CORES} cores>" if name.endswith("g") else "")


class FuzzFailure(Exception):
    """A program that miscompiles, traps, or crashes the compiler."""

    def __init__(self, pipeline: str, message: str, level: str | None = None,
                 disabled: tuple[str, ...] = ()):
        super().__init__(f"[{pipeline}] {message}")
        self.pipeline = pipeline
        self.message = message
        self.level = level          # "O0" / "O2" when a compiled pipeline failed
        self.disabled = disabled    # the graph passes that pipeline left out


def check_program(text: str, *, seed: int = 0, machine_name: str = "m890",
                  pipelines=None) -> None:
    """Raise FuzzFailure unless every pipeline matches the reference evaluator on `text`,
    and one of them (chosen by the seed) times the program alike in its functional run and
    a timing-only one (`_check_timing_only`: the timing-only shortcuts, bounds from addresses
    and moved DMA binds, against the run that executes everything)."""
    from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
    from zhenwu.compiler.check import check_outputs
    from zhenwu.compiler.frontend import load_program
    from zhenwu.compiler.inputs import prepare_inputs
    from zhenwu.compiler.reference import evaluate
    from zhenwu.isa.machine import load_machine
    from zhenwu.runtime import run_program

    try:
        fn = load_program("fuzz.zt", text=text)
    except ZhenwuError as err:  # the generator made an invalid program: a generator bug
        raise FuzzFailure("frontend", f"rejected a valid program: {err.format()}") from err
    machine = load_machine(machine_name)
    inputs = prepare_inputs(fn, {}, seed)  # the inputs `zhenwu run --seed` draws
    want = evaluate(fn, inputs)
    chosen = pipelines or seeded_pipelines(seed)
    timed = chosen[seed % len(chosen)][0]  # the pipeline whose timing-only run is checked
    for name, disabled in chosen:
        level = int(name[1])
        label = _flags(name)[1:] + (f" --disable-pass {','.join(disabled)}" if disabled else "")

        def fail(message: str, label=label, name=name, disabled=disabled) -> FuzzFailure:
            return FuzzFailure(label, message, name, disabled)

        try:
            options = CompileOptions(opt_level=level, disabled_passes=disabled,
                                     persistent=name.endswith("p"),
                                     multipass_rows=name.endswith(("m", "g")))
            target = pipeline_machine(name, machine)
            compiled = compile_function(fn, target, options)
            result = run_program(compiled.program, target, compiled.program_inputs(inputs))
            got = compiled.graph_outputs(result)
        except ChipTrap as trap:
            raise fail(f"compiled code trapped: {trap.format()}") from trap
        except ZhenwuError as err:
            raise fail(f"rejected: {err.format()}") from err
        try:
            if name == timed:
                _check_timing_only(compiled.program, target, result.report)
        except ChipTrap as trap:
            raise fail(f"the timing-only run trapped: {trap.format()}") from trap
        except AssertionError as err:
            raise fail(str(err)) from err
        if len(got) != len(want):
            raise fail(f"{len(got)} outputs, reference has {len(want)}")
        # the tolerance rule of `zhenwu run --check`, ill-conditioned outputs included
        for index, (passes, summary) in enumerate(check_outputs(fn, got, want, inputs)):
            if not passes:
                raise fail(f"out{index}: {summary}")


# a fast-forwarded run may differ from the full one by its extrapolation (within 1 % on the
# bench and on large GEMMs); on the fuzzer's small programs only a gross error is a failure
FAST_FORWARD_SLACK = 0.1


def _check_timing_only(program, machine, functional) -> None:
    """A timing-only run (no data; its DMAs bound as moved copies, bounds checked from the
    addresses) must time the program exactly as the functional run did, and a fast-forwarded
    one must not trap or stray far from it. AssertionError says what differs."""
    from zhenwu.runtime import run_program

    timing = run_program(program, machine, {}, timing_only=True, fast_forward=False).report
    keys = ("cycles", "hbm_read_bytes", "hbm_write_bytes", "l2_read_bytes", "l2_hit_bytes",
            "flops")
    for key in keys:
        if getattr(timing, key) != getattr(functional, key):
            raise AssertionError(f"timing-only {key} {getattr(timing, key)} != functional "
                                 f"{getattr(functional, key)}")
    fast = run_program(program, machine, {}, timing_only=True).report
    if abs(fast.cycles - timing.cycles) > FAST_FORWARD_SLACK * timing.cycles:
        raise AssertionError(f"fast-forwarded cycles {fast.cycles} against {timing.cycles}")


@dataclass
class CampaignResult:
    programs: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)


def run_campaign(seconds: float, seed: int, out_dir: Path, *, bisect: bool = False,
                 progress=None) -> CampaignResult:
    """Generate and check programs until `seconds` run out; write each failure to out_dir."""
    from zhenwu.compiler.fuzz.generator import recorded_program

    result = CampaignResult()
    rng = random.Random(seed)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        program_seed = rng.randrange(2**31)
        text, record, marks = recorded_program(program_seed)
        result.programs += 1
        try:
            check_program(text, seed=program_seed)
        except FuzzFailure as failure:
            result.failures.append(_record(out_dir, record, marks, program_seed, failure,
                                           bisect))
        except Exception as crash:  # noqa: BLE001 - an internal error is what we hunt
            failure = FuzzFailure("crash", f"{type(crash).__name__}: {crash}")
            result.failures.append(_record(out_dir, record, marks, program_seed, failure,
                                           bisect))
        if progress is not None:
            progress(result, time.monotonic() - start)
    result.seconds = time.monotonic() - start
    return result


def _record(out_dir: Path, record: list[int], marks: list[int], seed: int,
            failure: FuzzFailure, bisect: bool) -> dict:
    text = shrink(record, marks, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"fail_{seed}.zt"
    header = f"# {failure.pipeline}: {failure.message}".replace("\n", "\n# ")
    if failure.level:
        header += f"\n# pipeline: {failure.level} {' '.join(failure.disabled)}".rstrip()
    path.write_text(f"{header}\n{text}")
    entry = {
        "program": str(path),
        "pipeline": failure.pipeline,
        "message": failure.message,
        "reproduce": f"zhenwu run {path} --seed {seed} --check"
        + (f" {_flags(failure.level)}" if failure.level else "")
        + (f" --disable-pass {','.join(failure.disabled)}" if failure.disabled else ""),
    }
    if bisect:
        entry["culprit_pass"] = bisect_passes(text, seed)
    (out_dir / f"fail_{seed}.json").write_text(json.dumps(entry, indent=2))
    return entry


def _fails(text: str, seed: int, pipelines=None) -> bool:
    try:
        check_program(text, seed=seed, pipelines=pipelines)
    except Exception:  # noqa: BLE001 - FuzzFailure or an internal error
        return True
    return False


def shrink(record: list[int], marks: list[int], seed: int, budget: int = 200) -> str:
    """Shrink the choice record while the program still fails: delete whole steps (the
    blocks between `marks`, last first), then chunks, then lower values to 0.

    The generator only makes valid programs from any record, so every candidate is valid and
    the search never wanders into programs that fail for a different reason than a bug.
    """
    from zhenwu.compiler.fuzz.generator import replay_program

    best = list(record)
    tries = 0
    # Step i's choices run from marks[i] to the next step's "go on?" flag at marks[i+1] - 1.
    # Deleting step i > 0 deletes its own flag (at marks[i] - 1) too; deleting step 0 deletes
    # the flag after it, so that step 1 becomes the first step.
    blocks = [(marks[0], marks[1])] if len(marks) > 2 else []
    blocks += [(start - 1, end - 1) for start, end in pairwise(marks[1:])]
    for start, end in reversed(blocks):
        candidate = best[:start] + best[end:]
        tries += 1
        if _fails(replay_program(candidate), seed):
            best = candidate
    improved = True
    while improved and tries < budget:
        improved = False
        for size in (8, 4, 2, 1):
            i = 0
            while i + size <= len(best) and tries < budget:
                candidate = best[:i] + best[i + size:]
                tries += 1
                if _fails(replay_program(candidate), seed):
                    best, improved = candidate, True
                else:
                    i += size
        for i in range(len(best)):
            if tries >= budget:
                break
            if best[i] > 0:
                candidate = best[:i] + [0] + best[i + 1:]
                tries += 1
                if _fails(replay_program(candidate), seed):
                    best, improved = candidate, True
    return replay_program(best)


def bisect_passes(text: str, seed: int) -> str | None:
    """The graph pass whose removal makes the failure go away, or None."""
    from zhenwu.compiler.passes import PASSES

    for name in PASSES:
        if not _fails(text, seed, (("O2", (name,)),)):
            return name
    return None
