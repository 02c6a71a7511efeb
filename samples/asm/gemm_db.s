# gemm_db.s: c = relu(a @ b) for a, b, c: bf16[2048, 2048]; the products accumulate in f32 in
# ACC, and the store applies the ReLU and rounds to bf16 (DMA.ST .relu).
#
# c is cut into 64 tiles of 256 x 256 (the whole 256 KiB ACC in f32), dealt round-robin to
# all cores (two per core on the m890, four on the z810e). A 256 x 256 tile does 128 flops per
# HBM byte, above the m890's bf16 ridge point (98), so the loop can be compute-bound. Per tile,
# K runs in 32 steps of 64: LD loads the a (256 x 64) and b (64 x 256) tiles of later steps into
# four L1 buffers of 64 KiB (enough to cover the 600-cycle HBM latency) while MX multiplies the
# current step's. The first step of a tile starts the sum (.init) and also waits for the ACC to
# be stored: two predicated MMAs (@r14 / @!r14) of which exactly one runs.
# Events (balanced, so every event is 0 at HALT):
#   E0  LD -> MX: a step's a and b tiles are in L1 (2 per step)
#   E1  MX -> LD: an L1 buffer is free again (4 primed by SIG.S, drained at the end)
#   E2  MX -> ST: a product of the tile is done (ST waits for all 32)
#   E3  ST -> MX: the ACC is free again (1 primed, drained at the end)
.tensor a, bf16, [2048, 2048], 0x0, in
.tensor b, bf16, [2048, 2048], 0x800000, in
.tensor c, bf16, [2048, 2048], 0x1000000, out
.kernel gemm_relu
    GETID r0, core
    GETID r1, cores
    DESC d0, a, bf16, [2048, 2048], [2048, 1], [256, 64]    # a tiles: 256 x 64 (32 KiB)
    DESC d1, b, bf16, [2048, 2048], [2048, 1], [64, 256]    # b tiles: 64 x 256 (32 KiB)
    DESC d2, c, bf16, [2048, 2048], [2048, 1], [256, 256]   # c tiles: 256 x 256
    ADD r3, r1, 63
    DIV r3, r3, r1                  # tiles per core: ceil(64 / cores)
    LI r11, 0                       # k-steps issued on this core (L1 buffer index)
    SIG.S E1:4
    SIG.S E3:1
    LOOP r2, r3
    MUL r4, r2, r1
    ADD r4, r4, r0                  # tile index t
    SLT r5, r4, 64
    BEQZ r5, next_tile
    DIV r6, r4, 8
    MUL r6, r6, 256                 # first row of the tile: (t // 8) * 256
    REM r7, r4, 8
    MUL r7, r7, 256                 # first column: (t % 8) * 256
    LOOP r8, 32
    MUL r13, r8, 64                 # k offset
    REM r9, r11, 4
    MUL r9, r9, 65536               # L1 buffer: a (32 KiB) then b (32 KiB)
    ADD r11, r11, 1
    SEQ r14, r8, 0                  # the first step of the tile?
    DMA.LD L1[r9], d0[r6, r13] .wait E1 .sig E0
    DMA.LD L1[r9+32768], d1[r13, r7] .sig E0
    @r14 MMA.bf16.f32 ACC[0], L1[r9], L1[r9+32768], 256, 256, 64 .init .wait E0:2 .wait E3 .sig E1 .sig E2
    @!r14 MMA.bf16.f32 ACC[0], L1[r9], L1[r9+32768], 256, 256, 64 .acc .wait E0:2 .sig E1 .sig E2
    ENDLOOP
    DMA.ST d2[r6, r7], ACC[0] .relu .wait E2:32 .sig E3
next_tile:
    ENDLOOP
    WAIT.S E1:4
    WAIT.S E3:1
    HALT
