"""ONNX to `.zt`: one statement per node, names kept, initializers as weight parameters.

`import_onnx(path_or_model)` returns `(source, weights)`: the text of a `.zt` program whose
entry `main` takes the graph inputs and then one parameter per initializer the program uses
at run time, and the arrays of those initializers keyed by parameter name. The program's
first lines name the weights file (`# weights: model.npz`) so that `zhenwu run model.zt`
binds them.

How the graph is walked (once, in the file's node order, which ONNX requires to be
topological):
- Every ONNX value is either a `Const` (known at import: initializers, `Constant` nodes and
  everything computed only from them) or a `Tensor` (a `.zt` variable). A node whose inputs
  are all `Const` is folded with numpy (compiler/importers/onnx_ops.py), so the chains that
  exporters write to compute shapes (Shape -> Gather -> Concat -> Reshape) never reach the
  program.
- A dynamic dim (`dim_param`, or an unnamed one) is a symbolic dim of the entry. `Shape` of a
  tensor with symbolic dims gives a `Const` whose elements are `Sym`s (dim expressions such as
  `S * 8`), and the folds compute on them, so reshapes keep their symbolic targets.
- A `Const` used by a run-time node is written as a literal (one element), `full(...)` (all
  elements equal) or a weight parameter.
- What zhenwu cannot express (an op, an attribute value, a dtype, a shape known only from
  tensor data at run time) is an `OnnxImportError` naming the node, its op type and what is
  not supported.

The op table is `OPS` in compiler/importers/onnx_ops.py; docs/onnx.md lists it.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zhenwu.isa.errors import Diagnostic, InputError

# zt element types of ONNX's TensorProto data types; int64 narrows to i32 and double to f32.
# Filled lazily (the onnx package is imported only when a model is read).
_RESERVED = {"fn", "return", "const", "true", "false", "None", "inf", "pi", "main", "f32",
             "bf16", "f16", "fp8", "i32", "i8", "bool"}


class OnnxImportError(Diagnostic):
    """A model zhenwu cannot import: malformed, or using something it does not support."""


class NotFoldable(Exception):
    """Raised by a fold that cannot compute on import-time values (symbolic dims)."""


# ------------------------------------------------------------------ symbolic dims


class Sym:
    """A symbolic dim expression of the entry's dims (`S`, `S * 8`, `(B * S) // 2`).

    Arithmetic with ints and other Syms builds a new expression; equal expressions compare
    equal. Folds that need a number (comparisons, min, max) raise NotFoldable.
    """

    __slots__ = ("expr", "atomic")

    def __init__(self, expr: str, atomic: bool = True):
        self.expr = expr
        self.atomic = atomic

    def __repr__(self) -> str:
        return self.expr

    def __hash__(self) -> int:
        return hash(self.expr)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sym) and other.expr == self.expr

    def _wrapped(self) -> str:
        return self.expr if self.atomic else f"({self.expr})"

    def __add__(self, other):
        return dim_op("+", self, other)

    def __radd__(self, other):
        return dim_op("+", other, self)

    def __sub__(self, other):
        return dim_op("-", self, other)

    def __rsub__(self, other):
        return dim_op("-", other, self)

    def __mul__(self, other):
        return dim_op("*", self, other)

    def __rmul__(self, other):
        return dim_op("*", other, self)

    def __floordiv__(self, other):
        return dim_op("//", self, other)

    def __rfloordiv__(self, other):
        return dim_op("//", other, self)

    def __truediv__(self, other):
        return dim_op("//", self, other)  # dims are positive: ONNX's integer Div truncates

    def __rtruediv__(self, other):
        return dim_op("//", other, self)

    def __int__(self):
        raise NotFoldable(f"the symbolic dim {self.expr} is used as a number")

    __index__ = __int__

    def __bool__(self):
        raise NotFoldable(f"the symbolic dim {self.expr} is compared")

    def __lt__(self, other):
        raise NotFoldable(f"the symbolic dim {self.expr} is compared")

    __le__ = __gt__ = __ge__ = __lt__

    def __neg__(self):
        return dim_op("*", -1, self)


Dim = int | Sym


def _as_dim(value) -> Dim:
    if isinstance(value, Sym):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise NotFoldable(f"{value!r} is not a dim")


def dim_op(op: str, a, b) -> Dim:
    """a op b on dims (ints or Syms), simplifying the identities."""
    a, b = _as_dim(a), _as_dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return {"+": a + b, "-": a - b, "*": a * b,
                "//": (abs(a) // abs(b)) * (1 if (a >= 0) == (b > 0) else -1) if b else 0}[op]
    if op == "*" and (a == 1 or b == 1):
        return b if a == 1 else a
    if op in ("+", "-") and b == 0:
        return a
    if op == "+" and a == 0:
        return b
    if op == "//" and b == 1:
        return a
    if op == "//" and isinstance(a, Sym) and isinstance(b, int) and _is_product(a.expr) \
            and a.expr.endswith(f" * {b}"):
        rest = a.expr[: -len(f" * {b}")]  # (X * b) // b is X
        return Sym(rest, " " not in rest)

    def text(d, tight: bool) -> str:
        if isinstance(d, Sym):
            return d._wrapped() if tight or op in ("-", "//") else d.expr
        return f"({d})" if d < 0 else str(d)

    if op == "*" and isinstance(a, Sym) and _is_product(a.expr):
        return Sym(f"{a.expr} * {text(b, True)}", False)
    return Sym(f"{text(a, op != '+')} {op} {text(b, op != '+')}", False)


def _is_product(expr: str) -> bool:
    """Whether a dim expression is a plain product of names and numbers (`S * 8`)."""
    return all(part.strip().isidentifier() or part.strip().isdigit()
               for part in expr.split(" * "))


def dim_text(d: Dim) -> str:
    return d.expr if isinstance(d, Sym) else str(int(d))


def shape_text(shape) -> str:
    return "[" + ", ".join(dim_text(d) for d in shape) + "]"


def dims_product(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_op("*", out, d)
    return out


# ------------------------------------------------------------------ values


@dataclass
class Const:
    """A value known at import: a numpy array (object dtype when it holds Syms)."""

    array: np.ndarray
    # How to compute it on the chip instead of shipping it as a weight: (node, inputs,
    # attrs, output index) of a generator (Range, ConstantOfShape) or of a node computing
    # only from such values and a few numbers (an iota-based causal mask, positions).
    recipe: tuple | None = None
    label: str | None = None

    @property
    def symbolic(self) -> bool:
        return self.array.dtype == object

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def rank(self) -> int:
        return self.array.ndim


@dataclass
class Tensor:
    """A run-time value: a `.zt` variable of a dtype and shape (dims int or Sym)."""

    name: str
    dtype: str
    shape: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)


Value = Const | Tensor


def zt_dtype_of_np(dtype: np.dtype) -> str | None:
    """The zt dtype a numpy dtype of an import-time value becomes at run time."""
    dtype = np.dtype(dtype)
    if dtype == object:
        return "i32"
    if dtype == np.bool_:
        return "bool"
    if dtype.kind in "iu":
        return "i8" if dtype == np.int8 else "i32"
    if dtype.kind == "f" or dtype.kind == "V":
        name = str(dtype)
        return {"float16": "f16", "bfloat16": "bf16", "float8_e4m3fn": "fp8"}.get(name, "f32")
    return None


# ------------------------------------------------------------------ names


def sanitize(name: str, fallback: str) -> str:
    """A valid `.zt` identifier close to an ONNX name (`/layers.0/MatMul_output_0` ->
    `layers_0_MatMul`)."""
    text = re.sub(r"_output_0$|:0$", "", name)
    text = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    text = re.sub(r"__+", "_", text)
    if not text:
        text = fallback
    if text[0].isdigit():
        text = f"v{text}"
    return text


# ------------------------------------------------------------------ the importer


class Importer:
    """Walks one ONNX graph and writes the `.zt` program (see the module docstring)."""

    def __init__(self, model, where: str):
        from zhenwu.compiler.frontend.builtins import BUILTINS
        from zhenwu.compiler.frontend.checker import GLOBAL_CONSTANTS

        self.model = model
        self.where = where
        self.opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
        self.values: dict[str, Value] = {}
        self.taken: set[str] = set(_RESERVED) | set(BUILTINS) | set(GLOBAL_CONSTANTS) \
            | set(keyword.kwlist) | {"softmax", "log_softmax", "layernorm", "rmsnorm", "silu",
                                     "clip"}
        self.lines: list[str] = []
        self.params: list[tuple[str, str]] = []  # (name, type text), inputs then weights
        self.weights: dict[str, np.ndarray] = {}
        # id(Const) -> (the Const, its parameter name); holding the Const keeps its id from
        # being reused by a later temporary Const
        self.materialized: dict[int, tuple[Const, str]] = {}
        self.replayed: dict[str, Tensor] = {}  # ONNX output name -> its recomputed Tensor
        self.symbols: list[str] = []
        self.node = None

    # ---- errors

    def fail(self, what: str) -> OnnxImportError:
        """An error about the current node (or the model when there is none)."""
        node = self.node
        if node is None:
            return OnnxImportError(f"{self.where}: {what}")
        name = node.name or (node.output[0] if node.output else "?")
        return OnnxImportError(f"{self.where}: node '{name}' ({node.op_type}): {what}")

    # ---- names

    def fresh(self, onnx_name: str, fallback: str = "t") -> str:
        base = sanitize(onnx_name, fallback)
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name

    # ---- graph inputs and dims

    def symbol(self, label: str) -> Sym:
        name = self.fresh(label, "N")
        self.symbols.append(name)
        return Sym(name)

    def input_tensor(self, info) -> Tensor:
        from zhenwu.compiler.importers.onnx_ops import zt_dtype

        tt = info.type.tensor_type
        if not info.type.HasField("tensor_type"):
            raise self.fail(f"graph input '{info.name}' is not a tensor (sequences and maps "
                            "are not supported)")
        dtype = zt_dtype(self, tt.elem_type, f"graph input '{info.name}'")
        if not tt.HasField("shape"):
            raise self.fail(f"graph input '{info.name}' has no shape (zhenwu needs the rank)")
        dims: list[Dim] = []
        for index, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_value"):
                raise self.fail(f"graph input '{info.name}' has a dim of size {d.dim_value}")
            else:
                label = d.dim_param or f"{info.name}_dim{index}"
                if label not in self.dim_symbols:
                    self.dim_symbols[label] = self.symbol(label)
                dims.append(self.dim_symbols[label])
        name = self.fresh(info.name, "x")
        self.params.append((name, f"{dtype}{shape_text(dims)}"))
        return Tensor(name, dtype, tuple(dims))

    # ---- writing statements

    def emit(self, expr: str, dtype: str, shape, out: str | None = None) -> Tensor:
        """`name = expr` for the current node's output `out` (default: its first)."""
        out = out if out is not None else self.node.output[0]
        self.check_rank(shape)
        name = self.fresh(out, self.node.op_type.lower())
        self.lines.append(self._with_comment(f"{name} = {expr}"))
        return Tensor(name, dtype, tuple(_as_dim(d) for d in shape))

    def check_rank(self, shape) -> None:
        from zhenwu.isa.program import MAX_RANK

        if len(shape) > MAX_RANK:
            raise self.fail(f"a rank-{len(shape)} tensor is not supported (zhenwu's tensors "
                            f"have at most {MAX_RANK} dims)")

    def emit_many(self, expr: str, results: list[tuple[str, str, tuple]]) -> list[Tensor]:
        """`a, b = expr` for several outputs: results are (onnx name, dtype, shape)."""
        for _, _, shape in results:
            self.check_rank(shape)
        names = [self.fresh(out, self.node.op_type.lower()) for out, _, _ in results]
        self.lines.append(self._with_comment(f"{', '.join(names)} = {expr}"))
        return [Tensor(n, dtype, tuple(shape)) for n, (_, dtype, shape) in zip(names, results)]

    def _with_comment(self, line: str) -> str:
        node = self.node
        label = node.name or ""
        return f"{line}  # {label} ({node.op_type})" if label else f"{line}  # {node.op_type}"

    # ---- operands

    def tensor(self, value: Value, like=None) -> str:
        """The text of an operand. A Const of one element becomes a literal when it
        broadcasts against `like` (anything with a `rank`) without raising the result's rank;
        a Const of equal elements `full(...)`; any other Const a weight parameter."""
        if isinstance(value, Tensor):
            return value.name
        array = value.array
        one = array.size == 1 and like is not None and like.rank >= array.ndim
        if value.symbolic:
            if one:
                return literal(array.reshape(-1)[0], array.dtype)
            raise self.fail("a tensor computed from symbolic dims is used as run-time data "
                            "(a data-dependent shape)")
        if array.size == 0:
            raise self.fail(f"an empty tensor (shape {list(array.shape)}) is not supported")
        first = array.reshape(-1)[0]
        finite = array.dtype.kind != "f" or bool(np.isfinite(np.float32(first)))
        if one and (finite or not np.isnan(np.float32(first))):
            return literal(first, array.dtype)
        if value.recipe is not None:
            replayed = self.replay(value)
            if replayed is not None:
                return replayed.name
        dtype = zt_dtype_of_np(array.dtype)
        if finite and dtype is not None and self._splat(array) and (
                dtype not in ("i32", "i8") or -2**31 <= int(first) < 2**31):
            return f"full({list(array.shape)}, {literal(first, array.dtype)}, {dtype})"
        return self.weight(value)

    @staticmethod
    def _splat(array: np.ndarray) -> bool:
        flat = array.reshape(-1)
        return bool(np.all(flat == flat[0]))

    def replay(self, value: Const) -> Tensor | None:
        """Emit the statement computing a Const from its recipe (once), or None when its
        rule refuses (the Const then becomes a weight)."""
        node, inputs, attrs, index = value.recipe
        key = node.output[index]
        if key in self.replayed:
            return self.replayed[key]
        from zhenwu.compiler.importers.onnx_ops import OPS

        saved, mark = self.node, len(self.lines)
        taken = set(self.taken)
        self.node = node
        try:
            outputs = OPS[node.op_type](self, node, inputs, attrs)
        except (OnnxImportError, NotFoldable):
            del self.lines[mark:]
            self.taken = taken
            return None
        finally:
            self.node = saved
        for i, out in enumerate(outputs):
            if isinstance(out, Tensor):
                self.replayed[node.output[i]] = out
        return self.replayed.get(key)

    def weight(self, value: Const, onnx_name: str | None = None) -> str:
        """A parameter holding a Const's array (once per Const)."""
        key = id(value)
        if key in self.materialized:
            return self.materialized[key][1]
        from zhenwu.compiler.importers.onnx_ops import to_runtime_array

        array = to_runtime_array(self, value.array)
        label = onnx_name or value.label or "const"
        name = self.fresh(label, "w")
        dtype = zt_dtype_of_np(array.dtype)
        self.params.append((name, f"{dtype}{shape_text(array.shape)}"))
        self.weights[name] = array
        self.materialized[key] = (value, name)
        return name

    # ---- the walk

    def run(self):
        from zhenwu.compiler.importers.onnx_ops import OPS, const_from_tensor, fold

        graph = self.model.graph
        self.dim_symbols: dict[str, Sym] = {}
        initializers = {}
        for init in graph.initializer:
            const = const_from_tensor(self, init)
            const.label = init.name
            initializers[init.name] = const
        for info in graph.input:
            if info.name in initializers:
                continue  # old exporters list initializers as inputs too
            self.values[info.name] = self.input_tensor(info)
        self.values.update(initializers)
        for node in graph.node:
            self.node = node
            self.import_node(node, OPS, fold)
        self.node = None
        returns, types = [], []
        for info in graph.output:
            value = self.values.get(info.name)
            if value is None:
                raise self.fail(f"graph output '{info.name}' is not computed by any node")
            if isinstance(value, Const):
                value = self.const_output(info.name, value)
            returns.append(value.name)
            types.append(f"{value.dtype}{shape_text(value.shape)}")
        return returns, types

    def const_output(self, name: str, value: Const) -> Tensor:
        """A graph output known at import still has to be computed by the program."""
        from zhenwu.compiler.importers.onnx_ops import to_runtime_array

        if value.symbolic:
            raise self.fail(f"graph output '{name}' is computed from symbolic dims only")
        array = to_runtime_array(self, value.array)
        dtype = zt_dtype_of_np(array.dtype)
        text = self.weight(value, name)
        out = self.fresh(name, "out")
        self.lines.append(f"{out} = {text}  # {name}, known at import")
        return Tensor(out, dtype, tuple(array.shape))

    def import_node(self, node, ops, fold) -> None:
        """Fold the node when its inputs are known, else write it with its rule."""
        domain = node.domain or "ai.onnx"
        if domain not in ("ai.onnx", "com.microsoft"):
            raise self.fail(f"operators of domain '{domain}' are not supported")
        inputs: list[Value | None] = []
        for name in node.input:
            if not name:
                inputs.append(None)
                continue
            if name not in self.values:
                raise self.fail(f"input '{name}' is not defined before the node (the graph "
                                "is not in topological order, or the value is missing)")
            inputs.append(self.values[name])
        rule = ops.get(node.op_type)
        if rule is None:
            raise self.fail("this operator is not supported (docs/onnx.md lists the "
                            "supported ones)")
        attrs = self.attributes(node)
        from zhenwu.compiler.importers.onnx_ops import ATTRS

        for name in attrs:
            if name not in ATTRS.get(node.op_type, ()):
                raise self.fail(f"attribute '{name}' is not supported")
        outputs = None
        if all(v is None or isinstance(v, Const) for v in inputs) and node.op_type != "Constant":
            outputs = fold(self, node, inputs, attrs)
            if outputs is not None and self.recomputable(node, inputs):
                for index, out in enumerate(outputs):
                    if isinstance(out, Const) and not out.symbolic:
                        out.recipe = (node, inputs, attrs, index)
        if outputs is None:
            outputs = rule(self, node, inputs, attrs)
        for name, value in zip(node.output, outputs):
            if name and value is not None:
                self.values[name] = value
        for name in node.output[len(outputs):]:
            if name:
                raise self.fail(f"output '{name}' is not supported")

    GENERATORS = ("Range", "ConstantOfShape")
    SMALL = 16  # elements: a constant input this small is written inline when recomputing

    def recomputable(self, node, inputs) -> bool:
        """Whether a folded node's outputs keep a recipe: a generator, or a node of values
        with recipes and small constants (never of weights)."""
        if node.op_type in self.GENERATORS:
            return True
        consts = [v for v in inputs if v is not None]
        return any(v.recipe is not None for v in consts) and all(
            v.recipe is not None or v.array.size <= self.SMALL for v in consts)

    def attributes(self, node) -> dict:
        from onnx import helper

        attrs = {}
        for attr in node.attribute:
            if attr.ref_attr_name:
                raise self.fail(f"attribute '{attr.name}' refers to a function attribute")
            value = helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8", "replace") for v in value]
            attrs[attr.name] = value
        return attrs

    # ---- the program text

    def program(self, returns: list[str], types: list[str], weights_file: str | None) -> str:
        head = [f"# Imported from {self.where} by `zhenwu import`."]
        if self.weights and weights_file:
            head.append(f"# weights: {weights_file}")
        if self.symbols:
            head.append(f"# Symbolic dims: {', '.join(self.symbols)} (bind with --shape "
                        f"{self.symbols[0]}=N or from the inputs).")
        params = ",\n        ".join(f"{n}: {t}" for n, t in self.params)
        ret = types[0] if len(types) == 1 else "(" + ", ".join(types) + ")"
        body = "\n".join(f"    {line}" for line in self.lines)
        return ("\n".join(head) + f"\nfn main({params}) -> {ret} {{\n{body}\n"
                f"    return {', '.join(returns)}\n}}\n")


