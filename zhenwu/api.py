"""The Python API: `zhenwu.compile`, `Program.run`, `zhenwu.reference`.

This module joins the compiler and the runtime (as the command line does; the `zhenwu`
command's `run` and `compile` are thin layers over it). Numpy arrays go in and come out;
every user error raises the `ZhenwuError` family (isa/errors.py) with the message the command
line prints.

A program is given as a path (a `str` without `{` or a newline, or any `os.PathLike`) or as
its text. A `.zt` file or text is the DSL; a `.ir` file, or text starting with `func`, is
Graph IR text as `zhenwu ir` prints it (its shapes are concrete). An ONNX model comes as an
`.onnx` path or an `onnx.ModelProto` (imported by compiler/importers/onnx.py); its
initializers, like the `.npz` a `.zt` program names in a `# weights: FILE.npz` header, are
inputs the program brings with it: `run()` and `reference()` use them unless given others.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from zhenwu.isa.errors import Diagnostic, InputError, UsageError
from zhenwu.isa.lazy import numpy as np

_OPT_LEVELS = (0, 1, 2)


def load_machine(machine):
    """A machine description: a built-in name (`m890`, `z810e`), a `.toml` path, or an
    already loaded `isa.machine.Machine` (returned as it is)."""
    from zhenwu.isa.machine import Machine
    from zhenwu.isa.machine import load_machine as load

    if isinstance(machine, Machine):
        return machine
    if not isinstance(machine, (str, os.PathLike)):
        raise UsageError(f"machine={machine!r}: expected a machine name or a .toml path")
    return load(machine)


def _source(source_or_path) -> tuple[str, str | None]:
    """(the name diagnostics use, the text or None to read the file)."""
    if isinstance(source_or_path, os.PathLike):
        return os.fspath(source_or_path), None
    if not isinstance(source_or_path, str):
        raise UsageError(f"expected a program's text or path, not {type(source_or_path).__name__}")
    if "\n" in source_or_path or "{" in source_or_path:
        return "<string>", source_or_path
    return source_or_path, None


def is_graph_ir(name: str, text: str | None) -> bool:
    """Graph IR text (`.ir`, or text that starts with `func`) rather than a `.zt` program."""
    if text is None:
        return Path(name).suffix == ".ir"
    return text.lstrip().startswith("func")


def _check_shapes(shapes) -> dict[str, int]:
    if shapes is None:
        return {}
    if not isinstance(shapes, dict):
        raise UsageError(f"shapes={shapes!r}: expected a dict such as {{'B': 64}}")
    for name, size in shapes.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UsageError(f"shapes: {name!r} is not a dim name")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise UsageError(f"shapes: {name}={size!r}: a dim must be a positive integer")
    return {name: int(size) for name, size in shapes.items()}


def _is_onnx_model(value) -> bool:
    return hasattr(value, "graph") and hasattr(value, "SerializeToString")


def program_weights(source_or_path) -> dict[str, np.ndarray]:
    """The arrays a program brings with it: an ONNX model's initializers, or the `.npz` a
    `.zt` file names in its `# weights:` header; empty for anything else."""
    if _is_onnx_model(source_or_path):
        from zhenwu.compiler.importers.onnx import import_onnx

        return dict(import_onnx(source_or_path)[1])
    from zhenwu.compiler.inputs import program_weights as weights_of

    name, text = _source(source_or_path)
    return weights_of(name)[0] if text is None else {}


def load_function(source_or_path, *, shapes=None, entry=None, input_shapes=None):
    """The checked Graph IR function of a program (see the module docstring for what
    `source_or_path` may be); symbolic dims bound from `shapes` and `input_shapes`."""
    from zhenwu.compiler.frontend import load_program, read_source

    if _is_onnx_model(source_or_path):
        from zhenwu.compiler.importers.onnx import import_onnx

        text, _ = import_onnx(source_or_path)
        return load_program("<onnx model>", text=text, entry=entry, shapes=_check_shapes(shapes),
                            input_shapes=input_shapes)
    name, text = _source(source_or_path)
    shapes = _check_shapes(shapes)
    if is_graph_ir(name, text):
        from zhenwu.compiler.graph.parser import parse_function

        return parse_function(read_source(name) if text is None else text, name)
    return load_program(name, text=text, entry=entry, shapes=shapes,
                        input_shapes=input_shapes)


def compile_options(opt=2, tune=False, disable_passes=(), persistent=False):
    """The backend's CompileOptions, checked: `opt` 0, 1 or 2; `disable_passes` pass names
    (an iterable, or comma-separated strings); `persistent` runs every kernel as one."""
    from zhenwu.compiler.backend.pipeline import CompileOptions
    from zhenwu.compiler.passes import PASSES

    try:
        level = int(opt)
    except (TypeError, ValueError):
        level = None
    if level not in _OPT_LEVELS or isinstance(opt, bool):
        raise UsageError(f"opt={opt!r}: expected 0, 1 or 2")
    if isinstance(disable_passes, str):
        disable_passes = [disable_passes]
    disabled = tuple(name.strip() for option in disable_passes or ()
                     for name in str(option).split(",") if name.strip())
    for name in disabled:
        if name not in PASSES:
            raise UsageError(f"--disable-pass {name}: no such pass (passes: "
                             f"{', '.join(PASSES)})")
    return CompileOptions(opt_level=level, tune=bool(tune), disabled_passes=disabled,
                          persistent=bool(persistent))


def _given(inputs, named) -> dict[str, np.ndarray]:
    given = {}
    if inputs is not None:
        if not isinstance(inputs, dict):
            raise InputError(f"inputs: expected a dict of arrays by parameter name, not "
                             f"{type(inputs).__name__}")
        given.update(inputs)
    given.update(named)
    arrays = {}
    for name, value in given.items():
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise InputError(f"input '{name}': not an array ({err})") from None
        if array.dtype.kind not in "biufV":
            raise InputError(f"input '{name}': unsupported dtype {array.dtype} (use float, int "
                             "or bool arrays)")
        arrays[name] = array
    return arrays


def _prepare(fn, given, seed, sources, require: bool = False, warn=None
             ) -> dict[str, np.ndarray]:
    """Every parameter's array: the given ones converted; the others seeded random when
    `seed` is given (`warn` gets the line naming them; with `require` they are an
    InputError), else an InputError naming them."""
    from zhenwu.compiler.inputs import prepare_inputs

    if seed is None:
        missing = [f"{p.name} ({p.type})" for p in fn.params if p.name not in given]
        known = {p.name for p in fn.params}
        if missing and all(name in known for name in given):
            raise InputError(f"missing input{'s' if len(missing) > 1 else ''}: "
                             f"{', '.join(missing)} (pass them, or seed=N for seeded random "
                             "values)")
    return prepare_inputs(fn, given, 0 if seed is None else seed, sources, require=require,
                          warn=warn)


def _evaluate(fn, inputs, where: str) -> list[np.ndarray]:
    from zhenwu.compiler.reference import evaluate

    try:
        return evaluate(fn, inputs)
    except MemoryError:
        raise Diagnostic(f"{where}: the tensors do not fit in this host's memory for the "
                         "reference evaluator; use smaller shapes") from None
    except ValueError as err:
        if "too big" not in str(err) and "maximum supported dimension" not in str(err):
            raise
        raise Diagnostic(f"{where}: a tensor is too large for numpy ({err})") from None


class Program:
    """A compiled program: `run()` it on the simulated chip, or read its stages.

    - `asm`: the M890 assembly (text; `zhenwu run prog.s` runs it);
    - `kernels`: the planned Kernel IR (text); `kernel_count`: how many kernels;
    - `graph`: the Graph IR after the graph passes (text);
    - `function`, `graph_ir`, `kernel_ir`, `program`: the same as objects (the checked Graph
      IR before and after the passes, the Kernel IR, the `isa` Program);
    - `params`: (name, dtype, shape) of each input; `outputs`: (dtype, shape) of each output;
    - `machine`, `options`, `compile_seconds`.
    """

    def __init__(self, name: str, function, compiled, machine, options, compile_seconds: float,
                 weights: dict[str, np.ndarray] | None = None):
        self.name = name
        # arrays the program brought (an ONNX model's initializers): inputs unless given
        self.weights = weights or {}
        self.function = function
        self.compiled = compiled
        self.machine = machine
        self.options = options
        self.compile_seconds = compile_seconds

    # -- the stages ------------------------------------------------------------------------

    @property
    def asm(self) -> str:
        return self.compiled.asm_text

    @property
    def kernels(self) -> str:
        return self.compiled.kernels_text

    @property
    def kernel_count(self) -> int:
        return self.compiled.kernel_count

    @property
    def graph(self) -> str:
        from zhenwu.compiler.graph.printer import print_function

        return print_function(self.compiled.graph)

    @property
    def graph_ir(self):
        return self.compiled.graph

    @property
    def kernel_ir(self):
        return self.compiled.kernels

    @property
    def program(self):
        return self.compiled.program

    @property
    def binary(self) -> bytes:
        """The assembly's binary encoding (`zhenwu run prog.bin` runs it)."""
        from zhenwu.isa.encoding import encode_program

        return encode_program(self.compiled.program)

    @property
    def params(self) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(p.name, p.type.dtype, tuple(p.type.shape)) for p in self.function.params]

    @property
    def outputs(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(v.type.dtype, tuple(v.type.shape)) for v in self.function.outputs]

    def roofline(self):
        """The roofline bound of the program on its machine (compiler/roofline.py)."""
        from zhenwu.compiler.roofline import roofline

        return roofline(self.compiled.graph, self.machine)

    def __repr__(self) -> str:
        return (f"<zhenwu.Program {self.name} on {self.machine.name} "
                f"-O{self.options.opt_level}: {self.kernel_count} kernels>")

    # -- running ---------------------------------------------------------------------------

    def run(self, inputs: dict | None = None, /, *, timing_only: bool = False,
            seed: int | None = None, max_instructions: int | None = None, trace: bool = False,
            progress=False, sources: dict[str, str] | None = None, fast_forward: bool = True,
            **named):
        """Run on the simulated chip: `(outputs, report)`.

        Inputs are numpy arrays (or anything `np.asarray` takes) by parameter name, as
        keywords or as one dict; they are converted to the parameter's dtype (docs/
        language.md says which conversions are allowed). A missing input is an InputError,
        unless `seed` is given: then it is drawn from a normal distribution seeded by it.
        `outputs` is a list of arrays of the outputs' dtypes (bf16/fp8 as ml_dtypes arrays);
        `report` a `runtime.Report` (`.cycles`, `.seconds`, `.efficiency`, `.to_text()`,
        `.to_json()`; `.trace` with `trace=True`). With `timing_only` nothing is computed:
        no inputs are needed, `outputs` is empty and the cycles are the same.
        `progress=True` shows the progress of a long run on stderr when it is a terminal
        (or give a callable `progress(cycle, instructions)`). `fast_forward=False` makes a
        timing-only run simulate every loop iteration instead of skipping steady states.
        """
        from zhenwu.hostmem import out_of_memory
        from zhenwu.progress import TerminalProgress
        from zhenwu.runtime import run_program

        given = {**self.weights, **_given(inputs, named)}
        compiled = self.compiled
        if timing_only:
            known = {p.name for p in self.function.params}
            for name in given:
                if name not in known:
                    raise InputError(f"unknown input '{name}'; the parameters are "
                                     f"{', '.join(p.name for p in self.function.params)}")
            arrays = {}
        else:
            arrays = self.prepare_inputs(given, seed=seed, sources=sources)
        bound = self.roofline()
        reporter = None
        if progress is True:
            reporter = TerminalProgress(self.machine.clock_hz, bound.cycles)
            callback = reporter if reporter.enabled else None
        else:
            callback = progress or None
        try:
            result = run_program(compiled.program, self.machine, compiled.program_inputs(arrays),
                                 timing_only=timing_only, max_instructions=max_instructions,
                                 trace=trace, progress=callback, fast_forward=fast_forward)
        except MemoryError:
            raise out_of_memory(self.name) from None
        finally:
            if reporter is not None:
                reporter.close()
        report = result.report
        report.bound_seconds = bound.cycles / self.machine.clock_hz
        report.trace = result.trace
        outputs = [] if timing_only else compiled.graph_outputs(result)
        return outputs, report

    def prepare_inputs(self, inputs: dict | None = None, /, *, seed: int | None = None,
                       sources: dict[str, str] | None = None, require: bool = False,
                       warn=None, **named) -> dict:
        """Every parameter's array as `run()` would make it (given ones converted to the
        parameter's dtype; missing ones seeded random when `seed` is given, else an
        InputError). First checks that a functional run fits in the host's memory: a
        Diagnostic with the size needed, before anything is allocated."""
        from zhenwu.hostmem import check_functional_run, out_of_memory

        given = {**self.weights, **_given(inputs, named)}
        held = sum(array.nbytes for array in given.values())
        check_functional_run(self.compiled.program, self.name, held)
        try:
            return _prepare(self.function, given, seed, sources, require, warn)
        except MemoryError:
            raise out_of_memory(self.name) from None

    def report_json(self, report) -> dict:
        """The `--report` content of a run: the runtime's report (its `kernels`, the count of
        kernel regions timed, as `kernel_times`), plus `kernels` (compiled kernels),
        `roofline_cycles`, `efficiency` and `compile_seconds`."""
        data = report.to_json()
        bound = self.roofline()
        data["kernel_times"] = data.pop("kernels")
        data["kernels"] = self.kernel_count
        data["roofline_cycles"] = bound.cycles
        data["efficiency"] = bound.cycles / report.cycles if report.cycles else 0.0
        data["compile_seconds"] = round(self.compile_seconds, 6)
        return data

    def reference(self, inputs: dict | None = None, /, *, seed: int | None = None,
                  sources: dict[str, str] | None = None, **named) -> list[np.ndarray]:
        """The numpy reference evaluator's outputs on the same inputs as `run()` takes."""
        return reference_outputs(self.function, {**self.weights, **_given(inputs, named)}, seed,
                                 sources, self.name)


