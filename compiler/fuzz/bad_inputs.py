"""Bad-input fuzzing: mutated files and odd flags through the `zhenwu` entry point.

The property (issue 18): whatever a user passes (mutated or truncated assembly, random or
bit-flipped binaries, corrupted machine files, broken input files, odd flag values, extreme
`.zt` programs), `zhenwu` answers with an exit status in {0, 1, 2, 3}, never a Python
traceback, and in bounded time. `make_case(rng, workdir)` writes one such input and returns
its command line; `run_case(argv, seconds)` runs it in-process through `compiler.cli.main`
and returns an `Outcome`; `run_bad_input_campaign` loops for `zhenwu fuzz --bad-inputs`.
The test suite draws a few cases with hypothesis (tests/test_bad_inputs.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
ASM_SAMPLES = ("axpy.s", "softmax_rows.s", "gemm_db.s")
MACHINE = ROOT / "isa" / "machines" / "m890.toml"
# small .zt programs with the options that keep them small
ZT_SAMPLES = (("mlp.zt", ("--shape", "B=2")), ("softmax.zt", ("--shape", "N=4", "--shape", "C=16")),
              ("layernorm.zt", ()))
EXIT_STATUSES = (0, 1, 2, 3)
# every run stops its program early: a mutation may turn a loop count into 2**40
BUDGET = ("--max-instructions", "200000")

# what people who have not read the code type: huge, negative, odd and empty numbers,
# deep nesting, odd line endings, units, non-ASCII
INTERESTING = (
    "0", "-1", "1", "65536", "4294967296", "9223372036854775807", "18446744073709551617",
    "1e-300", "1e300", "nan", "inf", "-inf", "0x7fffffffffffffff", "1" * 5000, "[" * 3000,
    "]", "[", ",", ":", "\r", "\r\n", "\f", "\u2028", "\t", "\x00", "é", "#", ";", "..",
    '"1 TiB"', '"1e-300 GB"', "d0", "r31", "E31:64", "L1[0]", "ACC[-8]", ".sig E0", ".wait E0",
    "HALT", "LOOP r1, r2", "ENDLOOP", "JMP next", "-", "@", "fn", "return", "None", "**",
    "//", "reshape(", "x[::9223372036854775807]", "f32[1,1,1,1,1,1]", "bf16", "i8",
)


@dataclass
class Outcome:
    """How one command ended: exit `status`, seconds taken, and what it printed on stderr;
    `error` is the traceback of an exception that escaped `main` (None when none did)."""

    argv: list[str]
    status: int | None
    seconds: float
    stderr: str = ""
    error: str | None = None
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return (self.error is None and self.status in EXIT_STATUSES
                and "Traceback (most recent call last)" not in self.stderr)

    def describe(self) -> str:
        if self.error is not None:
            return self.error.strip().splitlines()[-1]
        if self.status not in EXIT_STATUSES:
            return f"exit status {self.status}"
        return "a traceback on stderr"


# ---- mutations --------------------------------------------------------------------------


def mutate_text(text: str, rng: random.Random, rounds: int = 3) -> str:
    """`text` with a few random edits: a span deleted, duplicated or replaced, a number
    swapped for an interesting one, an interesting token inserted, line endings changed."""
    for _ in range(rng.randint(1, rounds)):
        choice = rng.randrange(7)
        at = rng.randrange(len(text) + 1)
        end = min(len(text), at + rng.randint(0, 40))
        if choice == 0:
            text = text[:at] + text[end:]
        elif choice == 1:
            text = text[:end] + text[at:end] + text[end:]
        elif choice == 2:
            text = text[:at] + rng.choice(INTERESTING) + text[at:]
        elif choice == 3:
            numbers = [i for i, ch in enumerate(text) if ch.isdigit()]
            if numbers:
                start = rng.choice(numbers)
                stop = start
                while stop < len(text) and (text[stop].isalnum() or text[stop] == "."):
                    stop += 1
                text = text[:start] + rng.choice(INTERESTING) + text[stop:]
        elif choice == 4:
            text = text.replace("\n", rng.choice(("\r", "\r\n", "\f", "\u2028", "\n\n")))
        elif choice == 5:
            text = text[:at]
        else:
            lines = text.split("\n")
            rng.shuffle(lines)
            text = "\n".join(lines)
    return text


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """`data` with bits flipped, a cut, random bytes spliced in, or a header field forged."""
    buffer = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0 and buffer:
        for _ in range(rng.randint(1, 8)):
            index = rng.randrange(len(buffer))
            buffer[index] ^= 1 << rng.randrange(8)
    elif choice == 1:
        del buffer[rng.randrange(len(buffer) + 1):]
    elif choice == 2:
        at = rng.randrange(len(buffer) + 1)
        buffer[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 256)))
    return bytes(buffer)


def _forged_npy(rng: random.Random) -> bytes:
    """An .npy header declaring a (possibly huge) shape over a few bytes of data."""
    from numpy.lib import format as npy_format

    shape = tuple(rng.choice((0, 1, 3, 512, 1024, 78643200000, 2**40))
                  for _ in range(rng.randint(0, 3)))
    descr = rng.choice(("<f4", "<f8", "<i8", "|b1", "|V2", "<c8", "|O", "<U4"))
    out = io.BytesIO()
    header = {"descr": descr, "fortran_order": rng.random() < 0.2, "shape": shape}
    npy_format.write_array_header_1_0(out, header)
    out.write(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
    return out.getvalue()


def _input_file(rng: random.Random, workdir: Path) -> tuple[str, ...]:
    """Arguments giving axpy.s a bad input: a mutated, forged or mismatched .npy or .npz."""
    import ml_dtypes

    good = rng.choice((np.zeros((512, 1024), np.float32), np.ones((3, 3), np.int64),
                       np.ones((512, 1024), ml_dtypes.bfloat16), np.array(np.nan),
                       np.ones((512, 1024), bool)))
    npy = io.BytesIO()
    np.save(npy, good)
    data = npy.getvalue()
    kind = rng.randrange(4)
    if kind == 0:
        data = mutate_bytes(data, rng)
    elif kind == 1:
        data = _forged_npy(rng)
    if rng.random() < 0.5:
        path = workdir / "x.npy"
        path.write_bytes(data)
        name = rng.choice(("x", "y", "zz", "x=y", ""))
        return ("-i", f"{name}={path}")
    path = workdir / "in.npz"
    archive = io.BytesIO()
    with __import__("zipfile").ZipFile(archive, "w") as zipped:
        zipped.writestr(f"{rng.choice(('x', 'y', 'q'))}.npy", data)
    raw = archive.getvalue()
    path.write_bytes(mutate_bytes(raw, rng) if rng.random() < 0.3 else raw)
    return ("--inputs", str(path))


def _odd_flags(rng: random.Random) -> list[str]:
    options = [
        ["--seed", rng.choice(("-1", "0", "99999999999999999999999", "x"))],
        ["--machine", rng.choice(("nope", "/dev/null", "/", "z810e", ""))],
        ["-o", rng.choice(("", "/dev/full", "/", "/nonexistent/dir/out.npz"))],
        ["--report", rng.choice(("", "/dev/full", "/"))],
        ["--trace", rng.choice(("", "/dev/full"))],
        ["--timing-only"], ["--check"], ["--reference"], ["--tune"],
        ["--chips", rng.choice(("0", "-1", "2"))],
        ["--max-instructions", rng.choice(("0", "-5", "1"))],
        ["--shape", rng.choice(("B=0", "B=-1", "B=x", "=4", "B=4611686018427387904"))],
        ["--entry", rng.choice(("nope", "main", ""))],
        ["-i", rng.choice(("x", "=", "x=", "x=/dev/null"))],
        ["--disable-pass", rng.choice(("cse,dce", "nope", ","))],
        ["-O", rng.choice(("0", "3"))],
    ]
    return [part for option in rng.sample(options, rng.randint(1, 3)) for part in option]


def make_case(rng: random.Random, workdir: Path, kind: str | None = None) -> list[str]:
    """Write one bad input under `workdir` and return the `zhenwu` command line to run."""
    from zhenwu.isa.asm import parse_assembly
    from zhenwu.isa.encoding import encode_program

    kinds = ("asm", "bin", "machine", "inputs", "zt", "flags")
    kind = kind or rng.choice(kinds)
    sample = SAMPLES / "asm" / rng.choice(ASM_SAMPLES)
    if kind == "asm":
        path = workdir / "prog.s"
        path.write_text(mutate_text(sample.read_text(), rng), encoding="utf-8",
                        errors="surrogatepass")
        command = rng.choice((["run", str(path), *BUDGET], ["asm", str(path), "-o",
                                                             str(workdir / "out.bin")]))
        return command + (["--timing-only"] if command[0] == "run" and rng.random() < 0.3
                          else [])
    if kind == "bin":
        data = encode_program(parse_assembly(sample.read_text(), str(sample)))
        path = workdir / "prog.bin"
        path.write_bytes(mutate_bytes(data, rng))
        return rng.choice((["run", str(path), *BUDGET], ["disasm", str(path)]))
    if kind == "machine":
        path = workdir / "machine.toml"
        path.write_text(mutate_text(MACHINE.read_text(), rng), encoding="utf-8",
                        errors="surrogatepass")
        return rng.choice((["machines", "--machine", str(path)],
                           ["run", str(SAMPLES / "asm" / "softmax_rows.s"), "--machine",
                            str(path), *BUDGET]))
    if kind == "inputs":
        return ["run", str(SAMPLES / "asm" / "axpy.s"), *_input_file(rng, workdir), *BUDGET]
    name, options = rng.choice(ZT_SAMPLES)
    if kind == "zt":
        path = workdir / "prog.zt"
        path.write_text(mutate_text((SAMPLES / name).read_text(), rng), encoding="utf-8",
                        errors="surrogatepass")
        command = rng.choice((["ir", str(path)], ["compile", str(path), "-o",
                                                  str(workdir / "out.s")],
                              ["run", str(path), "--timing-only", *BUDGET],
                              ["run", str(path), *BUDGET]))
        return command + list(options)
    program = rng.choice((str(SAMPLES / name), str(sample)))
    extra = list(options) if program.endswith(".zt") else []
    return ["run", program, *extra, *_odd_flags(rng), *BUDGET]


# ---- running ----------------------------------------------------------------------------


class _TimeUp(BaseException):
    """Raised by the alarm inside a case that runs too long (not an Exception: the code under
    test must not catch it)."""


@contextlib.contextmanager
def _alarm(seconds: float):
    """Interrupt the block after `seconds` (main thread only; elsewhere no limit)."""
    def fire(signum, frame):
        raise _TimeUp()

    try:
        old = signal.signal(signal.SIGALRM, fire)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_case(argv: list[str], seconds: float = 60.0) -> Outcome:
    """Run `zhenwu argv` in-process (compiler.cli.main) with stdout and stderr captured."""
    from zhenwu.compiler.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    status, error = None, None
    try:
        with _alarm(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(argv))
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except _TimeUp:
        error = f"TimeoutError: still running after {seconds:g} s"
    except BaseException:  # noqa: BLE001 - anything escaping main is the finding
        error = traceback.format_exc()
    return Outcome(list(argv), status, time.perf_counter() - start, err.getvalue(), error,
                   out.getvalue())


@dataclass
class BadInputResult:
    """A campaign's counts and its failures (each with its command line and saved files)."""

    cases: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)


