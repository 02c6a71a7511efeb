"""Program inputs and outputs for `zhenwu run`: `-i name=file.npy`, `--inputs in.npz`,
`--shape B=64`, seeded random inputs, and writing `out0, out1, ...` to an .npz.

Shared by the reference path (compiler/commands/run_reference.py) and the compiled path.
Files are read with `allow_pickle=False`: a pickled array is refused, never loaded.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.graph.dtypes import from_np_dtype, is_float, is_int, itemsize, np_dtype
from zhenwu.compiler.graph.ir import Function, TensorType
from zhenwu.isa.errors import InputError, UsageError
from zhenwu.isa.lazy import numpy as np


def parse_shape_options(options: list[str]) -> dict[str, int]:
    """`["B=64", "S=128"]` -> {"B": 64, "S": 128}; a malformed option is a UsageError."""
    shapes: dict[str, int] = {}
    for option in options:
        name, eq, size = option.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise UsageError(f"--shape {option}: expected SYM=N, e.g. --shape B=64")
        try:
            value = int(size)
        except ValueError:
            raise UsageError(f"--shape {option}: '{size}' is not an integer") from None
        if value < 1:
            raise UsageError(f"--shape {option}: a dim must be positive")
        if name in shapes and shapes[name] != value:
            raise UsageError(f"--shape {name} is given twice ({shapes[name]} and {value})")
        shapes[name] = value
    return shapes


def _declared_bytes(handle, where: str) -> tuple[int, int] | None:
    """(bytes the .npy header at `handle` declares, the header's length), or None for an
    object array (np.load refuses its pickle); an unreadable header is an InputError."""
    from numpy.lib import format as npy_format

    start = handle.tell()
    try:
        version = npy_format.read_magic(handle)
        read = (npy_format.read_array_header_1_0 if version == (1, 0)
                else npy_format.read_array_header_2_0)
        shape, _, dtype = read(handle)
    except Exception as err:  # numpy parses the header with ast/tokenize: many errors
        raise InputError(f"{where}: not a readable .npy header ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None
    if dtype.hasobject:
        return None  # a pickled array: np.load refuses it with its own message
    return math.prod(shape) * dtype.itemsize, handle.tell() - start


def _check_declared(declared: int, available: int, where: str) -> None:
    """Refuse an array whose header declares more bytes than its file holds (a truncated or
    forged file) or than this host has, before numpy allocates them."""
    from zhenwu.compiler.reference import host_memory_bytes

    if declared > available:
        raise InputError(f"{where}: the header declares {declared:,} bytes of data but the file "
                         f"holds {available:,} (truncated or corrupt)")
    if declared > host_memory_bytes():
        raise InputError(f"{where}: the array holds {declared:,} bytes, more than this host's "
                         "memory")


def _check_array(array, where: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{where}: not a numpy array")
    if array.dtype.kind == "V" and array.dtype.names is None and array.dtype.itemsize in (1, 2):
        return array  # how np.save stores ml_dtypes bf16 (|V2) and fp8 (|V1): raw bits
    if array.dtype.kind not in "biuf" or array.dtype.names is not None:
        raise InputError(f"{where}: unsupported dtype {array.dtype} (use float, int or bool "
                         "arrays)")
    return array


def _magic(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(6)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err})") from None


def load_npy(path: str) -> np.ndarray:
    """Read one .npy file (never unpickling); bad files are InputErrors naming the file."""
    magic = _magic(path)
    if magic.startswith(b"PK"):
        raise InputError(f"{path}: is an .npz archive; pass it with --inputs")
    if magic != b"\x93NUMPY":
        raise InputError(f"{path}: not a .npy file (no NUMPY header)")
    try:
        with open(path, "rb") as handle:
            header = _declared_bytes(handle, path)
            size = os.fstat(handle.fileno()).st_size
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    if header is not None:
        _check_declared(header[0], size - header[1], path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise InputError(f"{path}: holds a pickled object array; zhenwu never loads "
                             "pickles") from None
        raise InputError(f"{path}: not a readable .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        data.close()
        raise InputError(f"{path}: is an .npz archive; pass it with --inputs")
    return _check_array(data, path)


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Read every array of an .npz archive, keyed by name (never unpickling)."""
    import zipfile  # (numpy reads .npz with it too; a compile never needs it)

    magic = _magic(path)
    if magic == b"\x93NUMPY":
        raise InputError(f"{path}: is a single .npy array, not an .npz archive; pass it with "
                         f"-i NAME={path}")
    if not magic.startswith(b"PK"):
        raise InputError(f"{path}: not an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: is a single .npy array; pass it with -i NAME={path}")
    try:
        for info in archive.zip.infolist():
            if info.filename.endswith(".npy"):
                with archive.zip.open(info) as member:
                    header = _declared_bytes(member, f"{path}[{info.filename[:-4]}]")
                if header is not None:
                    _check_declared(header[0], info.file_size - header[1],
                                    f"{path}[{info.filename[:-4]}]")
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as err:
        archive.close()
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    except InputError:
        archive.close()
        raise
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = _check_array(archive[key], f"{path}[{key}]")
            except ValueError as err:
                if "pickle" in str(err).lower():
                    raise InputError(f"{path}[{key}]: a pickled object array; zhenwu never "
                                     "loads pickles") from None
                raise InputError(f"{path}[{key}]: not readable ({err})") from None
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise InputError(f"{path}[{key}]: not readable ({err})") from None
    return arrays


def program_weights(program: str | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays a program brings with it: an `.onnx` model's initializers, or the .npz that
    a `.zt` program names in a `# weights: FILE.npz` line among the comments at its top
    (relative to the program's directory; `zhenwu import` writes one)."""
    if not program:
        return {}, {}
    path = Path(program)
    if path.suffix == ".onnx":
        from zhenwu.compiler.importers.onnx import import_file

        _, weights = import_file(program)
        return dict(weights), {key: f"{program}[{key}]" for key in weights}
    if path.suffix != ".zt" or not path.is_file():
        return {}, {}
    try:
        with open(path, encoding="utf-8") as handle:
            head = [handle.readline() for _ in range(8)]
    except (OSError, UnicodeDecodeError):
        return {}, {}  # the frontend reports an unreadable program
    for line in head:
        if not line.startswith("#"):
            break
        if line.startswith("# weights:"):
            npz = str(path.parent / line.split(":", 1)[1].strip())
            arrays = load_npz(npz)
            return arrays, {key: f"{npz}[{key}]" for key in arrays}
    return {}, {}


def read_inputs(options: list[str], npz: str | None, program: str | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Arrays from the program's weights (`program_weights`), `--inputs in.npz` and
    `-i name=file.npy` (later wins), and where each came from (for messages)."""
    arrays, sources = program_weights(program)
    if npz:
        for key, array in load_npz(npz).items():
            arrays[key], sources[key] = array, f"{npz}[{key}]"
    for option in options:
        name, eq, path = option.partition("=")
        if not eq or not name.strip().isidentifier() or not path:
            raise UsageError(f"-i {option}: expected NAME=FILE.npy")
        if name.strip() in sources and not sources[name.strip()].startswith(f"{npz}["):
            raise UsageError(f"-i {name.strip()} is given twice ({sources[name.strip()]} and "
                             f"{path})")
        arrays[name.strip()] = load_npy(path)
        sources[name.strip()] = path
    return arrays, sources


def random_input(type_: TensorType, seed: int, index: int) -> np.ndarray:
    """A seeded random array for one parameter: normal floats, small ints, random bools.

    Each parameter draws from its own stream (seed, index), so giving one input does not
    change the random values of the others.
    """
    rng = np.random.default_rng([seed, index])
    if is_float(type_.dtype):
        data = rng.standard_normal(type_.shape, dtype=np.float32)
    elif is_int(type_.dtype):
        data = rng.integers(-4, 5, size=type_.shape)
    else:
        data = rng.random(type_.shape) < 0.5
    return np.asarray(data).astype(np_dtype(type_.dtype))


def check_seed(seed: int) -> int:
    """`--seed` must be a non-negative integer (numpy's seeds are)."""
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed {seed}: a seed is a non-negative integer")
    return seed


def check_host_memory(nbytes: int, what: str) -> None:
    """Refuse to draw or load `nbytes` of data this host cannot hold (before allocating)."""
    from zhenwu.compiler.reference import host_memory_bytes

    if nbytes > host_memory_bytes():
        raise InputError(f"{what} need {nbytes:,} bytes, more than this host's memory "
                         f"({host_memory_bytes():,} bytes); --timing-only runs without them")


def missing_inputs_message(missing: list[str], require: bool, some_given: bool = True
                           ) -> str | None:
    """The one-line warning for inputs drawn at random when others were given (None when
    none is missing, or none was given: a run without input files is random on purpose, as
    in the quick start); with `require` (`--require-inputs`) a missing input is an
    InputError instead."""
    if not missing or not (require or some_given):
        return None
    names = ", ".join(missing)
    if require:
        raise InputError(f"missing input{'s' if len(missing) > 1 else ''} {names} "
                         "(--require-inputs: every input must be given)")
    return (f"zhenwu: warning: input{'s' if len(missing) > 1 else ''} {names} not given: "
            f"drawn at random (--seed); --require-inputs makes this an error")


def _raw_bits(array: np.ndarray, dtype: str) -> np.ndarray | None:
    """A 2-byte (1-byte) void array, as np.save stores ml_dtypes bf16 (fp8), read as the bits
    of a bf16 (fp8) parameter; None for any other pairing."""
    target = np_dtype(dtype)
    if array.dtype.kind == "V" and target.itemsize == array.dtype.itemsize and dtype in (
            "bf16", "fp8"):
        return array.view(target)
    return None


def convert_input(name: str, array: np.ndarray, type_: TensorType, source: str) -> np.ndarray:
    """Cast a given array to its parameter's dtype, refusing a different kind of data.

    The rule (docs/language.md, "Inputs"): a float parameter takes any float array (f64,
    f32, f16, bf16, fp8: rounded to its dtype), an integer parameter any integer array whose
    values fit, a bool parameter a bool array; a 2-byte (1-byte) void array, which is how
    np.savez stores ml_dtypes bf16 (fp8), is taken as the bits of a bf16 (fp8) parameter.
    """
    bits = _raw_bits(array, type_.dtype)
    if bits is not None:
        array = bits
    if array.shape != type_.shape:
        raise InputError(f"input '{name}' ({source}) has shape {list(array.shape)}, but the "
                         f"parameter is {type_}")
    kind = array.dtype.kind
    ok = ((is_float(type_.dtype) and (kind == "f" or from_np_dtype(array.dtype) is not None
                                      and is_float(from_np_dtype(array.dtype))))
          or (is_int(type_.dtype) and kind in "iu")
          or (type_.dtype == "bool" and kind == "b"))
    if not ok:
        raise InputError(f"input '{name}' ({source}) has dtype {array.dtype}, but the parameter "
                         f"is {type_}")
    if is_int(type_.dtype) and array.size:
        info = np.iinfo(np_dtype(type_.dtype))
        if array.min() < info.min or array.max() > info.max:
            raise InputError(f"input '{name}' ({source}) has values outside the range of "
                             f"{type_.dtype} ({info.min}..{info.max})")
    return array.astype(np_dtype(type_.dtype))


def prepare_inputs(fn: Function, given: dict[str, np.ndarray], seed: int = 0,
                   sources: dict[str, str] | None = None, *, require: bool = False,
                   warn=None) -> dict[str, np.ndarray]:
    """Every parameter's array: the given ones converted, the others seeded random.

    With `require` a missing input is an InputError; otherwise `warn` (when given) gets the
    one-line warning naming the inputs drawn at random."""
    sources = sources or {}
    check_seed(seed)
    names = [p.name for p in fn.params]
    for name in given:
        if name not in names:
            raise InputError(f"unknown input '{name}'; the parameters are {', '.join(names)}")
    message = missing_inputs_message([n for n in names if n not in given], require,
                                     bool(given))
    if message and warn is not None:
        warn(message)
    check_host_memory(sum(p.type.numel * itemsize(p.type.dtype) for p in fn.params),
                      "the inputs")
    inputs = {}
    for index, param in enumerate(fn.params):
        if param.name in given:
            inputs[param.name] = convert_input(param.name, given[param.name], param.type,
                                               sources.get(param.name, "given"))
        else:
            inputs[param.name] = random_input(param.type, seed, index)
    return inputs


def assembly_inputs(program, pairs: list[str], npz: str | None, seed: int, *,
                    draw_missing: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """The kernel arguments of an assembly program by tensor name, and the names of those
    not given (drawn at random when `draw_missing`): files are read and checked as for a `.zt` program (same dtype rule); a missing
    tensor is (when `draw_missing`) seeded normal values in directive order, cast to its
    dtype. Call after checking that the tensors fit GM."""
    check_seed(seed)
    given, sources = read_inputs(pairs or [], npz)
    by_name = {t.name: t for t in program.inputs}
    for name in given:
        if name not in by_name:
            raise InputError(f"input '{name}' is not an input tensor of the program "
                             f"(inputs: {', '.join(by_name) or 'none'})")
    drawn = [t for t in program.inputs if t.name not in given]
    if draw_missing:
        check_host_memory(sum(t.nbytes for t in program.inputs), "the inputs")
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for tensor in program.inputs:
        type_ = TensorType(tensor.dtype, tuple(tensor.shape))
        if tensor.name in given:
            inputs[tensor.name] = convert_input(tensor.name, given[tensor.name], type_,
                                                sources[tensor.name])
        elif draw_missing:
            value = rng.standard_normal(tensor.shape, dtype=np.float32)
            if tensor.dtype in ("i32", "i8"):
                value = np.round(value * 4)
            elif tensor.dtype == "bool":
                value = value > 0
            inputs[tensor.name] = value
    return inputs, [t.name for t in drawn]


def load_program_and_inputs(args, warn=None) -> tuple[Function, dict[str, np.ndarray]]:
    """For `zhenwu run`: read the input files, bind the shapes, check the program, and make
    every input (given or random). `args` has program, input, inputs, shape, seed, entry."""
    shapes = parse_shape_options(getattr(args, "shape", []) or [])
    given, sources = read_inputs(getattr(args, "input", []) or [], getattr(args, "inputs", None),
                                 args.program)
    fn = load_program(args.program, entry=getattr(args, "entry", None), shapes=shapes,
                      input_shapes={name: array.shape for name, array in given.items()})
    return fn, prepare_inputs(fn, given, getattr(args, "seed", 0) or 0, sources,
                              require=getattr(args, "require_inputs", False), warn=warn)


def output_array(array: np.ndarray) -> np.ndarray:
    """How an output is written: floats as f32, integers and bools as they are."""
    name = from_np_dtype(array.dtype)
    if name is not None and is_float(name):
        return np.asarray(array, dtype=np.float32)
    return np.asarray(array)


def warn_on_stderr(message: str) -> None:
    """How the CLI shows a warning: one line on stderr."""
    print(message, file=sys.stderr)


def write_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """Write `out0, out1, ...` as an .npz archive to exactly `path` (no `.npz` added);
    a path that cannot be written (a directory, a full device) is an InputError."""
    arrays = {f"out{i}": output_array(a) for i, a in enumerate(outputs)}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError as err:
        raise InputError(f"{path}: cannot write the outputs ({err})") from None
