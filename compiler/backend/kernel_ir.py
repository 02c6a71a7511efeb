"""Kernel IR: kernels as tiled loop nests over GM tensors, with per-core L1/ACC buffers.

A `KernelProgram` is the GM tensors (each with its HBM address once planned) and the kernels
in execution order. A `Kernel` holds the ids of the graph ops it computes and one or more
`Nest`s. A nest is a loop over an iteration space (`extents`), cut into tiles (`tile`); each
axis is either parallel (`p`: its tiles are spread over the cores) or a reduction (`r`: its
tiles are visited in order by one core, accumulating). Per parallel tile the nest runs its
`init` statements, then its `step` statements once per reduction tile, then its `final`
statements.

GM tensors are seen through `View`s: a strided window of a tensor whose dims are axes of the
nest (the DMA descriptor a load or store uses). Tiles live in `Buffer`s in L1 or ACC; a buffer
with two copies is double-buffered (loads of the next tile overlap compute on this one).

Text form (prints and parses back, `parse_kernels(print_kernels(p)) == p`):

    tensor x GM bf16[4,784] in @0x0  # 6272 bytes
    kernel matmul_3 ops 3 {
      nest [4 p 16, 256 p 128, 784 r 256] {
        buffer a L1 bf16 16x256 @0 x2 +16384  # 24576 bytes
        step:
          load a <- x+0[0:4:784:0, 2:784:1:0] pad 0.0
          mma.bf16.f32 c <- a, b
        final:
          store t3+0[0:4:256:0, 1:256:1:0] <- c
      }
    }

A view prints as `tensor+offset[axis:dim:stride:shift, ...]`: view dim i is nest axis
`axis`, has `dim` elements (the bound outside which loads read the pad value and stores are
dropped), `stride` elements between neighbours, and nest coordinate c reads element c - shift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import isnan, prod

from zhenwu.compiler.graph.dtypes import itemsize

LEVELS = ("GM", "L1", "ACC")


@dataclass(frozen=True)
class Tensor:
    """A tensor in GM (HBM): `role` is in, out, temp or const; `address` once planned."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str
    address: int | None = None

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * itemsize(self.dtype)


@dataclass(frozen=True)
class View:
    """A strided window of GM tensor `tensor` (element type `dtype`) over nest axes."""

    tensor: str
    dtype: str
    offset: int                 # elements from the tensor's base
    axes: tuple[int, ...]       # the nest axis each view dim follows
    dims: tuple[int, ...]       # in-bounds elements per view dim
    strides: tuple[int, ...]    # element strides per view dim (0 broadcasts)
    shifts: tuple[int, ...]     # view coordinate = nest coordinate - shift

    @property
    def rank(self) -> int:
        return len(self.axes)