def run_bad_input_campaign(seconds: float, seed: int, out_dir: Path, *,
                           case_seconds: float = 60.0, progress=None) -> BadInputResult:
    """Generate and run bad inputs for `seconds`; save each failing case under `out_dir`
    (its files and a `case.json` with the command line and what went wrong)."""
    import tempfile

    result = BadInputResult()
    start = time.perf_counter()
    rng = random.Random(seed)
    while time.perf_counter() - start < seconds:
        case_seed = rng.randrange(2**32)
        with tempfile.TemporaryDirectory(prefix="zhenwu-bad-") as tmp:
            argv = make_case(random.Random(case_seed), Path(tmp))
            outcome = run_case(argv, case_seconds)
            result.cases += 1
            if outcome.status is not None:
                result.statuses[outcome.status] = result.statuses.get(outcome.status, 0) + 1
            if not outcome.ok:
                saved = out_dir / f"bad-{case_seed}"
                shutil.copytree(tmp, saved, dirs_exist_ok=True)
                argv = [part.replace(tmp, str(saved)) for part in argv]
                failure = {"seed": case_seed, "argv": argv, "problem": outcome.describe(),
                           "error": outcome.error or outcome.stderr[-4000:],
                           "files": str(saved)}
                (saved / "case.json").write_text(json.dumps(failure, indent=2) + "\n")
                result.failures.append(failure)
        if progress is not None:
            progress(result, time.perf_counter() - start)
    result.seconds = time.perf_counter() - start
    return result
