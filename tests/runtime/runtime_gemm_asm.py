"""A hand-scheduled, double-buffered GEMM in M890 assembly, for the interpreter's tests.

C[M, N] (f32) = A[M, K] @ B[K, N] (bf16), output tiles TM x TN dealt round-robin to the
cores, K in steps of TK. Per k-step the LD queue loads an A and a B tile into one of `buffers` L1
buffers (4 by default: enough to hide the HBM latency) while MX multiplies another; C tiles alternate between two ACC buffers so that a
tile's store overlaps the next tile's products (`acc_buffers=1` for 256 x 256 C tiles, which
fill the ACC).

Events (each balanced: what is signalled is waited for):
- E0: a k-step's A and B tiles are in L1 (LD -> MX, one per step);
- E1: an L1 buffer is free again (MX -> LD; `buffers` tokens primed by SIG.S, drained at the
  end);
- E2: a C tile's products are done (MX -> ST, one per step, ST waits for K/TK of them);
- E3: an ACC buffer is free again (ST -> MX; `acc_buffers` primed, drained at the end).
"""

from __future__ import annotations


def gemm_assembly(m: int, n: int, k: int, *, tile_m: int = 128, tile_n: int = 128,
                  tile_k: int = 128, cores: int = 32, buffers: int = 4,
                  acc_buffers: int = 2) -> str:
    assert m % tile_m == 0 and n % tile_n == 0 and k % tile_k == 0
    tiles_n = n // tile_n
    tiles = (m // tile_m) * tiles_n
    per_core = -(-tiles // cores)
    steps = k // tile_k
    assert steps <= 64
    a_bytes = tile_m * tile_k * 2
    b_bytes = tile_k * tile_n * 2
    buffer = a_bytes + b_bytes  # one L1 buffer holds an A and a B tile
    c_bytes = tile_m * tile_n * 4
    a_addr, b_addr, c_addr = 0, m * k * 2, m * k * 2 + k * n * 2
    return f"""\
# C = A @ B: {m}x{n}x{k} bf16 -> f32, {tile_m}x{tile_n} tiles, k-step {tile_k}
.tensor a, bf16, [{m}, {k}], {a_addr:#x}, in
.tensor b, bf16, [{k}, {n}], {b_addr:#x}, in
.tensor c, f32, [{m}, {n}], {c_addr:#x}, out
.kernel gemm
    GETID r0, core
    LI r11, 0
    DESC d0, a, bf16, [{m}, {k}], [{k}, 1], [{tile_m}, {tile_k}]
    DESC d1, b, bf16, [{k}, {n}], [{n}, 1], [{tile_k}, {tile_n}]
    DESC d2, c, f32, [{m}, {n}], [{n}, 1], [{tile_m}, {tile_n}]
    SIG.S E1:{buffers}
    SIG.S E3:{acc_buffers}
    LOOP r1, {per_core}
    MUL r2, r1, {cores}
    ADD r2, r2, r0
    SLT r3, r2, {tiles}
    BEQZ r3, done
    DIV r4, r2, {tiles_n}
    REM r5, r2, {tiles_n}
    MUL r4, r4, {tile_m}
    MUL r5, r5, {tile_n}
    REM r10, r1, {acc_buffers}
    MUL r10, r10, {c_bytes}
    REM r9, r11, {buffers}
    MUL r9, r9, {buffer}
    ADD r11, r11, 1
    DMA.LD L1[r9], d0[r4, 0] .wait E1
    DMA.LD L1[r9+{a_bytes}], d1[0, r5] .sig E0
    MMA.bf16.f32 ACC[r10], L1[r9], L1[r9+{a_bytes}], {tile_m}, {tile_n}, {tile_k} .init .wait E0 .wait E3 .sig E1 .sig E2
    LOOP r6, {steps - 1}
    ADD r7, r6, 1
    MUL r7, r7, {tile_k}
    REM r9, r11, {buffers}
    MUL r9, r9, {buffer}
    ADD r11, r11, 1
    DMA.LD L1[r9], d0[r4, r7] .wait E1
    DMA.LD L1[r9+{a_bytes}], d1[r7, r5] .sig E0
    MMA.bf16.f32 ACC[r10], L1[r9], L1[r9+{a_bytes}], {tile_m}, {tile_n}, {tile_k} .acc .wait E0 .sig E1 .sig E2
    ENDLOOP
    DMA.ST d2[r4, r5], ACC[r10] .wait E2:{steps} .sig E3
    ENDLOOP
done:
    WAIT.S E1:{buffers}
    WAIT.S E3:{acc_buffers}
    HALT
"""