def literal(value, dtype) -> str:
    """A `.zt` literal of one element."""
    dtype = np.dtype(dtype)
    if isinstance(value, Sym):
        return value.expr
    if dtype == np.bool_:
        return "true" if bool(value) else "false"
    if dtype.kind in "iu" or dtype == object:
        return str(int(value))
    number = float(value)
    if np.isnan(number):
        raise NotFoldable("NaN")
    if np.isinf(number):
        return "inf" if number > 0 else "-inf"
    # the shortest text that reads back to the same value at the constant's precision
    text = str(np.float32(number)) if dtype.itemsize <= 4 else repr(number)
    if float(text) != float(np.float32(number)) and dtype.itemsize <= 4:
        text = repr(number)
    return text if ("." in text or "e" in text) else text + ".0"


# ------------------------------------------------------------------ entry points


def load_model(source, where: str | None = None):
    """An `onnx.ModelProto` from a path, bytes or a ModelProto; a bad file is an error."""
    try:
        import onnx
    except ImportError:
        raise InputError("reading ONNX models needs the onnx package: pip install "
                         "'zhenwu[onnx]' (or pip install onnx)") from None
    if isinstance(source, onnx.ModelProto):
        return source, where or "<model>"
    path = str(source)
    where = where or path
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"{where}: not a readable ONNX model (truncated or not ONNX: "
                              f"{type(err).__name__})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise OnnxImportError(f"{where}: not an ONNX model (no graph); is the file truncated?")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(Path(path).parent))
        except Exception as err:
            raise OnnxImportError(f"{where}: cannot read its external weights "
                                  f"({type(err).__name__}: {err})") from None
    return model, where


def import_onnx(source, *, weights_file: str | None = None,
                where: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Import an ONNX model (a path or an `onnx.ModelProto`) as `.zt`.

    Returns the program text and its weights (parameter name -> array). `weights_file`
    names the .npz the program's header points at (`# weights: FILE`), if any.
    """
    model, where = load_model(source, where)
    importer = Importer(model, where)
    try:
        returns, types = importer.run()
    except NotFoldable as err:
        raise importer.fail(f"a value is needed at import but depends on a symbolic dim "
                            f"({err})") from None
    except OnnxImportError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, ArithmeticError) as err:
        # A malformed node (wrong input count, bad attribute type) must still name the node.
        raise importer.fail(f"cannot import ({type(err).__name__}: {err})") from None
    if not returns:
        raise OnnxImportError(f"{where}: the graph has no outputs")
    return importer.program(returns, types, weights_file), importer.weights


_CACHE: dict[tuple, tuple[str, dict]] = {}


def import_file(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """`import_onnx` of a file, cached by path and modification time (`zhenwu run
    model.onnx` reads the program and its weights from one import)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return import_onnx(path)
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = import_onnx(path)
    return _CACHE[key]
