"""Program inputs and outputs for `zhenwu run`: `-i name=file.npy`, `--inputs in.npz`,
`--shape B=64`, seeded random inputs, and writing `out0, out1, ...` to an .npz.

Shared by the reference path (compiler/commands/run_reference.py) and the compiled path.
Files are read with `allow_pickle=False`: a pickled array is refused, never loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from compiler.frontend import load_program
from compiler.graph.dtypes import from_np_dtype, is_float, is_int, np_dtype
from compiler.graph.ir import Function, TensorType
from isa.errors import InputError, UsageError


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


def _check_array(array, where: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{where}: not a numpy array")
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
    if not _magic(path).startswith(b"PK"):
        raise InputError(f"{path}: not an .npz archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: is a single .npy array; pass it with -i NAME={path}")
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
        from compiler.importers.onnx import import_file

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


def convert_input(name: str, array: np.ndarray, type_: TensorType, source: str) -> np.ndarray:
    """Cast a given array to its parameter's dtype, refusing a different kind of data."""
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
                   sources: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Every parameter's array: the given ones converted, the others seeded random."""
    sources = sources or {}
    names = [p.name for p in fn.params]
    for name in given:
        if name not in names:
            raise InputError(f"unknown input '{name}'; the parameters are {', '.join(names)}")
    inputs = {}
    for index, param in enumerate(fn.params):
        if param.name in given:
            inputs[param.name] = convert_input(param.name, given[param.name], param.type,
                                               sources.get(param.name, "given"))
        else:
            inputs[param.name] = random_input(param.type, seed, index)
    return inputs


def load_program_and_inputs(args) -> tuple[Function, dict[str, np.ndarray]]:
    """For `zhenwu run`: read the input files, bind the shapes, check the program, and make
    every input (given or random). `args` has program, input, inputs, shape, seed, entry."""
    shapes = parse_shape_options(getattr(args, "shape", []) or [])
    given, sources = read_inputs(getattr(args, "input", []) or [], getattr(args, "inputs", None),
                                 args.program)
    fn = load_program(args.program, entry=getattr(args, "entry", None), shapes=shapes,
                      input_shapes={name: array.shape for name, array in given.items()})
    return fn, prepare_inputs(fn, given, getattr(args, "seed", 0) or 0, sources)


def output_array(array: np.ndarray) -> np.ndarray:
    """How an output is written: floats as f32, integers and bools as they are."""
    name = from_np_dtype(array.dtype)
    if name is not None and is_float(name):
        return np.asarray(array, dtype=np.float32)
    return np.asarray(array)


def write_outputs(path: str, outputs: list[np.ndarray]) -> None:
    """Write `out0, out1, ...` to an .npz file."""
    arrays = {f"out{i}": output_array(a) for i, a in enumerate(outputs)}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    except OSError as err:
        raise InputError(f"{path}: cannot write the outputs ({err})") from None
