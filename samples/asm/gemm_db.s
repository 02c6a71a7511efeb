# gemm_db.s: c = relu(a @ b) for a, b, c: bf16[512, 512]; the products accumulate in f32 in
# ACC, and the store applies the ReLU and rounds to bf16 (DMA.ST .relu).
#
# c is cut into 32 tiles of 64 x 128, dealt round-robin to all cores (one per core on the
# m890, two on the z810e). Per tile, K runs in 4 steps of 128: LD loads step s+1's a and b
# tiles into one L1 buffer while MX multiplies step s's from the other; c tiles alternate
# between two ACC buffers so that a tile's store overlaps the next tile's products. The first
# step of a tile starts the sum (.init) and also waits for its ACC buffer: two predicated MMAs
# (@r14 / @!r14) of which exactly one runs.
# Events (balanced, so every event is 0 at HALT):
#   E0  LD -> MX: a step's a and b tiles are in L1 (2 per step)
#   E1  MX -> LD: an L1 buffer is free again (2 primed by SIG.S, drained at the end)
#   E2  MX -> ST: a product of the tile is done (ST waits for all 4)
#   E3  ST -> MX: an ACC buffer is free again (2 primed, drained at the end)
.tensor a, bf16, [512, 512], 0x0, in
.tensor b, bf16, [512, 512], 0x80000, in
.tensor c, bf16, [512, 512], 0x100000, out
.kernel gemm_relu
    GETID r0, core
    GETID r1, cores
    DESC d0, a, bf16, [512, 512], [512, 1], [64, 128]     # a tiles: 64 x 128 (16 KiB)
    DESC d1, b, bf16, [512, 512], [512, 1], [128, 128]    # b tiles: 128 x 128 (32 KiB)
    DESC d2, c, bf16, [512, 512], [512, 1], [64, 128]     # c tiles: 64 x 128
    ADD r3, r1, 31
    DIV r3, r3, r1                  # tiles per core: ceil(32 / cores)
    LI r11, 0                       # k-steps issued on this core (L1 buffer parity)
    LI r12, 0                       # tiles issued on this core (ACC buffer parity)
    SIG.S E1:2
    SIG.S E3:2
    LOOP r2, r3
    MUL r4, r2, r1
    ADD r4, r4, r0                  # tile index t
    SLT r5, r4, 32
    BEQZ r5, next_tile
    DIV r6, r4, 4
    MUL r6, r6, 64                  # first row of the tile: (t // 4) * 64
    REM r7, r4, 4
    MUL r7, r7, 128                 # first column: (t % 4) * 128
    AND r10, r12, 1
    MUL r10, r10, 32768             # ACC buffer: 64 x 128 f32 = 32 KiB
    ADD r12, r12, 1
    LOOP r8, 4
    MUL r13, r8, 128                # k offset
    AND r9, r11, 1
    MUL r9, r9, 49152               # L1 buffer: a (16 KiB) then b (32 KiB)
    ADD r11, r11, 1
    SEQ r14, r8, 0                  # the first step of the tile?
    DMA.LD L1[r9], d0[r6, r13] .wait E1 .sig E0
    DMA.LD L1[r9+16384], d1[r13, r7] .sig E0
    @r14 MMA.bf16.f32 ACC[r10], L1[r9], L1[r9+16384], 64, 128, 128 .init .wait E0:2 .wait E3 .sig E1 .sig E2
    @!r14 MMA.bf16.f32 ACC[r10], L1[r9], L1[r9+16384], 64, 128, 128 .acc .wait E0:2 .sig E1 .sig E2
    ENDLOOP
    DMA.ST d2[r6, r7], ACC[r10] .relu .wait E2:4 .sig E3
next_tile:
    ENDLOOP
    WAIT.S E1:2
    WAIT.S E3:2
    HALT
