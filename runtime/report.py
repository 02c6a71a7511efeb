"""The run report: what the chip did and where the time went (docs/design.md section 8).

`Report` is a plain dataclass built by the interpreter at the end of a run; `to_json()` gives
the dict written by `--report FILE`, `to_text()` the summary the CLI prints. Every number is
simulated (cycles, bytes, counts): nothing depends on the host, so two runs of the same program
and inputs give equal reports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class KernelTime:
    """One `.kernel` region: from its start to the next kernel marker, BAR.CHIP or the end."""

    name: str
    start_cycle: int
    cycles: int
    # HBM bytes the kernel's DMAs moved (reads that missed the L2, writes)
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0


@dataclass
class Report:
    """Totals of one run. Engine names index `busy_cycles[core][engine]` and friends."""

    machine: str
    clock_hz: float
    chips: int
    cores: int
    engines: list[str]
    cycles: int = 0
    instructions: int = 0
    engine_instructions: int = 0
    flops: int = 0
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0
    timing_only: bool = False
    # busy_cycles[core][engine_name]
    busy_cycles: list[dict[str, int]] = field(default_factory=list)
    # stall cycles by cause, summed over cores ("queue_full:LD", "wait_event:MX", ...)
    stall_cycles: dict[str, int] = field(default_factory=dict)
    kernels: list[KernelTime] = field(default_factory=list)
    # per core: cycles in which a DMA (LD/ST) is in flight while MX or VX is busy
    overlap_cycles: list[int] = field(default_factory=list)
    peak_flops_per_second: float = 0.0
    hbm_bytes_per_second: float = 0.0
    # GM reads through the L2 (all of them when it is modelled) and the part it served
    l2_read_bytes: int = 0
    l2_hit_bytes: int = 0
    # flops by the MX input dtype that did them ("other": the vector and scalar engines) and
    # each MX dtype's chip-wide peak FLOP/s: the roofline counts each at its own peak
    flops_by_dtype: dict[str, int] = field(default_factory=dict)
    peak_flops_by_dtype: dict[str, float] = field(default_factory=dict)
    # the roofline bound of the program when the compiler knows it (a compiled `.zt`: the
    # bound of its Graph IR); None: the bound of what ran, from the counts above
    bound_seconds: float | None = None
    # the Chrome/Perfetto trace of the run when one was asked for (not part of to_json())
    trace: dict | None = field(default=None, repr=False, compare=False)
    # many-chip runs: bytes this chip sent to other chips (DMA.PUT)
    net_bytes: int = 0

    # -- derived ---------------------------------------------------------------------------

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz if self.clock_hz else 0.0

    @property
    def busy_fraction(self) -> list[dict[str, float]]:
        """Per core and engine: busy cycles over total cycles."""
        total = max(self.cycles, 1)
        return [{e: round(c / total, 6) for e, c in core.items()} for core in self.busy_cycles]

    def mean_busy_fraction(self) -> dict[str, float]:
        """Per engine: busy fraction averaged over the cores."""
        if not self.busy_cycles:
            return {}
        total = max(self.cycles, 1) * len(self.busy_cycles)
        return {
            e: round(sum(core[e] for core in self.busy_cycles) / total, 6) for e in self.engines
        }

    def overlap_fraction(self) -> float:
        """DMA/compute overlap cycles over total cycles, averaged over the cores."""
        if not self.overlap_cycles or not self.cycles:
            return 0.0
        return round(sum(self.overlap_cycles) / len(self.overlap_cycles) / self.cycles, 6)

    @property
    def compute_seconds(self) -> float:
        """The flops at peak: each MX dtype's flops over that dtype's peak, the others' over
        `peak_flops_per_second` (the bf16 peak)."""
        if not self.flops_by_dtype:  # a report built by hand: everything at the bf16 peak
            return self.flops / self.peak_flops_per_second if self.peak_flops_per_second \
                else 0.0
        seconds = 0.0
        for dtype, flops in self.flops_by_dtype.items():
            peak = self.peak_flops_by_dtype.get(dtype) or self.peak_flops_per_second
            seconds += flops / peak if peak else 0.0
        return seconds

    @property
    def roofline_seconds(self) -> float:
        """The lower bound: the compiler's bound when given, else the larger of the flops at
        their dtypes' peaks and HBM bytes over bandwidth."""
        if self.bound_seconds is not None:
            return self.bound_seconds
        compute = self.compute_seconds
        hbm = self.hbm_read_bytes + self.hbm_write_bytes
        memory = hbm / self.hbm_bytes_per_second if self.hbm_bytes_per_second else 0.0
        return max(compute, memory)

    @property
    def efficiency(self) -> float:
        """Roofline bound over simulated time (1.0 means at the bound)."""
        return self.roofline_seconds / self.seconds if self.seconds else 0.0

    # -- output ----------------------------------------------------------------------------

    def to_json(self) -> dict:
        """A JSON-ready dict (the `--report FILE` content)."""
        return {
            "machine": self.machine,
            "chips": self.chips,
            "cores": self.cores,
            "clock_hz": self.clock_hz,
            "timing_only": self.timing_only,
            "cycles": self.cycles,
            "seconds": self.seconds,
            "instructions": self.instructions,
            "engine_instructions": self.engine_instructions,
            "flops": self.flops,
            "flops_by_dtype": dict(sorted(self.flops_by_dtype.items())),
            "hbm_read_bytes": self.hbm_read_bytes,
            "hbm_write_bytes": self.hbm_write_bytes,
            "hbm_bandwidth_fraction": self._hbm_fraction(),
            "l2_read_bytes": self.l2_read_bytes,
            "l2_hit_bytes": self.l2_hit_bytes,
            "net_bytes": self.net_bytes,
            "roofline_seconds": self.roofline_seconds,
            "efficiency": self.efficiency,
            "engines": list(self.engines),
            "busy_cycles": self.busy_cycles,
            "busy_fraction": self.busy_fraction,
            "mean_busy_fraction": self.mean_busy_fraction(),
            "stall_cycles": dict(sorted(self.stall_cycles.items())),
            "dma_compute_overlap_cycles": self.overlap_cycles,
            "dma_compute_overlap_fraction": self.overlap_fraction(),
            "kernels": len(self.kernels),
            "kernel_cycles": [asdict(k) for k in self.kernels],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def _hbm_fraction(self) -> float:
        if not self.seconds or not self.hbm_bytes_per_second:
            return 0.0
        return (self.hbm_read_bytes + self.hbm_write_bytes) / self.seconds / (
            self.hbm_bytes_per_second
        )

    def to_text(self) -> str:
        """A short human summary: time, throughput, engine utilisation, stalls, kernels."""
        mode = " (timing only)" if self.timing_only else ""
        lines = [
            f"machine {self.machine}: {self.chips} chip(s) x {self.cores} cores{mode}",
            (f"cycles {self.cycles}  simulated time {_fmt_seconds(self.seconds)}  "
             f"instructions {self.instructions} ({self.engine_instructions} on engines)"),
        ]
        tflops = self.flops / self.seconds / 1e12 if self.seconds else 0.0
        lines.append(f"flops {self.flops} ({tflops:.2f} TFLOP/s)  "
                     f"roofline {_fmt_seconds(self.roofline_seconds)}  "
                     f"efficiency {100 * self.efficiency:.1f}%")
        gbps = (self.hbm_read_bytes + self.hbm_write_bytes) / self.seconds / 1e9 if self.seconds \
            else 0.0
        lines.append(f"HBM read {self.hbm_read_bytes} B  write {self.hbm_write_bytes} B  "
                     f"({gbps:.1f} GB/s, {100 * self._hbm_fraction():.1f}% of peak)")
        if self.l2_read_bytes:
            lines.append(f"L2 served {self.l2_hit_bytes} B of {self.l2_read_bytes} B read "
                         f"({100 * self.l2_hit_bytes / self.l2_read_bytes:.1f}% hits)")
        busy = self.mean_busy_fraction()
        line = "engine busy (mean over cores): " + "  ".join(
            f"{e} {100 * f:.1f}%" for e, f in busy.items())
        if busy:
            top = max(busy, key=lambda e: busy[e])
            line += f"; busiest {top}"
        lines.append(line)
        lines.append(f"DMA/compute overlap: {100 * self.overlap_fraction():.1f}% of the run "
                     "(a DMA in flight while MX/VX is busy; mean over cores)")
        if self.stall_cycles:
            stalls = sorted(self.stall_cycles.items(), key=lambda kv: -kv[1])
            lines.append("stall cycles (all cores): "
                         + "  ".join(f"{cause} {n}" for cause, n in stalls[:8]))
        if self.kernels:
            lines.append(f"kernels {len(self.kernels)}:")
            for k in self.kernels:
                lines.append(f"  {k.name}: {k.cycles} cycles from {k.start_cycle}")
        return "\n".join(lines)


def _fmt_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.3f} us"