def compile(source_or_path, *, shapes: dict[str, int] | None = None, machine="m890",
            opt: int = 2, entry: str | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None, tune: bool = False,
            disable_passes=(), persistent: bool = False) -> Program:
    """Compile a program for a machine: a `Program` to `run()` or inspect.

    `shapes` binds symbolic dims (`{"B": 64}`), as `--shape B=64` does; `input_shapes` (a
    parameter name -> the shape of the array to come) binds them as input files do.
    `machine` is `m890`, `z810e`, a `.toml` path or a loaded Machine; `opt` 0, 1 or 2; `entry`
    the function to compile (default `main`, or the only one); `tune` searches tile sizes on
    the timing model; `disable_passes` leaves graph passes out; `persistent` runs every
    kernel as one persistent kernel (chip-wide barriers between its phases, one launch).
    """
    from zhenwu.compiler.backend.pipeline import compile_function

    options = compile_options(opt, tune, disable_passes, persistent)
    machine = load_machine(machine)
    weights = program_weights(source_or_path)
    shapes_given = {name: array.shape for name, array in weights.items()}
    shapes_given.update(input_shapes or {})
    fn = load_function(source_or_path, shapes=shapes, entry=entry, input_shapes=shapes_given)
    start = time.perf_counter()
    compiled = compile_function(fn, machine, options, measure=timing_measure)
    seconds = time.perf_counter() - start
    name = "<onnx model>" if _is_onnx_model(source_or_path) else _source(source_or_path)[0]
    return Program(name, fn, compiled, machine, options, seconds, weights)


