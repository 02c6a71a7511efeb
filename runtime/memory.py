"""Simulated memories: lazily paged GM (HBM) and per-core scratchpads (L1, ACC, SMEM).

Memory is allocated lazily, in proportion to the bytes a program touches, so that a program
addressing all 144 GB of an M890's HBM runs on a small host: GM is a dict of fixed-size pages
created on first write; reading a page that was never written gives zeros. Local memories are
one flat byte array each, created on first use.

Every access is bounds-checked against the space's size (from the machine description); an
access outside raises `OutOfBounds`, which the interpreter turns into a `ChipTrap` that names
the instruction, the core and the engine.

Tensors are read and written as strided views over the touched span: `gather` and `scatter`
take an element shape and byte strides (as `numpy.lib.stride_tricks.as_strided`), so a DMA box
with arbitrary descriptor strides costs one numpy copy, not a Python loop over elements.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

PAGE_BYTES = 1 << 16  # 64 KiB: small enough that sparse touches stay cheap
_PAGE_SHIFT = 16
_PAGE_MASK = PAGE_BYTES - 1


class OutOfBounds(Exception):
    """An access [start, end) outside a memory space of `size` bytes (internal; see engine)."""

    def __init__(self, space: str, start: int, end: int, size: int):
        super().__init__(f"{space}[{start:#x}, {end:#x}) is outside {space} ({size:#x} bytes)")
        self.space = space
        self.start = start
        self.end = end
        self.size = size


def span_of(shape: tuple[int, ...], byte_strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """The byte range [lo, hi) relative to the base that a strided view touches.

    An empty shape (any dim 0) touches nothing: (0, 0).
    """
    lo = hi = 0
    for n, s in zip(shape, byte_strides):
        if n <= 0:
            return 0, 0
        reach = (n - 1) * s
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + itemsize


class Memory:
    """Interface shared by GM and the local memories (byte addressed, bounds-checked)."""

    name: str
    size: int

    def check(self, start: int, end: int) -> None:
        """Raise OutOfBounds unless [start, end) lies inside this space."""
        if start < 0 or end > self.size:
            raise OutOfBounds(self.name, start, end, self.size)

    def read_bytes(self, start: int, nbytes: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def write_bytes(self, start: int, data: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def gather(
        self, base: int, dtype: np.dtype, shape: tuple[int, ...], byte_strides: tuple[int, ...]
    ) -> np.ndarray:
        """A fresh array of `shape` read from the strided view at byte address `base`."""
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if any(n <= 0 for n in shape):
            return np.zeros(shape, dtype)
        lo, hi = span_of(shape, byte_strides, dtype.itemsize)
        self.check(base + lo, base + hi)
        count = 1
        for n in shape:
            count *= n
        if _too_sparse(hi - lo, count * dtype.itemsize) and len(shape) > 1:
            # A sparse view (say one column of a huge matrix): read it one outer slice at a
            # time rather than materialising the whole span.
            out = np.empty(shape, dtype)
            for i in range(shape[0]):
                out[i] = self.gather(base + i * byte_strides[0], dtype, shape[1:], byte_strides[1:])
            return out
        raw = self.read_bytes(base + lo, hi - lo)
        view = as_strided(raw[-lo:] if lo else raw, shape=shape, strides=byte_strides)
        # as_strided over uint8 gives uint8 elements; reinterpret through a contiguous copy of
        # each element's bytes.
        if dtype.itemsize == 1:
            return view.copy().view(dtype)
        elem = as_strided(
            raw[-lo:] if lo else raw,
            shape=shape + (dtype.itemsize,),
            strides=tuple(byte_strides) + (1,),
        )
        return np.ascontiguousarray(elem).view(dtype).reshape(shape)

    def scatter(self, base: int, byte_strides: tuple[int, ...], values: np.ndarray) -> None:
        """Write `values` (already in the memory's element dtype) through a strided view."""
        values = np.ascontiguousarray(values)
        shape = values.shape
        if values.size == 0:
            return
        itemsize = values.dtype.itemsize
        lo, hi = span_of(shape, byte_strides, itemsize)
        self.check(base + lo, base + hi)
        if _too_sparse(hi - lo, values.nbytes) and len(shape) > 1:
            for i in range(shape[0]):
                self.scatter(base + i * byte_strides[0], byte_strides[1:], values[i])
            return
        contiguous = _is_contiguous(shape, byte_strides, itemsize)
        if contiguous:
            self.write_bytes(base, values.view(np.uint8).reshape(-1))
            return
        raw = self.read_bytes(base + lo, hi - lo)
        raw = raw.copy() if not raw.flags.writeable else raw
        elem = as_strided(
            raw[-lo:] if lo else raw,
            shape=shape + (itemsize,),
            strides=tuple(byte_strides) + (1,),
            writeable=True,
        )
        elem[...] = values.view(np.uint8).reshape(shape + (itemsize,))
        self.write_bytes(base + lo, raw)


def _too_sparse(span: int, nbytes: int) -> bool:
    """Whether a strided view touches so little of its span that it is cheaper to visit it
    one outer slice at a time than to copy the whole span (one column of a huge matrix)."""
    return span > (1 << 22) and span > 64 * nbytes


def _is_contiguous(shape: tuple[int, ...], byte_strides: tuple[int, ...], itemsize: int) -> bool:
    expected = itemsize
    for n, s in zip(reversed(shape), reversed(byte_strides)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


class GlobalMemory(Memory):
    """GM (HBM) of one chip: `size` bytes in lazily allocated 64 KiB pages.

    Only pages that were written hold host memory; `resident_bytes` says how much.
    """

    def __init__(self, size: int, name: str = "GM"):
        self.name = name
        self.size = int(size)
        self.pages: dict[int, np.ndarray] = {}
        # in a many-chip run (runtime/cluster.py): every chip's GM, indexed by chip
        self.peers: list[GlobalMemory] | None = None

    @property
    def resident_bytes(self) -> int:
        return len(self.pages) * PAGE_BYTES

    def read_bytes(self, start: int, nbytes: int) -> np.ndarray:
        """A fresh uint8 array of the bytes [start, start + nbytes) (zeros where unwritten)."""
        self.check(start, start + nbytes)
        pages = self.pages
        offset = start & _PAGE_MASK
        if offset + nbytes <= PAGE_BYTES:  # within one page: the common case
            page = pages.get(start >> _PAGE_SHIFT)
            if page is None:
                return np.zeros(nbytes, np.uint8)
            return page[offset : offset + nbytes].copy()
        out = np.empty(nbytes, np.uint8)
        pos = 0
        while pos < nbytes:
            addr = start + pos
            page_index = addr >> _PAGE_SHIFT
            offset = addr & _PAGE_MASK
            take = min(PAGE_BYTES - offset, nbytes - pos)
            page = pages.get(page_index)
            if page is None:
                out[pos : pos + take] = 0
            else:
                out[pos : pos + take] = page[offset : offset + take]
            pos += take
        return out

    def write_bytes(self, start: int, data: np.ndarray) -> None:
        """Write a uint8 array at `start`, allocating pages as needed."""
        data = np.asarray(data).view(np.uint8).reshape(-1)
        nbytes = data.size
        self.check(start, start + nbytes)
        pos = 0
        pages = self.pages
        while pos < nbytes:
            addr = start + pos
            page_index = addr >> _PAGE_SHIFT
            offset = addr & _PAGE_MASK
            take = min(PAGE_BYTES - offset, nbytes - pos)
            page = pages.get(page_index)
            if page is None:
                page = pages[page_index] = np.zeros(PAGE_BYTES, np.uint8)
            page[offset : offset + take] = data[pos : pos + take]
            pos += take


class LocalMemory(Memory):
    """A per-core scratchpad (L1, ACC or SMEM): one flat byte array, allocated on first use."""

    def __init__(self, size: int, name: str):
        self.name = name
        self.size = int(size)
        self._data: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.zeros(self.size, np.uint8)
        return self._data

    def read_bytes(self, start: int, nbytes: int) -> np.ndarray:
        self.check(start, start + nbytes)
        return self.data[start : start + nbytes].copy()

    def write_bytes(self, start: int, data: np.ndarray) -> None:
        data = np.asarray(data).view(np.uint8).reshape(-1)
        self.check(start, start + data.size)
        self.data[start : start + data.size] = data

    def gather(self, base, dtype, shape, byte_strides):
        # Fast path: a view straight into the flat array, no intermediate span copy.
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        if any(n <= 0 for n in shape):
            return np.zeros(shape, dtype)
        lo, hi = span_of(shape, byte_strides, dtype.itemsize)
        self.check(base + lo, base + hi)
        data = self.data
        if base % dtype.itemsize == 0 and all(s % dtype.itemsize == 0 for s in byte_strides):
            typed = data[: self.size - self.size % dtype.itemsize].view(dtype)
            view = as_strided(typed[base // dtype.itemsize :], shape=shape, strides=byte_strides)
            return view.copy()
        return Memory.gather(self, base, dtype, shape, byte_strides)

    def scatter(self, base, byte_strides, values):
        values = np.asarray(values)
        if values.size == 0:
            return
        itemsize = values.dtype.itemsize
        lo, hi = span_of(values.shape, byte_strides, itemsize)
        self.check(base + lo, base + hi)
        if base % itemsize == 0 and all(s % itemsize == 0 for s in byte_strides):
            typed = self.data[: self.size - self.size % itemsize].view(values.dtype)
            view = as_strided(
                typed[base // itemsize :], shape=values.shape, strides=byte_strides,
                writeable=True,
            )
            view[...] = values
            return
        Memory.scatter(self, base, byte_strides, values)
