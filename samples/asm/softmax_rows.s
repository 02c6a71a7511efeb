# softmax_rows.s: out = softmax(x, axis=-1) for x: f32[512, 1000], out: f32[512, 1000].
#
# Rows are cut into 32 tiles of 16 rows, dealt round-robin to all cores. A tile is loaded
# 1024 columns wide: the 24 columns past the end are padded with -inf (.pad), so they add
# exp(-inf) = 0 to the sums, and the store drops them again (DMA.ST clips at the tensor's
# dims). Per tile: m = max per row, x = exp(x - m) (m broadcast along the row with the
# strides [m, 1, 0]), s = sum per row, x = x * (1 / s).
# Two L1 buffers let LD load the next tile while VX works on this one and ST stores the
# previous one. Events (balanced, so every event is 0 at HALT):
#   E0  LD -> VX: a tile is in L1
#   E1  VX -> ST: a tile is normalised
#   E2  ST -> LD: a buffer is free again (2 primed by SIG.S, drained at the end)
.tensor x, f32, [512, 1000], 0x0, in
.tensor out, f32, [512, 1000], 0x200000, out
.kernel softmax
    GETID r0, core
    GETID r1, cores
    DESC d0, x, f32, [512, 1000], [1000, 1], [16, 1024]
    DESC d1, out, f32, [512, 1000], [1000, 1], [16, 1024]
    ADD r3, r1, 31
    DIV r3, r3, r1                  # tiles per core: ceil(32 / cores)
    LI r9, 0                        # tiles issued on this core (buffer parity)
    SIG.S E2:2
    LOOP r2, r3
    MUL r4, r2, r1
    ADD r4, r4, r0                  # tile index
    SLT r5, r4, 32
    BEQZ r5, next
    MUL r6, r4, 16                  # its first row
    AND r7, r9, 1
    MUL r7, r7, 65536               # buffer: 16 x 1024 f32 = 64 KiB
    ADD r9, r9, 1
    DMA.LD L1[r7], d0[r6, 0] .pad #-inf .wait E2 .sig E0
    VRMAX.f32 L1[131072], L1[r7], 16, 1024 .row .wait E0
    VSUB.f32 L1[r7], L1[r7], L1[131072, 1, 0], 16, 1024
    VEXP.f32 L1[r7], L1[r7], 16, 1024
    VRSUM.f32 L1[131136], L1[r7], 16, 1024 .row
    VRCP.f32 L1[131136], L1[131136], 16, 1
    VMUL.f32 L1[r7], L1[r7], L1[131136, 1, 0], 16, 1024 .sig E1
    DMA.ST d1[r6, 0], L1[r7] .wait E1 .sig E2
next:
    ENDLOOP
    WAIT.S E2:2
    HALT