def timing_measure(program, machine) -> int:
    """The interpreter's cycles for an isa Program (timing-only, placeholder inputs): the
    timing model `tune=True` searches with, injected into the backend (which does not import
    the runtime)."""
    from zhenwu.runtime import run_program

    inputs = {t.name: np.broadcast_to(np.zeros((), np.float32), tuple(t.shape) or (1,))
              for t in program.inputs}
    return run_program(program, machine, inputs, timing_only=True).report.cycles


def reference(source_or_path, inputs: dict | None = None, /, *,
              shapes: dict[str, int] | None = None, entry: str | None = None,
              seed: int | None = None, **named) -> list[np.ndarray]:
    """Run the numpy reference evaluator on a program: its outputs, a list of arrays.

    Inputs as for `Program.run`; symbolic dims are bound from `shapes` and from the inputs'
    shapes.
    """
    given = {**program_weights(source_or_path), **_given(inputs, named)}
    fn = load_function(source_or_path, shapes=shapes, entry=entry,
                       input_shapes={name: array.shape for name, array in given.items()})
    name = "<onnx model>" if _is_onnx_model(source_or_path) else _source(source_or_path)[0]
    return reference_outputs(fn, given, seed, None, name)


def reference_outputs(fn, given: dict, seed: int | None, sources: dict[str, str] | None,
                      where: str, require: bool = False, warn=None) -> list[np.ndarray]:
    """The reference evaluator's outputs of a checked function on the given arrays (the
    missing ones seeded random when `seed` is given); `where` names it in diagnostics."""
    from zhenwu.hostmem import check_reference

    check_reference(fn, where, sum(array.nbytes for array in given.values()))
    try:
        arrays = _prepare(fn, given, seed, sources, require, warn)
    except MemoryError:
        raise Diagnostic(f"{where}: the tensors do not fit in this host's memory for the "
                         "reference evaluator; use smaller shapes") from None
    return _evaluate(fn, arrays, where)
