# axpy.s: y = 2.5 * x + y for x, y: f32[512, 1024] (y is updated in place).
#
# y is cut into 64 tiles of 8 rows (32 KiB each), dealt round-robin to all cores. Each core
# double-buffers: while VX computes tile i in one L1 buffer, LD loads tile i+1 into the other
# and ST stores tile i-1.
# Events (balanced, so every event is 0 at HALT):
#   E0  LD -> VX: a tile's x and y are in L1 (2 per tile)
#   E1  VX -> ST: a tile is computed
#   E2  ST -> LD: a buffer is free again (2 primed by SIG.S, drained at the end)
.tensor x, f32, [512, 1024], 0x0, in
.tensor y, f32, [512, 1024], 0x200000, inout
.kernel axpy
    GETID r0, core
    GETID r1, cores
    DESC d0, x, f32, [512, 1024], [1024, 1], [8, 1024]
    DESC d1, y, f32, [512, 1024], [1024, 1], [8, 1024]
    ADD r3, r1, 63
    DIV r3, r3, r1                  # tiles per core: ceil(64 / cores)
    LI r9, 0                        # tiles issued on this core (buffer parity)
    SIG.S E2:2
    LOOP r2, r3
    MUL r4, r2, r1
    ADD r4, r4, r0                  # tile index
    SLT r5, r4, 64
    BEQZ r5, next
    MUL r6, r4, 8                   # its first row
    AND r7, r9, 1
    MUL r7, r7, 65536               # buffer: x at +0, y at +32768
    ADD r9, r9, 1
    DMA.LD L1[r7], d0[r6, 0] .wait E2 .sig E0
    DMA.LD L1[r7+32768], d1[r6, 0] .sig E0
    VFMA.f32 L1[r7+32768], L1[r7], #2.5, L1[r7+32768], 8, 1024 .wait E0:2 .sig E1
    DMA.ST d1[r6, 0], L1[r7+32768] .wait E1 .sig E2
next:
    ENDLOOP
    WAIT.S E2:2
    HALT
