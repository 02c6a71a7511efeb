"""The M890 binary: fixed 128-bit instruction words after a small header with tables.

    from zhenwu.isa.encoding import encode_program, decode_program

`decode_program(encode_program(p)) == p` for every valid program, and the decoder turns any
other byte string (truncated, corrupt, wrong magic or version, unknown opcode, out-of-range
field) into an `EncodingError`, never another exception.

File layout (little-endian):

    magic "ZWM8" | u16 version (1) | u16 flags (0) | u32 CRC-32 of everything after it
    machine:   u8 present, str
    tensors:   u32 n, n x (str name, u8 dtype, u8 rank, rank x i64 dim, u64 address, u8 role)
    markers:   u32 n, n x (u8 kind 0 label / 1 kernel, str name, u32 instruction index)
    names:     u32 n, n x str          (label and tensor names operands refer to)
    lists:     u32 n, n x (u8 length, length x i64)   (the descriptor table: DESC's lists)
    constants: u32 n, n x f64          (float immediates and option values)
    operands:  u32 n, n x (u16 length, bytes)   (operand records of words that spill)
    words:     u32 n, n x 16 bytes
    (str is u16 length + UTF-8)

Instruction word (bit 0 is the least significant bit of the little-endian 128-bit value):

    [0, 8)     opcode (see isa.instructions; 0xA0-0xAF reserved for DMA.PUT and COLL.*)
    [8, 12)    suffix slot 0: 0 absent, else 1 + the value's index in the slot
    [12, 16)   suffix slot 1
    [16, 23)   predicate: present, negated, register (5 bits)
    [23, 29)   options: bit i = the definition's option i is present
    [29]       spilled: the operands are in the operand table, the payload is its index
    [30, 32)   reserved, 0
    [32, 80)   .wait, .wait, .sig, .sig: each present (1), event (5), count - 1 (6)
    [80, 128)  payload: the operands, packed in definition order (below), or an index

Operands are packed as a bit stream: a kind tag when the operand position accepts several
kinds (ceil(log2(kinds)) bits), then register 5 bits, event 5 + 6 (count - 1), integer 16
(signed), float immediate 16 (constant index), keyword 4 (index in the position's list),
address 1 + 5 + 16 (has register, register, signed offset), tile 1 (space) + address +
1 [+ 16] + 1 [+ 16] (strides when written), descriptor reference 5 + 3 (coordinates - 1) +
addresses, label and tensor name 16 (name index; a tensor name is followed by a 16-bit
signed offset), list 16 (list index); then the values of options that take one, as float
immediates. When that does not fit 48 bits, or a value does not fit its field, the
operands are written with 64-bit integers and 32-bit indexes to the operand table instead.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from zhenwu.isa.dtypes import DTYPES
from zhenwu.isa.errors import AssemblyError, EncodingError
from zhenwu.isa.instructions import BY_OPCODE, INSTRUCTIONS, RESERVED_OPCODES, InstrError, validate
from zhenwu.isa.instructions.base import InstrDef, OperandSpec
from zhenwu.isa.program import (
    MAX_RANK,
    SPACES,
    TENSOR_ROLES,
    Addr,
    DescRef,
    DReg,
    Event,
    FImm,
    Imm,
    Instruction,
    IntList,
    Keyword,
    LabelRef,
    Marker,
    Option,
    Predicate,
    Program,
    Reg,
    Symbol,
    TensorDecl,
    Tile,
)

MAGIC = b"ZWM8"
VERSION = 1
WORD_BYTES = 16
PAYLOAD_BITS = 48
_HEADER = struct.Struct("<4sHHI")

assert all(len(d.options) <= 6 for d in INSTRUCTIONS.values())
assert all(len(s.values) < 16 for d in INSTRUCTIONS.values() for s in d.suffixes)
assert all(len(d.suffixes) <= 2 for d in INSTRUCTIONS.values())


@dataclass(frozen=True)
class _Widths:
    imm: int  # signed integers and address offsets
    stride: int  # unsigned tile strides
    index: int  # table indexes


_COMPACT = _Widths(imm=16, stride=16, index=16)
_WIDE = _Widths(imm=64, stride=64, index=32)


class _DoesNotFit(Exception):
    """A value does not fit its compact field (internal: the operands spill)."""


# ---- bit streams ------------------------------------------------------------------------


class _BitWriter:
    def __init__(self, limit: int | None):
        self.value = 0
        self.bits = 0
        self.limit = limit

    def unsigned(self, value: int, width: int) -> None:
        if not 0 <= value < (1 << width):
            raise _DoesNotFit
        self.value |= value << self.bits
        self.bits += width
        if self.limit is not None and self.bits > self.limit:
            raise _DoesNotFit

    def signed(self, value: int, width: int) -> None:
        if not -(1 << (width - 1)) <= value < (1 << (width - 1)):
            raise _DoesNotFit
        self.unsigned(value & ((1 << width) - 1), width)


class _BitReader:
    def __init__(self, value: int, bits: int, where: str):
        self.value = value
        self.bits = bits
        self.position = 0
        self.where = where

    def unsigned(self, width: int) -> int:
        if self.position + width > self.bits:
            raise EncodingError(f"{self.where}: operand fields run past the end of the record")
        result = (self.value >> self.position) & ((1 << width) - 1)
        self.position += width
        return result

    def signed(self, width: int) -> int:
        raw = self.unsigned(width)
        return raw - (1 << width) if raw >> (width - 1) else raw

    def finish(self) -> None:
        if self.value >> self.position:
            raise EncodingError(f"{self.where}: nonzero bits after the last operand field")


def _tag_bits(spec: OperandSpec) -> int:
    return (len(spec.kinds) - 1).bit_length()


# ---- tables -----------------------------------------------------------------------------


class _Tables:
    """The header tables being built while encoding (internal)."""

    def __init__(self):
        self.names: list[str] = []
        self.lists: list[tuple[int, ...]] = []
        self.constants: list[bytes] = []
        self.operands: list[bytes] = []

    @staticmethod
    def _intern(table: list, value) -> int:
        try:
            return table.index(value)
        except ValueError:
            table.append(value)
            return len(table) - 1

    def name(self, value: str) -> int:
        return self._intern(self.names, value)

    def int_list(self, values: tuple[int, ...]) -> int:
        return self._intern(self.lists, values)

    def constant(self, value: float) -> int:
        return self._intern(self.constants, struct.pack("<d", value))


# ---- encoding ---------------------------------------------------------------------------


def _put_addr(out: _BitWriter, addr: Addr, widths: _Widths) -> None:
    out.unsigned(0 if addr.reg is None else 1, 1)
    out.unsigned(0 if addr.reg is None else addr.reg, 5)
    out.signed(addr.offset, widths.imm)


def _put_operand(out: _BitWriter, spec: OperandSpec, op, tables: _Tables,
                 widths: _Widths) -> None:
    kind = next(k for k in spec.kinds if _KIND_OF[type(op)] == k)
    out.unsigned(spec.kinds.index(kind), _tag_bits(spec))
    if isinstance(op, Reg | DReg):
        out.unsigned(op.index, 5)
    elif isinstance(op, Event):
        out.unsigned(op.index, 5)
        out.unsigned(op.count - 1, 6)
    elif isinstance(op, Imm):
        out.signed(op.value, widths.imm)
    elif isinstance(op, FImm):
        out.unsigned(tables.constant(op.value), widths.index)
    elif isinstance(op, Keyword):
        out.unsigned(spec.keywords.index(op.name), 4)
    elif isinstance(op, Addr):
        _put_addr(out, op, widths)
    elif isinstance(op, Tile):
        out.unsigned(SPACES.index(op.space), 1)
        _put_addr(out, op.base, widths)
        for stride in (op.row_stride, op.col_stride):
            out.unsigned(0 if stride is None else 1, 1)
            if stride is not None:
                out.unsigned(stride, widths.stride)
    elif isinstance(op, DescRef):
        out.unsigned(op.index, 5)
        out.unsigned(len(op.coords) - 1, 3)
        for coord in op.coords:
            _put_addr(out, coord, widths)
    elif isinstance(op, LabelRef):
        out.unsigned(tables.name(op.name), widths.index)
    elif isinstance(op, Symbol):
        out.unsigned(tables.name(op.name), widths.index)
        out.signed(op.offset, widths.imm)
    elif isinstance(op, IntList):
        out.unsigned(tables.int_list(op.values), widths.index)
    else:  # pragma: no cover - every operand class is handled above
        raise TypeError(op)


def _put_operands(defn: InstrDef, instr: Instruction, tables: _Tables, widths: _Widths,
                  limit: int | None) -> _BitWriter:
    out = _BitWriter(limit)
    for spec, op in zip(defn.operands, instr.operands):
        _put_operand(out, spec, op, tables, widths)
    for opt in instr.options:
        if opt.value is not None:
            out.unsigned(tables.constant(opt.value.value), widths.index)
    return out


def _encode_word(defn: InstrDef, instr: Instruction, tables: _Tables) -> bytes:
    word = defn.opcode
    for slot_index, (slot, value) in enumerate(zip(defn.suffixes, instr.suffixes)):
        word |= (slot.values.index(value) + 1) << (8 + 4 * slot_index)
    if instr.predicate is not None:
        word |= 1 << 16
        word |= int(instr.predicate.negate) << 17
        word |= instr.predicate.reg << 18
    names = [opt.name for opt in defn.options]
    for opt in instr.options:
        word |= 1 << (23 + names.index(opt.name))
    for slot, event in [(i, e) for i, e in enumerate(instr.waits)] + [
        (2 + i, e) for i, e in enumerate(instr.sigs)
    ]:
        word |= (1 | event.index << 1 | (event.count - 1) << 6) << (32 + 12 * slot)
    # try the compact form on a scratch copy of the tables, so a failed try adds nothing
    scratch = _Tables()
    scratch.names, scratch.lists = list(tables.names), list(tables.lists)
    scratch.constants = list(tables.constants)
    try:
        payload = _put_operands(defn, instr, scratch, _COMPACT, PAYLOAD_BITS)
    except _DoesNotFit:
        record = _put_operands(defn, instr, tables, _WIDE, None)
        data = record.value.to_bytes((record.bits + 7) // 8, "little")
        tables.operands.append(data)
        word |= 1 << 29
        word |= (len(tables.operands) - 1) << 80
    else:
        tables.names, tables.lists, tables.constants = (scratch.names, scratch.lists,
                                                        scratch.constants)
        word |= payload.value << 80
    return word.to_bytes(WORD_BYTES, "little")


def _str(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 0xFFFF:
        raise EncodingError(f"name too long to encode: '{value[:20]}...'")
    return struct.pack("<H", len(data)) + data


def encode_program(program: Program) -> bytes:
    """The binary form of a program; EncodingError for an instruction that is not valid."""
    tables = _Tables()
    words = []
    for index, instr in enumerate(program.instructions):
        defn = INSTRUCTIONS.get(instr.mnemonic)
        if defn is None:
            raise EncodingError(f"unknown mnemonic '{instr.mnemonic}'", address=index)
        try:
            validate(defn, instr)
        except InstrError as err:
            raise EncodingError(f"cannot encode '{instr}': {err.message}", address=index) \
                from None
        words.append(_encode_word(defn, instr, tables))
    try:
        body = _encode_header(program, tables)
    except (ValueError, struct.error) as err:
        raise EncodingError(f"cannot encode the program header: {err}") from None
    for word in words:
        body += word
    return _HEADER.pack(MAGIC, VERSION, 0, zlib.crc32(body)) + bytes(body)


def _encode_header(program: Program, tables: _Tables) -> bytearray:
    body = bytearray()
    body += struct.pack("<B", program.machine is not None)
    body += _str(program.machine or "")
    body += struct.pack("<I", len(program.tensors))
    for tensor in program.tensors:
        body += _str(tensor.name)
        body += struct.pack("<BB", DTYPES.index(tensor.dtype), len(tensor.shape))
        body += struct.pack(f"<{len(tensor.shape)}q", *tensor.shape)
        body += struct.pack("<QB", tensor.address, TENSOR_ROLES.index(tensor.role))
    body += struct.pack("<I", len(program.markers))
    for marker in program.markers:
        body += struct.pack("<B", 0 if marker.kind == "label" else 1)
        body += _str(marker.name)
        body += struct.pack("<I", marker.index)
    body += struct.pack("<I", len(tables.names))
    for name in tables.names:
        body += _str(name)
    body += struct.pack("<I", len(tables.lists))
    for values in tables.lists:
        body += struct.pack(f"<B{len(values)}q", len(values), *values)
    body += struct.pack("<I", len(tables.constants))
    for constant in tables.constants:
        body += constant
    body += struct.pack("<I", len(tables.operands))
    for record in tables.operands:
        body += struct.pack("<H", len(record)) + record
    body += struct.pack("<I", len(program.instructions))
    return body


# ---- decoding ---------------------------------------------------------------------------


class _Cursor:
    def __init__(self, data: bytes, start: int):
        self.data = data
        self.position = start

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.position + size > len(self.data):
            raise EncodingError(f"truncated binary: {what} runs past the end of the file "
                                f"(offset {self.position})")
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def unpack(self, fmt: str, what: str):
        layout = struct.Struct("<" + fmt)
        return layout.unpack(self.take(layout.size, what))

    def count(self, what: str, item_bytes: int) -> int:
        (n,) = self.unpack("I", f"the {what} count")
        if n * item_bytes > len(self.data) - self.position:
            raise EncodingError(f"truncated binary: {n} {what} do not fit in the file")
        return n

    def string(self, what: str) -> str:
        (length,) = self.unpack("H", what)
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError(f"corrupt binary: {what} is not UTF-8") from None


def _get_addr(reader: _BitReader, widths: _Widths) -> Addr:
    has_reg = reader.unsigned(1)
    reg = reader.unsigned(5)
    offset = reader.signed(widths.imm)
    if not has_reg and reg:
        raise EncodingError(f"{reader.where}: a register field is set on an address without one")
    return Addr(reg if has_reg else None, offset)


class _Decoder:
    def __init__(self, names, lists, constants):
        self.names = names
        self.lists = lists
        self.constants = constants

    def entry(self, table: list, index: int, what: str, where: str):
        if index >= len(table):
            raise EncodingError(f"{where}: {what} index {index} out of range "
                                f"(the table has {len(table)})")
        return table[index]

    def operand(self, reader: _BitReader, spec: OperandSpec, widths: _Widths):
        tag = reader.unsigned(_tag_bits(spec))
        if tag >= len(spec.kinds):
            raise EncodingError(f"{reader.where}: bad kind tag {tag} for operand '{spec.name}'")
        kind = spec.kinds[tag]
        where = reader.where
        if kind == "reg":
            return Reg(reader.unsigned(5))
        if kind == "dreg":
            return DReg(reader.unsigned(5))
        if kind == "event":
            return Event(reader.unsigned(5), reader.unsigned(6) + 1)
        if kind == "imm":
            return Imm(reader.signed(widths.imm))
        if kind == "fimm":
            index = reader.unsigned(widths.index)
            return FImm(self.entry(self.constants, index, "constant", where))
        if kind == "keyword":
            index = reader.unsigned(4)
            return Keyword(self.entry(list(spec.keywords), index, "keyword", where))
        if kind == "addr":
            return _get_addr(reader, widths)
        if kind == "tile":
            space = SPACES[reader.unsigned(1)]
            base = _get_addr(reader, widths)
            strides = []
            for _ in range(2):
                strides.append(reader.unsigned(widths.stride) if reader.unsigned(1) else None)
            return Tile(space, base, strides[0], strides[1])
        if kind == "descref":
            index = reader.unsigned(5)
            count = reader.unsigned(3) + 1
            return DescRef(index, tuple(_get_addr(reader, widths) for _ in range(count)))
        if kind == "label":
            return LabelRef(self.entry(self.names, reader.unsigned(widths.index), "name", where))
        if kind == "symbol":
            name = self.entry(self.names, reader.unsigned(widths.index), "name", where)
            return Symbol(name, reader.signed(widths.imm))
        if kind == "list":
            return IntList(self.entry(self.lists, reader.unsigned(widths.index), "list", where))
        raise AssertionError(kind)  # pragma: no cover

    def word(self, word: int, index: int, operand_table: list[bytes]) -> Instruction:
        where = f"instruction {index}"
        opcode = word & 0xFF
        defn = BY_OPCODE.get(opcode)
        if defn is None:
            if opcode in RESERVED_OPCODES:
                raise EncodingError(f"{where}: opcode {opcode:#04x} ({RESERVED_OPCODES[opcode]}) "
                                    "is reserved for the multi-chip work", address=index)
            raise EncodingError(f"{where}: unknown opcode {opcode:#04x}", address=index)
        suffixes = []
        for slot_index in range(2):
            code = (word >> (8 + 4 * slot_index)) & 0xF
            if code == 0:
                continue
            if slot_index >= len(defn.suffixes) or code > len(defn.suffixes[slot_index].values):
                raise EncodingError(f"{where}: {defn.mnemonic} suffix field {slot_index} = {code} "
                                    "out of range", address=index)
            if len(suffixes) != slot_index:
                raise EncodingError(f"{where}: suffix field 1 set without field 0", address=index)
            suffixes.append(defn.suffixes[slot_index].values[code - 1])
        predicate = None
        if (word >> 16) & 1:
            predicate = Predicate((word >> 18) & 0x1F, bool((word >> 17) & 1))
        elif (word >> 17) & 0x3F:
            raise EncodingError(f"{where}: predicate fields set without a predicate",
                                address=index)
        option_bits = (word >> 23) & 0x3F
        if option_bits >> len(defn.options):
            raise EncodingError(f"{where}: option bits {option_bits:#x} out of range for "
                                f"{defn.mnemonic}", address=index)
        present = [spec for i, spec in enumerate(defn.options) if option_bits >> i & 1]
        if (word >> 30) & 3:
            raise EncodingError(f"{where}: reserved bits are set", address=index)
        events: list[list[Event]] = [[], []]
        for slot in range(4):
            field = (word >> (32 + 12 * slot)) & 0xFFF
            group = events[slot // 2]
            if not field & 1:
                if field:
                    raise EncodingError(f"{where}: sync field {slot} is set but not present",
                                        address=index)
                continue
            if len(group) != slot % 2:
                raise EncodingError(f"{where}: sync field {slot} present after an empty one",
                                    address=index)
            group.append(Event((field >> 1) & 0x1F, (field >> 6) + 1))
        payload = word >> 80
        if (word >> 29) & 1:
            record_index = payload
            record = self.entry(operand_table, record_index, "operand record", where)
            reader = _BitReader(int.from_bytes(record, "little"), len(record) * 8, where)
            widths = _WIDE
        else:
            reader = _BitReader(payload, PAYLOAD_BITS, where)
            widths = _COMPACT
        operands = tuple(self.operand(reader, spec, widths) for spec in defn.operands)
        options = []
        for spec in present:
            value = None
            if spec.takes_value:
                value = FImm(self.entry(self.constants, reader.unsigned(widths.index),
                                        "constant", where))
            options.append(Option(spec.name, value))
        reader.finish()
        instr = Instruction(defn.mnemonic, tuple(suffixes), operands, tuple(options),
                            tuple(events[0]), tuple(events[1]), predicate)
        try:
            validate(defn, instr)
        except InstrError as err:
            raise EncodingError(f"{where}: {err.message}", address=index) from None
        return instr


def decode_program(data: bytes, filename: str = "<binary>") -> Program:
    """The Program in an M890 binary; EncodingError when the bytes are not a valid one."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise EncodingError(f"{filename}: truncated binary ({len(data)} bytes, the header "
                            f"alone is {_HEADER.size})")
    magic, version, flags, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise EncodingError(f"{filename}: not an M890 binary (magic {magic!r}, expected "
                            f"{MAGIC!r})")
    if version != VERSION:
        raise EncodingError(f"{filename}: binary version {version} is not supported "
                            f"(this zhenwu reads version {VERSION})")
    if flags:
        raise EncodingError(f"{filename}: unknown header flags {flags:#x}")
    if zlib.crc32(data[_HEADER.size:]) != crc:
        raise EncodingError(f"{filename}: corrupt or truncated binary (checksum mismatch)")
    try:
        return _decode_body(data)
    except EncodingError as err:
        raise EncodingError(f"{filename}: {err.message}", address=err.address) from None
    except AssemblyError as err:  # labels, loops, tensors that do not resolve
        raise EncodingError(f"{filename}: {err.message}") from None


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MACHINE_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def _check_name(name: str, what: str, pattern=_IDENTIFIER) -> str:
    if not pattern.fullmatch(name):
        raise EncodingError(f"corrupt binary: {what} {name!r} is not a valid name")
    return name