@dataclass(frozen=True)
class Buffer:
    """A tile buffer of `rows x cols` elements in L1 or ACC, `copies` of it `stride` bytes
    apart starting at byte `offset` of the level (copies alternate by tile)."""

    name: str
    level: str
    dtype: str
    rows: int
    cols: int
    offset: int = 0
    copies: int = 1
    stride: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of one copy."""
        return self.rows * self.cols * itemsize(self.dtype)

    @property
    def footprint(self) -> int:
        """Bytes of all copies (the extent from `offset`)."""
        return self.nbytes if self.copies == 1 else (self.copies - 1) * self.stride + self.nbytes


# ------------------------------------------------------------------ statements


@dataclass(frozen=True)
class Load:
    """DMA a tile of `view` (the nest's current tile) into buffer `dst`, cast to its dtype;
    elements outside the view's dims read as `pad`."""

    dst: str
    view: View
    pad: float = 0.0
    # the box, when it is not the nest's tile along the view's axes (a pool's input rows
    # with their halo)
    box: tuple[int, ...] = ()


@dataclass(frozen=True)
class Store:
    """DMA buffer `src` to the current tile of `view`, cast to the view's dtype (after
    max(x, 0) when `relu`: the DMA's fused activation)."""

    view: View
    src: str
    relu: bool = False


@dataclass(frozen=True)
class Strided:
    """A vector source reading buffer `buffer` from element `offset` with row and column
    strides in elements (a pool's window taps over its input rows). Its text form is
    `buffer@offset:row_stride:col_stride`."""

    buffer: str
    offset: int
    row_stride: int
    col_stride: int

    def __str__(self) -> str:
        return f"{self.buffer}@{self.offset}:{self.row_stride}:{self.col_stride}"

    @staticmethod
    def parse(text: str) -> Strided:
        """The operand `buffer@offset:rs:cs` prints as."""
        buffer, _, spec = text.partition("@")
        offset, row_stride, col_stride = (int(v) for v in spec.split(":"))
        return Strided(buffer, offset, row_stride, col_stride)


@dataclass(frozen=True)
class Vec:
    """A vector-engine instruction on whole tiles: `op` is the mnemonic without the `V`
    (`ADD`, `EXP`, `CMP.lt`, `SEL`, `DUP`, `COPY`, ...), `srcs` buffer names, float
    immediates or `Strided` reads of a buffer."""

    op: str
    dtype: str
    dst: str
    srcs: tuple[str | float | Strided, ...] = ()

    @property
    def instr(self):
        """The `InstrDef` of the instruction (`VADD` for `ADD`, `VCMP` for `CMP.lt`)."""
        from zhenwu.isa.instructions import INSTRUCTIONS

        return INSTRUCTIONS["V" + self.op.partition(".")[0]]

    @property
    def cond(self) -> str | None:
        """VCMP's condition suffix (`lt` of `CMP.lt`), else None."""
        return self.op.partition(".")[2] or None

    def buffers_read(self) -> set[str]:
        """The buffers the sources read."""
        return {s.buffer if isinstance(s, Strided) else s for s in self.srcs
                if isinstance(s, (str, Strided))}

    def __post_init__(self):
        from zhenwu.isa.instructions import INSTRUCTIONS

        if "V" + self.op.partition(".")[0] not in INSTRUCTIONS:
            raise ValueError(f"vec {self.op}: V{self.op.partition('.')[0]} is no instruction")
        # one NaN object for every NaN immediate, so that equal programs compare equal
        # (NaN != NaN; tuples compare items by identity first) and a parsed one matches
        if any(isinstance(s, float) and isnan(s) for s in self.srcs):
            object.__setattr__(self, "srcs", tuple(
                NAN if isinstance(s, float) and isnan(s) else s for s in self.srcs))


NAN = float("nan")


@dataclass(frozen=True)
class Iota:
    """dst[i, j] = (coordinate of nest axis `axis`) + i * cols + j."""

    dtype: str
    dst: str
    axis: int


@dataclass(frozen=True)
class Reduce:
    """Combine each row of `src` into `dst` (rows x 1): op in SUM MAX MIN PROD ARGMAX.
    ARGMAX also keeps the index (`index` buffer), counting from the coordinate of `axis`."""

    op: str
    dtype: str
    dst: str
    src: str
    index: str | None = None
    axis: int | None = None


@dataclass(frozen=True)
class Mma:
    """dst (ACC, M x N) (+)= a (M x K) @ b (K x N); the first reduction step initialises."""

    in_dtype: str
    acc_dtype: str
    dst: str
    a: str
    b: str
    mode: str = ""   # "init" or "acc" on every step; "" initialises on the first step only
    trans_a: bool = False   # a is stored K x M (an implicit GEMM's weights)


@dataclass(frozen=True)
class ColumnCopy:
    """Copy `cols` columns of buffer `src` from column `src_col` into buffer `dst` from
    column `dst_col`, every row (negated when `negate`): a concat along the last axis built
    in a tile of whole rows. A source of one column or one row (a broadcast value) is read
    with a zero stride."""

    dtype: str
    dst: str
    dst_col: int
    src: str
    src_col: int
    cols: int
    negate: bool = False


Stmt = Load | Store | Vec | Iota | Reduce | Mma | ColumnCopy


@dataclass(frozen=True)
class Nest:
    """A tiled loop nest: see the module docstring."""

    extents: tuple[int, ...]
    tile: tuple[int, ...]
    kinds: tuple[str, ...]          # 'p' or 'r' per axis
    buffers: tuple[Buffer, ...] = ()
    init: tuple[Stmt, ...] = ()
    step: tuple[Stmt, ...] = ()
    final: tuple[Stmt, ...] = ()
    # loads run once per core before its first tile, into single-copy buffers (operands
    # that are the same for every tile, e.g. a bias row when a tile spans all columns)
    setup: tuple[Stmt, ...] = ()
    # (query axis, key axis) of a causal nest: a tile visits only the key tiles at or
    # before its last query, and tiles are dealt to the cores longest first
    causal: tuple[int, ...] = ()
    # axes whose tile coordinate is the same for every tile of a core (the innermost
    # parallel axis, when its tile count divides the cores): setup loads may follow them
    core_axes: tuple[int, ...] = ()
    # a nest with its own code generator ("flash": compiler/backend/flash_codegen.py)
    schedule: str = ""
    # grouped tile order over the last two parallel axes (m, n) with more than one tile:
    # consecutive tiles walk `group` m tiles down a column of n before moving to the next
    # column, so the cores working at once share operand panels in L2 (0: row-major)
    group: int = 0

    @property
    def grid(self) -> tuple[int, ...]:
        """Tiles per axis."""
        return tuple(-(-e // t) for e, t in zip(self.extents, self.tile))

    @property
    def parallel_tiles(self) -> int:
        return prod(g for g, k in zip(self.grid, self.kinds) if k == "p")

    @property
    def reduction_steps(self) -> int:
        return prod(g for g, k in zip(self.grid, self.kinds) if k == "r")

    def buffer(self, name: str) -> Buffer:
        for buf in self.buffers:
            if buf.name == name:
                return buf
        raise KeyError(name)

    def statements(self) -> tuple[Stmt, ...]:
        return self.setup + self.init + self.step + self.final


@dataclass(frozen=True)
class Kernel:
    """One kernel: the graph ops it computes (`op_ids`) and its loop nests, run in order."""

    name: str
    op_ids: tuple[int, ...]
    nests: tuple[Nest, ...]


@dataclass(frozen=True)
class KernelProgram:
    """GM tensors (in directive order: inputs, outputs, the rest) and kernels in order."""

    tensors: tuple[Tensor, ...]
    kernels: tuple[Kernel, ...] = field(default_factory=tuple)

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# ------------------------------------------------------------------ printer


def _num(value: float) -> str:
    return repr(float(value))


def print_view(view: View) -> str:
    dims = ", ".join(f"{a}:{d}:{s}:{h}" for a, d, s, h in
                     zip(view.axes, view.dims, view.strides, view.shifts))
    return f"{view.tensor}:{view.dtype}+{view.offset}[{dims}]"


def _operand(src: str | float | Strided) -> str:
    return f"#{_num(src)}" if isinstance(src, (int, float)) else str(src)


def print_stmt(stmt: Stmt) -> str:
    if isinstance(stmt, Load):
        box = f" box [{', '.join(map(str, stmt.box))}]" if stmt.box else ""
        return f"load {stmt.dst} <- {print_view(stmt.view)} pad {_num(stmt.pad)}{box}"
    if isinstance(stmt, Store):
        return f"store {print_view(stmt.view)} <- {stmt.src}" + (" relu" if stmt.relu else "")
    if isinstance(stmt, Vec):
        srcs = ", ".join(_operand(s) for s in stmt.srcs)
        return f"vec {stmt.op}.{stmt.dtype} {stmt.dst} <- {srcs}".rstrip(" <-")
    if isinstance(stmt, Iota):
        return f"iota.{stmt.dtype} {stmt.dst} axis {stmt.axis}"
    if isinstance(stmt, Reduce):
        dst = stmt.dst if stmt.index is None else f"{stmt.dst}, {stmt.index}"
        tail = "" if stmt.axis is None else f" axis {stmt.axis}"
        return f"reduce {stmt.op}.{stmt.dtype} {dst} <- {stmt.src}{tail}"
    if isinstance(stmt, ColumnCopy):
        neg = " neg" if stmt.negate else ""
        return (f"colcopy.{stmt.dtype} {stmt.dst}[{stmt.dst_col}:] <- "
                f"{stmt.src}[{stmt.src_col}:] cols {stmt.cols}{neg}")
    if isinstance(stmt, Mma):
        mode = f" {stmt.mode}" if stmt.mode else ""
        mode += " tA" if stmt.trans_a else ""
        return f"mma.{stmt.in_dtype}.{stmt.acc_dtype} {stmt.dst} <- {stmt.a}, {stmt.b}{mode}"
    raise TypeError(stmt)


def print_buffer(buf: Buffer) -> str:
    return (f"buffer {buf.name} {buf.level} {buf.dtype} {buf.rows}x{buf.cols} @{buf.offset} "
            f"x{buf.copies} +{buf.stride}  # {buf.footprint} bytes")


def print_nest(nest: Nest, indent: str = "  ") -> list[str]:
    axes = ", ".join(f"{e} {k} {t}" for e, k, t in zip(nest.extents, nest.kinds, nest.tile))
    lines = [f"{indent}nest [{axes}] {{"]
    if nest.causal:
        lines.append(f"{indent}  causal {' '.join(map(str, nest.causal))}")
    if nest.core_axes:
        lines.append(f"{indent}  core_axes {' '.join(map(str, nest.core_axes))}")
    if nest.schedule:
        lines.append(f"{indent}  schedule {nest.schedule}")
    if nest.group:
        lines.append(f"{indent}  group {nest.group}")
    lines += [f"{indent}  {print_buffer(b)}" for b in nest.buffers]
    for phase in ("setup", "init", "step", "final"):
        stmts = getattr(nest, phase)
        if stmts:
            lines.append(f"{indent}  {phase}:")
            lines += [f"{indent}    {print_stmt(s)}" for s in stmts]
    lines.append(f"{indent}}}")
    return lines


def print_kernels(program: KernelProgram) -> str:
    """The text form of a kernel program (see the module docstring)."""
    lines = []
    for t in program.tensors:
        addr = "" if t.address is None else f" @{t.address:#x}"
        lines.append(f"tensor {t.name} GM {t.dtype}[{','.join(map(str, t.shape))}] {t.role}{addr}"
                     f"  # {t.nbytes} bytes")
    for kernel in program.kernels:
        ops = ",".join(map(str, kernel.op_ids)) or "-"
        lines.append(f"kernel {kernel.name} ops {ops} {{")
        for nest in kernel.nests:
            lines += print_nest(nest)
        lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ parser


class KernelParseError(ValueError):
    """Malformed Kernel IR text (an internal format: raised as ValueError with the line)."""


_VIEW = re.compile(r"(\w+):(\w+)\+(-?\d+)\[([^\]]*)\]")
_TENSOR = re.compile(r"tensor (\w+) GM (\w+)\[([\d,]*)\] (\w+)(?: @(0x[0-9a-f]+))?$")
_COMMENT = re.compile(r"(^|\s)# .*$")
_COLCOPY = re.compile(r"(\w+)\[(\d+):\] <- (\w+)\[(\d+):\] cols (\d+)( neg)?")
_BUFFER = re.compile(r"buffer (\w+) (L1|ACC) (\w+) (\d+)x(\d+) @(\d+) x(\d+) \+(\d+)$")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def parse_view(text: str) -> View:
    m = _VIEW.fullmatch(text.strip())
    if not m:
        raise KernelParseError(f"bad view {text!r}")
    parts = [tuple(int(x) for x in p.split(":")) for p in m.group(4).split(",") if p.strip()]
    axes, dims, strides, shifts = (tuple(p[i] for p in parts) for i in range(4))
    return View(m.group(1), m.group(2), int(m.group(3)), axes, dims, strides, shifts)


def _parse_operand(text: str) -> str | float | Strided:
    text = text.strip()
    if text.startswith("#"):
        return float(text[1:])
    return Strided.parse(text) if "@" in text else text


def parse_stmt(line: str) -> Stmt:
    word, _, rest = line.partition(" ")
    if word == "load":
        dst, _, rest = rest.partition(" <- ")
        rest, _, box = rest.partition(" box ")
        view, _, pad = rest.rpartition(" pad ")
        return Load(dst, parse_view(view), float(pad),
                    _ints(box.strip().strip("[]")) if box else ())
    if word == "store":
        view, _, src = rest.rpartition(" <- ")
        src, _, relu = src.strip().partition(" ")
        if relu not in ("", "relu"):
            raise KernelParseError(f"unknown store flag {relu!r}")
        return Store(parse_view(view), src, relu == "relu")
    if word == "vec":
        head, _, srcs = rest.partition(" <- ")
        opdt, dst = head.split()
        op, _, dtype = opdt.rpartition(".")
        operands = tuple(_parse_operand(s) for s in srcs.split(",") if s.strip())
        return Vec(op, dtype, dst, operands)
    if word.startswith("iota."):
        dst, _, axis = rest.partition(" axis ")
        return Iota(word[5:], dst.strip(), int(axis))
    if word == "reduce":
        head, _, tail = rest.partition(" <- ")
        opdt, _, dsts = head.partition(" ")
        op, _, dtype = opdt.rpartition(".")
        names = [d.strip() for d in dsts.split(",")]
        src, _, axis = tail.partition(" axis ")
        return Reduce(op, dtype, names[0], src.strip(), names[1] if len(names) > 1 else None,
                      int(axis) if axis else None)
    if word.startswith("colcopy."):
        m = _COLCOPY.fullmatch(rest.strip())
        if not m:
            raise KernelParseError(f"bad colcopy {line!r}")
        dst, dst_col, src, src_col, cols, neg = m.groups()
        return ColumnCopy(word[8:], dst, int(dst_col), src, int(src_col), int(cols), bool(neg))
    if word.startswith("mma."):
        _, in_dtype, acc_dtype = word.split(".")
        dst, _, ops = rest.partition(" <- ")
        a, b = (s.strip() for s in ops.split(","))
        b, *flags = b.split()
        mode = next((f for f in flags if f in ("init", "acc")), "")
        if set(flags) - {"init", "acc", "tA"}:
            raise KernelParseError(f"unknown mma flags {flags}")
        return Mma(in_dtype, acc_dtype, dst.strip(), a, b, mode, "tA" in flags)
    raise KernelParseError(f"unknown statement {line!r}")


def parse_kernels(text: str) -> KernelProgram:
    """Parse the text form back into a KernelProgram."""
    tensors: list[Tensor] = []
    kernels: list[Kernel] = []
    kernel_head: tuple[str, tuple[int, ...]] | None = None
    nests: list[Nest] = []
    nest: dict | None = None
    phase = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", raw).strip()  # `# ...` comments; `#1.5` is an immediate
        if not line or line.startswith("#"):
            continue
        try:
            if nest is not None:
                if line == "}":
                    nests.append(Nest(**nest))
                    nest, phase = None, None
                elif line.startswith("schedule "):
                    nest["schedule"] = line[9:].strip()
                elif line.startswith("group "):
                    nest["group"] = int(line[6:])
                elif line.startswith("causal "):
                    nest["causal"] = _ints(line[7:].replace(" ", ","))
                elif line.startswith("core_axes "):
                    nest["core_axes"] = _ints(line[10:].replace(" ", ","))
                elif line.startswith("buffer "):
                    m = _BUFFER.match(line)
                    if not m:
                        raise KernelParseError(f"bad buffer {line!r}")
                    name, level, dtype, rows, cols, off, copies, stride = m.groups()
                    nest["buffers"] += (Buffer(name, level, dtype, int(rows), int(cols), int(off),
                                               int(copies), int(stride)),)
                elif line in ("setup:", "init:", "step:", "final:"):
                    phase = line[:-1]
                else:
                    if phase is None:
                        raise KernelParseError("statement outside init/step/final")
                    nest[phase] += (parse_stmt(line),)
            elif kernel_head is not None:
                if line == "}":
                    kernels.append(Kernel(kernel_head[0], kernel_head[1], tuple(nests)))
                    kernel_head, nests = None, []
                elif line.startswith("nest [") and line.endswith("] {"):
                    axes = [a.split() for a in line[6:-3].split(",") if a.strip()]
                    nest = {"extents": tuple(int(a[0]) for a in axes),
                            "kinds": tuple(a[1] for a in axes),
                            "tile": tuple(int(a[2]) for a in axes),
                            "buffers": (), "init": (), "step": (), "final": (),
                            "setup": ()}
                else:
                    raise KernelParseError(f"expected a nest, got {line!r}")
            elif line.startswith("tensor "):
                m = _TENSOR.match(line)
                if not m:
                    raise KernelParseError(f"bad tensor {line!r}")
                name, dtype, dims, role, addr = m.groups()
                tensors.append(Tensor(name, dtype, _ints(dims), role,
                                      int(addr, 16) if addr else None))
            elif line.startswith("kernel ") and line.endswith("{"):
                _, name, _, ids, _ = line.split()
                kernel_head = (name, () if ids == "-" else _ints(ids))
            else:
                raise KernelParseError(f"unexpected {line!r}")
        except (ValueError, IndexError) as err:
            raise KernelParseError(f"line {number}: {err}") from err
    if nest is not None or kernel_head is not None:
        raise KernelParseError("unterminated kernel")
    return KernelProgram(tuple(tensors), tuple(kernels))
