"""Lazy GM and local memories: paging, strided gather/scatter, bounds."""

import numpy as np
import pytest
from zhenwu.runtime.memory import PAGE_BYTES, GlobalMemory, LocalMemory, OutOfBounds


def test_gm_is_lazy_and_reads_zeros():
    gm = GlobalMemory(144 * 10**9)
    assert gm.resident_bytes == 0
    assert not gm.read_bytes(100 * 10**9, 1000).any()
    gm.write_bytes(143 * 10**9, np.arange(10, dtype=np.uint8))
    assert gm.resident_bytes == PAGE_BYTES
    assert list(gm.read_bytes(143 * 10**9 + 5, 5)) == [5, 6, 7, 8, 9]


def test_gm_write_across_pages():
    gm = GlobalMemory(1 << 24)
    data = (np.arange(3 * PAGE_BYTES) % 251).astype(np.uint8)
    gm.write_bytes(PAGE_BYTES - 7, data)
    assert np.array_equal(gm.read_bytes(PAGE_BYTES - 7, data.size), data)
    assert gm.resident_bytes == 4 * PAGE_BYTES


@pytest.mark.parametrize("memory", [GlobalMemory(1 << 20), LocalMemory(1 << 20, "L1")])
def test_strided_gather_scatter_round_trip(memory):
    matrix = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    memory.scatter(4096, (48 * 4, 4), matrix)
    box = memory.gather(4096 + (3 * 48 + 5) * 4, np.float32, (10, 7), (48 * 4, 4))
    assert np.array_equal(box, matrix[3:13, 5:12])
    # a transposed view and a broadcast (stride 0) view
    t = memory.gather(4096, np.float32, (48, 64), (4, 48 * 4))
    assert np.array_equal(t, matrix.T)
    b = memory.gather(4096, np.float32, (3, 48), (0, 4))
    assert np.array_equal(b, np.broadcast_to(matrix[0], (3, 48)))
    # strided scatter leaves the gaps alone
    memory.scatter(4096, (48 * 4, 8), np.full((64, 24), -1, np.float32))
    back = memory.gather(4096, np.float32, (64, 48), (48 * 4, 4))
    assert np.all(back[:, 0::2] == -1) and np.array_equal(back[:, 1::2], matrix[:, 1::2])


def test_sparse_column_of_huge_matrix_touches_few_pages():
    gm = GlobalMemory(144 * 10**9)
    row_bytes = 1 << 30  # rows 1 GiB apart
    gm.scatter(0, (row_bytes, 2), np.arange(100, dtype=np.int16).reshape(100, 1))
    assert gm.resident_bytes <= 100 * PAGE_BYTES
    col = gm.gather(0, np.int16, (100, 1), (row_bytes, 2))
    assert np.array_equal(col.ravel(), np.arange(100))


def test_bounds():
    l1 = LocalMemory(1024, "L1")
    with pytest.raises(OutOfBounds) as err:
        l1.gather(1000, np.float32, (2, 4), (16, 4))
    assert "L1" in str(err.value)
    with pytest.raises(OutOfBounds):
        GlobalMemory(1 << 20).write_bytes((1 << 20) - 2, np.zeros(4, np.uint8))
    with pytest.raises(OutOfBounds):
        l1.read_bytes(-4, 4)