def _decode_body(data: bytes) -> Program:
    cur = _Cursor(data, _HEADER.size)
    (has_machine,) = cur.unpack("B", "the machine flag")
    machine_name = cur.string("the machine name")
    if has_machine > 1 or (not has_machine and machine_name):
        raise EncodingError("corrupt binary: bad machine field")
    machine = _check_name(machine_name, "machine", _MACHINE_NAME) if has_machine else None
    tensors = []
    for _ in range(cur.count("tensors", 12)):
        name = _check_name(cur.string("a tensor name"), "tensor")
        dtype_code, rank = cur.unpack("BB", "a tensor dtype and rank")
        if dtype_code >= len(DTYPES) or rank > MAX_RANK:
            raise EncodingError(f"corrupt binary: tensor '{name}' has dtype code {dtype_code} "
                                f"and rank {rank}")
        shape = cur.unpack(f"{rank}q", "tensor dims")
        address, role = cur.unpack("QB", "a tensor address and role")
        if role >= len(TENSOR_ROLES) or any(d < 1 for d in shape) or address >= 2**63:
            raise EncodingError(f"corrupt binary: bad tensor '{name}'")
        tensors.append(TensorDecl(name, DTYPES[dtype_code], tuple(shape), address,
                                  TENSOR_ROLES[role]))
    markers = []
    for _ in range(cur.count("markers", 7)):
        (kind,) = cur.unpack("B", "a marker kind")
        name = _check_name(cur.string("a marker name"), "marker")
        (index,) = cur.unpack("I", "a marker index")
        if kind > 1:
            raise EncodingError(f"corrupt binary: bad marker kind {kind} for '{name}'")
        markers.append((kind, name, index))
    names = [_check_name(cur.string("a name"), "name") for _ in range(cur.count("names", 2))]
    lists = []
    for _ in range(cur.count("lists", 1)):
        (length,) = cur.unpack("B", "a list length")
        lists.append(tuple(cur.unpack(f"{length}q", "a list")))
    constants = [cur.unpack("d", "a constant")[0] for _ in range(cur.count("constants", 8))]
    operand_table = []
    for _ in range(cur.count("operand records", 2)):
        (length,) = cur.unpack("H", "an operand record length")
        operand_table.append(cur.take(length, "an operand record"))
    count = cur.count("instructions", WORD_BYTES)
    decoder = _Decoder(names, lists, constants)
    instructions = []
    for index in range(count):
        word = int.from_bytes(cur.take(WORD_BYTES, "an instruction word"), "little")
        instructions.append(decoder.word(word, index, operand_table))
    if cur.position != len(data):
        raise EncodingError(f"corrupt binary: {len(data) - cur.position} bytes after the last "
                            "instruction")
    for kind, name, index in markers:
        if index > len(instructions):
            raise EncodingError(f"corrupt binary: marker '{name}' at instruction {index} of "
                                f"{len(instructions)}")
    program = Program.build(
        machine, tensors, instructions,
        [Marker(index, "label" if kind == 0 else "kernel", name)
         for kind, name, index in markers],
    )
    return program


_KIND_OF = {Reg: "reg", DReg: "dreg", Imm: "imm", FImm: "fimm", Event: "event", Addr: "addr",
            Tile: "tile", DescRef: "descref", LabelRef: "label", Keyword: "keyword",
            Symbol: "symbol", IntList: "list"}
