"""Machine descriptions: the numbers every cost in the compiler and the interpreter comes from.

A machine is a TOML file (`isa/machines/m890.toml`, `isa/machines/z810e.toml`, or a user's
file). `load_machine` reads and validates it into a frozen `Machine`, whose derived
properties give the peaks (FLOP/s per dtype, bandwidths) and the ridge points.

Units: a key ending in `_bytes`, `_bytes_per_second`, `_hz`, `_seconds` or `_cycles` takes a
plain number in that unit or a string with a unit of the same kind (`"144 GB"`, `"1 MiB"`,
`"4.0 TB/s"`, `"1.5 GHz"`, `"2 us"`); every other key takes a plain number. A wrong unit,
an unknown or missing key, a non-integer count, or a negative or zero size is a
`MachineError` naming the key and the file (with its line when it can be found).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from zhenwu.isa.dtypes import MX_DTYPES
from zhenwu.isa.errors import MachineError, SourceSpan
from zhenwu.isa.tomlfile import locate, read_toml

MACHINES_DIR = Path(__file__).parent / "machines"
BUILTIN_MACHINES = ("m890", "z810e")
# measured chips described for `zhenwu validate`: loadable by name, not listed by default
VALIDATION_MACHINES = ("a100",)

# unit name -> factor, per kind of quantity
_UNITS: dict[str, dict[str, float]] = {
    "bytes": {
        "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
        "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
    },
    "bytes_per_second": {"B/s": 1, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12},
    "hz": {"Hz": 1, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
    "seconds": {"s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9},
    "cycles": {"cycles": 1, "cycle": 1},
}
# key suffix -> unit kind (longest first, so `_bytes_per_second` wins over `_bytes`)
_SUFFIX_KIND = (
    ("_bytes_per_second", "bytes_per_second"),
    ("bytes_per_second", "bytes_per_second"),
    ("_bytes_per_cycle", None),
    ("_bytes", "bytes"),
    ("_hz", "hz"),
    ("_seconds", "seconds"),
    ("_cycles", "cycles"),
)

@dataclass(frozen=True)
class Key:
    """How one machine-file key is read: the `Machine` field it fills, its Python type and
    its inclusive range (in the key's unit: bytes, bytes/s, Hz, seconds or cycles, see the
    module docstring). The ranges are wide enough for any plausible chip and narrow enough
    that every derived number stays finite and every simulated memory fits a host: a value
    outside is a `MachineError` at the key's line, never a failure later."""

    field: str
    kind: type
    low: float
    high: float


_KiB, _MiB, _GiB = 2**10, 2**20, 2**30
_BANDWIDTH = (1e6, 1e16)  # 1 MB/s .. 10 PB/s
_LATENCY = (0, 1_000_000)  # cycles

# (section, key) -> Key: adding a key to the machine file is one entry here (and a field)
_SCHEMA: dict[tuple[str, str], Key] = {
    ("core", "count"): Key("cores", int, 1, 1024),
    ("core", "clock_hz"): Key("clock_hz", float, 1e6, 1e11),
    ("core", "scalar_cycles"): Key("scalar_cycles", int, 1, 1000),
    ("core", "queue_depth"): Key("queue_depth", int, 1, 1024),
    ("mx", "m"): Key("mx_m", int, 1, 256),
    ("mx", "n"): Key("mx_n", int, 1, 256),
    ("mx", "k"): Key("mx_k", int, 1, 256),
    ("vx", "bytes_per_cycle"): Key("vx_bytes_per_cycle", int, 1, _MiB),
    ("vx", "sfu_elems_per_cycle"): Key("sfu_elems_per_cycle", int, 1, _MiB),
    ("vx", "sfu_trig_elems_per_cycle"): Key("sfu_trig_elems_per_cycle", int, 1, _MiB),
    ("memory", "l1_bytes"): Key("l1_bytes", int, _KiB, 64 * _MiB),
    ("memory", "acc_bytes"): Key("acc_bytes", int, _KiB, 64 * _MiB),
    ("memory", "smem_bytes"): Key("smem_bytes", int, 64, _MiB),
    ("memory", "l2_bytes"): Key("l2_bytes", int, 0, 16 * _GiB),  # 0: no L2 modelled
    ("memory", "l2_bytes_per_second"): Key("l2_bandwidth", float, *_BANDWIDTH),
    ("memory", "l2_line_bytes"): Key("l2_line_bytes", int, 16, 4 * _KiB),
    ("memory", "l2_block_bytes"): Key("l2_block_bytes", int, 16, 256 * _KiB),
    ("memory", "hbm_bytes"): Key("hbm_bytes", int, _MiB, 2**50),
    ("memory", "hbm_bytes_per_second"): Key("hbm_bandwidth", float, *_BANDWIDTH),
    ("dma", "ld_bytes_per_cycle"): Key("ld_bytes_per_cycle", int, 1, _MiB),
    ("dma", "st_bytes_per_cycle"): Key("st_bytes_per_cycle", int, 1, _MiB),
    ("latency", "hbm_cycles"): Key("hbm_latency", int, *_LATENCY),
    ("latency", "l2_cycles"): Key("l2_latency", int, *_LATENCY),
    ("latency", "mx_fill_cycles"): Key("mx_fill_latency", int, *_LATENCY),
    ("latency", "vx_cycles"): Key("vx_latency", int, *_LATENCY),
    ("latency", "sfu_cycles"): Key("sfu_latency", int, *_LATENCY),
    ("latency", "sram_cycles"): Key("sram_latency", int, *_LATENCY),
    ("latency", "event_wake_cycles"): Key("event_wake_latency", int, *_LATENCY),
    ("link", "count"): Key("link_count", int, 0, 1024),
    ("link", "bytes_per_second"): Key("link_bandwidth", float, *_BANDWIDTH),
    ("link", "alpha_seconds"): Key("link_alpha", float, 0, 1),
    ("nic", "bytes_per_second"): Key("nic_bandwidth", float, *_BANDWIDTH),
    ("nic", "alpha_seconds"): Key("nic_alpha", float, 0, 1),
}
# each `[mx.rate]` entry: the MAC-rate multiplier of one matrix dtype
_RATE = Key("mx_rates", float, 1 / 64, 64)
_SECTIONS = ("core", "mx", "vx", "memory", "dma", "latency", "link", "nic")

# ---- [fidelity]: the physical effects that keep a chip below its peaks ---------------------
# (docs/internals.md section 3.4). An optional section: each key has a default, stated here
# with where it comes from, and a range. key -> (Machine field, python type, default, low,
# high); a value must lie in [low, high].
_FIDELITY: dict[str, tuple[str, type, object, float, float]] = {
    # DMA requests (bursts) one core keeps in flight: per-core GM bandwidth is at most
    # requests x burst bytes / latency (Little's law). 1024 is a GPU SM's order (its L1 miss
    # queues hold about a thousand sectors).
    "dma_requests_in_flight": ("dma_requests_in_flight", int, 1024, 1, 1 << 20),
    # GM moves in aligned bursts: a DMA row pays for every burst it touches, so 16-byte
    # rows cost a whole burst each (64 B: an HBM2/HBM3 pseudo-channel's burst, BL4 x 128 bit).
    "dma_burst_bytes": ("dma_burst_bytes", int, 64, 1, 1 << 16),
    # the fraction of the HBM peak that long streams (whole DRAM rows) sustain: refresh,
    # activations and bank conflicts (vendors' STREAM results are 85-92 % of the datasheet).
    "hbm_streaming_efficiency": ("hbm_streaming_efficiency", float, 0.90, 0.05, 1.0),
    # the fraction of the peak that scattered accesses of one burst each sustain (every one
    # opens a DRAM row; typical measured random-access efficiency of HBM is 30-50 %)
    "hbm_scattered_efficiency": ("hbm_scattered_efficiency", float, 0.40, 0.01, 1.0),
    # a DRAM row (page) of one pseudo-channel: 1 KiB in HBM2/2e/3 (JEDEC)
    "hbm_row_bytes": ("hbm_row_bytes", int, 1024, 32, 1 << 20),
    # DRAM banks over all channels, each keeping the row it last opened (an open-page
    # controller): a transfer that touches only part of a row pays no activation when that
    # row is still open in its bank (another core touched it just before, as neighbouring
    # cores reading adjacent column panels do). Rows interleave over the banks: row r is in
    # bank r mod hbm_banks. HBM2e/HBM3: 16 banks per pseudo-channel, 16 pseudo-channels per
    # stack (HBM2e) or 32 (HBM3) (JEDEC JESD235/JESD238); the default is 4 HBM2e stacks.
    # 0: no row stays open (every partly touched row is an activation).
    "hbm_banks": ("hbm_banks", int, 1024, 0, 1 << 20),
    # the HBM bus idles this long on every switch between reads and writes (tWTR + tRTW),
    # once per write batch of hbm_write_batch_bytes that the controllers gather (a write
    # queue of 64 entries of 32 B per channel, 32 channels)
    "hbm_turnaround_seconds": ("hbm_turnaround_seconds", float, 5e-9, 0.0, 1e-6),
    "hbm_write_batch_bytes": ("hbm_write_batch_bytes", int, 65536, 64, 1 << 30),
    # a chip-wide barrier releases this long after the last core arrives (a reduction tree
    # over the on-chip network and back: ~100 cycles on a 32-core mesh)
    "barrier_cycles": ("barrier_cycles", int, 100, 0, 1 << 24),
    # a kernel starts this long after its launch (the command processor reads the launch
    # packet and starts the cores: 2-5 us on GPUs; 2 us assumed)
    "kernel_launch_seconds": ("kernel_launch_seconds", float, 2e-6, 0.0, 1e-3),
}

# ---- [system]: the chips around this one (many-chip runs and the collective cost model) ----
# Its own block so that its rules stay together: key -> (Machine field, type, allowed range or
# choices). `chips_per_node` chips share a node's `topology` (links from [link]); nodes talk
# through each chip's NIC ([nic]).
TOPOLOGIES = ("switch", "ring", "full", "torus2d")
_SYSTEM_SCHEMA: dict[str, tuple[str, type, object]] = {
    "chips_per_node": ("chips_per_node", int, (1, 4096)),
    "topology": ("topology", str, TOPOLOGIES),
}


@dataclass(frozen=True)
class Machine:
    """One chip's description. Sizes in bytes, bandwidths in bytes/s, latencies in cycles,
    alphas (per-message start-up times) in seconds, `clock_hz` in Hz.

    `mx_rates` maps each matrix input dtype the chip supports to its MAC-rate multiplier
    (bf16 1, fp8 2, f32 0.25, ...); a dtype missing from it has no matrix support here.
    """

    name: str
    description: str
    cores: int
    clock_hz: float
    scalar_cycles: int
    queue_depth: int
    mx_m: int
    mx_n: int
    mx_k: int
    mx_rates: tuple[tuple[str, float], ...]
    vx_bytes_per_cycle: int
    sfu_elems_per_cycle: int
    sfu_trig_elems_per_cycle: int
    l1_bytes: int
    acc_bytes: int
    smem_bytes: int
    l2_bytes: int
    l2_bandwidth: float
    l2_line_bytes: int
    l2_block_bytes: int
    hbm_bytes: int
    hbm_bandwidth: float
    ld_bytes_per_cycle: int
    st_bytes_per_cycle: int
    hbm_latency: int
    l2_latency: int
    mx_fill_latency: int
    vx_latency: int
    sfu_latency: int
    sram_latency: int
    event_wake_latency: int
    link_count: int
    link_bandwidth: float
    link_alpha: float
    nic_bandwidth: float
    nic_alpha: float
    # [fidelity] (see _FIDELITY for the meaning, defaults and sources)
    dma_requests_in_flight: int = 1024
    dma_burst_bytes: int = 64
    hbm_streaming_efficiency: float = 0.90
    hbm_scattered_efficiency: float = 0.40
    hbm_row_bytes: int = 1024
    hbm_banks: int = 1024
    hbm_turnaround_seconds: float = 5e-9
    hbm_write_batch_bytes: int = 65536
    barrier_cycles: int = 100
    kernel_launch_seconds: float = 2e-6
    chips_per_node: int = 1
    topology: str = "switch"
    source: str = ""

    # ---- matrix engine --------------------------------------------------------------
    def mx_rate(self, dtype: str) -> float | None:
        """The MAC-rate multiplier of matrix input `dtype`, or None when unsupported."""
        return dict(self.mx_rates).get(dtype)

    def supports_mx(self, dtype: str) -> bool:
        return self.mx_rate(dtype) is not None

    @property
    def mx_macs_per_cycle(self) -> int:
        """MACs per core per cycle at rate 1 (bf16): m * n * k."""
        return self.mx_m * self.mx_n * self.mx_k

    def peak_flops_per_cycle(self, dtype: str) -> float:
        """Chip-wide dense matrix FLOPs per cycle for input `dtype` (a MAC is 2 FLOPs)."""
        rate = self.mx_rate(dtype)
        if rate is None:
            raise MachineError(f"machine '{self.name}' has no matrix support for {dtype}")
        return self.cores * self.mx_macs_per_cycle * 2 * rate

    def peak_flops(self, dtype: str) -> float:
        """Chip-wide dense matrix FLOP/s for input `dtype`."""
        return self.peak_flops_per_cycle(dtype) * self.clock_hz

    def ridge_point(self, dtype: str) -> float:
        """FLOPs per HBM byte above which a kernel can be compute-bound (peak / bandwidth)."""
        return self.peak_flops(dtype) / self.hbm_bandwidth

    # ---- bandwidths -----------------------------------------------------------------
    @property
    def hbm_bytes_per_cycle(self) -> float:
        """Chip-wide HBM bytes per core clock cycle."""
        return self.hbm_bandwidth / self.clock_hz

    @property
    def dma_window_bytes(self) -> int:
        """Bytes one core keeps in flight to GM at most (requests x burst)."""
        return self.dma_requests_in_flight * self.dma_burst_bytes

    @property
    def kernel_launch_cycles(self) -> int:
        return math.ceil(self.kernel_launch_seconds * self.clock_hz - 1e-9)

    @property
    def hbm_turnaround_cycles(self) -> float:
        return self.hbm_turnaround_seconds * self.clock_hz

    @property
    def l2_bytes_per_cycle(self) -> float:
        """Chip-wide L2 bytes per core clock cycle."""
        return self.l2_bandwidth / self.clock_hz

    @property
    def vx_bandwidth(self) -> float:
        """Chip-wide vector-engine bytes/s (all cores)."""
        return self.cores * self.vx_bytes_per_cycle * self.clock_hz

    @property
    def ld_bandwidth(self) -> float:
        """Chip-wide DMA-in port bytes/s (all cores)."""
        return self.cores * self.ld_bytes_per_cycle * self.clock_hz

    @property
    def st_bandwidth(self) -> float:
        """Chip-wide DMA-out port bytes/s (all cores)."""
        return self.cores * self.st_bytes_per_cycle * self.clock_hz

    @property
    def link_total_bandwidth(self) -> float:
        """All chip-to-chip links together, bytes/s."""
        return self.link_count * self.link_bandwidth

    def seconds(self, cycles: float) -> float:
        return cycles / self.clock_hz

    def cycles(self, seconds: float) -> float:
        return seconds * self.clock_hz

    # ---- printing -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field, plus the derived peaks (FLOP/s, bytes/s) and ridge points."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mx_rates"}
        out["mx_rates"] = dict(self.mx_rates)
        out["derived"] = {
            "peak_flops": {dt: self.peak_flops(dt) for dt, _ in self.mx_rates},
            "ridge_point_flops_per_byte": {dt: self.ridge_point(dt) for dt, _ in self.mx_rates},
            "hbm_bytes_per_second": self.hbm_bandwidth,
            "hbm_bytes_per_cycle": self.hbm_bytes_per_cycle,
            "l2_bytes_per_cycle": self.l2_bytes_per_cycle,
            "vx_bytes_per_second": self.vx_bandwidth,
            "ld_bytes_per_second": self.ld_bandwidth,
            "st_bytes_per_second": self.st_bandwidth,
            "link_total_bytes_per_second": self.link_total_bandwidth,
            **self._system_derived(),
        }
        return out

    def _system_derived(self) -> dict[str, float]:
        from zhenwu.isa.topology import Topology  # isa.topology builds on this module

        node = Topology(self, self.chips_per_node)
        return {"injection_bytes_per_second": node.injection_bandwidth(),
                "bisection_bytes_per_second": node.bisection_bandwidth()}


# ---- the table `zhenwu machines` prints -------------------------------------------------


def _si(value: float, unit: str) -> str:
    """`393 TFLOP/s`, `4 TB/s`, `144 GB`: three significant digits, decimal prefixes."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _binary(value: int) -> str:
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {prefix}"
    return f"{value} B"


def _seconds(value: float) -> str:
    return f"{value * 1e6:.3g} us"


def machine_rows(machine: Machine) -> list[tuple[str, str]]:
    """The rows `zhenwu machines` prints for one machine (label, value)."""
    rows = [
        ("description", machine.description),
        ("cores x clock", f"{machine.cores} x {machine.clock_hz / 1e9:.2f} GHz"),
        ("MX MACs per core per cycle",
         f"{machine.mx_m}x{machine.mx_n}x{machine.mx_k} (bf16 rate 1)"),
    ]
    for dtype in ("bf16", "f16", "fp8", "i8", "f32"):
        rate = machine.mx_rate(dtype)
        unit = "OP/s" if dtype == "i8" else "FLOP/s"
        rows.append((f"peak {dtype} dense",
                     "-" if rate is None else f"{_si(machine.peak_flops(dtype), unit)} "
                     f"(rate {rate:g})"))
    rows += [
        ("VX per core", f"{machine.vx_bytes_per_cycle} B/cycle"),
        ("SFU per core", (f"{machine.sfu_elems_per_cycle} elem/cycle "
                         f"(sin/cos {machine.sfu_trig_elems_per_cycle})")),
        ("L1 / ACC / SMEM per core", (f"{_binary(machine.l1_bytes)} / {_binary(machine.acc_bytes)}"
                                     f" / {_binary(machine.smem_bytes)}")),
        ("L2 shared", "none modelled" if not machine.l2_bytes else
         f"{_binary(machine.l2_bytes)}, {_si(machine.l2_bandwidth, 'B/s')}, "
         f"{machine.l2_line_bytes} B lines in {_binary(machine.l2_block_bytes)} blocks"),
        ("HBM", _si(machine.hbm_bytes, "B")),
        ("HBM bandwidth", (f"{_si(machine.hbm_bandwidth, 'B/s')} "
                          f"({machine.hbm_bytes_per_cycle:.4g} B/cycle)")),
        ("ridge point bf16", "-" if not machine.supports_mx("bf16") else
         f"{machine.ridge_point('bf16'):.4g} FLOP/B"),
        ("DMA ports per core", (f"LD {machine.ld_bytes_per_cycle}, ST "
                               f"{machine.st_bytes_per_cycle} B/cycle")),
        ("latency HBM / L2", f"{machine.hbm_latency} / {machine.l2_latency} cycles"),
        ("latency MX fill / VX / SFU", (f"{machine.mx_fill_latency} / {machine.vx_latency} / "
                                       f"{machine.sfu_latency} cycles")),
        ("latency SRAM / event wake", (f"{machine.sram_latency} / "
                                      f"{machine.event_wake_latency} cycles")),
        ("queue depth", str(machine.queue_depth)),
        ("DMA in flight per core", (f"{machine.dma_requests_in_flight} x "
                                   f"{machine.dma_burst_bytes} B bursts = "
                                   f"{_binary(machine.dma_window_bytes)}")),
        ("HBM efficiency", (f"streaming {machine.hbm_streaming_efficiency:g}, scattered "
                           f"{machine.hbm_scattered_efficiency:g}, "
                           f"{_binary(machine.hbm_row_bytes)} rows, "
                           f"{machine.hbm_banks} banks")),
        ("HBM read/write turnaround", (f"{machine.hbm_turnaround_seconds * 1e9:.3g} ns per "
                                      f"{_binary(machine.hbm_write_batch_bytes)} written")),
        ("barrier / kernel launch", (f"{machine.barrier_cycles} cycles / "
                                    f"{_seconds(machine.kernel_launch_seconds)}")),
        ("chip links", (f"{machine.link_count} x {_si(machine.link_bandwidth, 'B/s')} = "
                       f"{_si(machine.link_total_bandwidth, 'B/s')}, alpha "
                       f"{_seconds(machine.link_alpha)}")),
        ("scale-out NIC", (f"{_si(machine.nic_bandwidth, 'B/s')}, alpha "
                          f"{_seconds(machine.nic_alpha)}")),
        *system_rows(machine),
    ]
    return rows


def system_rows(machine: Machine) -> list[tuple[str, str]]:
    """The `[system]` rows: the node, and the per-chip and bisection bandwidth it gives."""
    from zhenwu.isa.topology import Topology  # isa.topology builds on this module

    node = Topology(machine, machine.chips_per_node)
    return [
        ("node", f"{machine.chips_per_node} chips, {machine.topology}"
         + (f" ({node.links_per_neighbour} links per neighbour)"
            if machine.topology != "switch" and machine.chips_per_node > 1 else "")),
        ("per-chip injection (node)", _si(node.injection_bandwidth(), "B/s")),
        ("node bisection", _si(node.bisection_bandwidth(), "B/s")),
        ("alpha link / NIC", f"{_seconds(machine.link_alpha)} / {_seconds(machine.nic_alpha)}"),
    ]


def format_machines(machines: list[Machine]) -> str:
    """The table of `zhenwu machines`: one column per machine."""
    columns = [dict(machine_rows(m)) for m in machines]
    labels = [label for label, _ in machine_rows(machines[0]) if label != "description"]
    if len(machines) > 1 and all(m.supports_mx("bf16") for m in machines):
        label = f"{machines[0].name} bf16 / this"
        labels.append(label)
        first = machines[0].peak_flops("bf16")
        for machine, column in zip(machines, columns):
            column[label] = f"{first / machine.peak_flops('bf16'):.1f}"
    width = max(len(label) for label in labels) + 2
    col_width = max(max(len(c[label]) for label in labels) for c in columns) + 3
    lines = ["".ljust(width) + "".join(m.name.ljust(col_width) for m in machines).rstrip()]
    for label in labels:
        lines.append((label.ljust(width) + "".join(c[label].ljust(col_width)
                                                   for c in columns)).rstrip())
    for machine in machines:
        lines.append(f"{machine.name}: {machine.description} [{machine.source}]")
    return "\n".join(lines)


# ---- loading ------------------------------------------------------------------------


def load_machine(spec: str | Path) -> Machine:
    """Load a machine: a built-in name (`m890`, `z810e`) or the path of a TOML file."""
    text_spec = str(spec)
    if text_spec in BUILTIN_MACHINES or text_spec in VALIDATION_MACHINES:
        return _load_builtin(text_spec)
    path = Path(text_spec)
    if path.is_dir():
        raise MachineError(f"machine file '{text_spec}' is a directory")
    if not path.exists():
        if path.suffix != ".toml" and "/" not in text_spec:
            raise MachineError(
                f"unknown machine '{text_spec}'",
                notes=[(f"built-in machines: {', '.join(BUILTIN_MACHINES + VALIDATION_MACHINES)}; "
                       "or a path to a .toml")],
            )
        raise MachineError(f"machine file '{text_spec}' not found")
    return _load_file(path)


@functools.cache
def _load_builtin(name: str) -> Machine:
    machine = _load_file(MACHINES_DIR / f"{name}.toml")
    return dataclasses.replace(machine, source=f"isa/machines/{name}.toml")


def _load_file(path: Path) -> Machine:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MachineError(f"cannot read machine file '{path}': {err}") from None
    if not text.strip():
        raise MachineError(f"machine file '{path}' is empty (it needs name, description and "
                           f"the sections {', '.join(f'[{s}]' for s in _SECTIONS)})")
    return parse_machine(text, str(path))


def parse_machine(text: str, filename: str = "<machine>") -> Machine:
    """Validate the TOML text of a machine description into a `Machine`."""
    data = read_toml(text, filename, MachineError)

    def where(section: str | None, key: str | None) -> SourceSpan:
        return _locate(text, filename, section, key)

    values: dict[str, object] = {}
    for key in data:
        if key not in ("name", "description", "fidelity", "system", *_SECTIONS):
            raise MachineError(f"unknown key '{key}' in machine file {filename}", where(None, key))
    for key in ("name", "description"):
        if key not in data:
            raise MachineError(f"missing key '{key}' in machine file {filename}", where(None, None))
        if not isinstance(data[key], str) or not data[key]:
            raise MachineError(f"'{key}' must be a non-empty string in {filename}", where(None, key))
        values[key] = data[key]
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", values["name"]):  # type: ignore[arg-type]
        raise MachineError(
            f"'name' must be letters, digits, '_' or '-' (at most 64) in {filename}",
            where(None, "name"),
        )
    for section in _SECTIONS:
        table = data.get(section)
        if table is None:
            raise MachineError(f"missing section [{section}] in machine file {filename}")
        if not isinstance(table, dict):
            raise MachineError(f"'{section}' must be a table in {filename}", where(None, section))
        expected = {k for (s, k) in _SCHEMA if s == section}
        if section == "mx":
            expected.add("rate")
        for key in table:
            if key not in expected:
                raise MachineError(
                    f"unknown key '{section}.{key}' in machine file {filename}",
                    where(section, key),
                    notes=[f"[{section}] takes: {', '.join(sorted(expected))}"],
                )
        for key in sorted(expected):
            if key not in table:
                raise MachineError(
                    f"missing key '{section}.{key}' in machine file {filename}",
                    where(section, None),
                )
    for (section, key), spec in _SCHEMA.items():
        values[spec.field] = _quantity(
            data[section][key], f"{section}.{key}", spec, filename, where(section, key)
        )
    rates = data["mx"]["rate"]
    if not isinstance(rates, dict) or not rates:
        raise MachineError(f"'mx.rate' must be a table of dtype = multiplier in {filename}",
                           where("mx", "rate"))
    mx_rates = []
    for dtype, rate in rates.items():
        span = where("mx.rate", dtype)
        if dtype not in MX_DTYPES:
            raise MachineError(
                f"unknown key 'mx.rate.{dtype}' in machine file {filename}", span,
                notes=[f"matrix dtypes: {', '.join(MX_DTYPES)}"],
            )
        mx_rates.append(
            (dtype, _quantity(rate, f"mx.rate.{dtype}", _RATE, filename, span))
        )
    values["mx_rates"] = tuple(sorted(mx_rates, key=lambda item: MX_DTYPES.index(item[0])))
    values.update(_fidelity(data, filename, where))
    line, block = values["l2_line_bytes"], values["l2_block_bytes"]
    if line & (line - 1) or block & (block - 1) or block < line or block > 64 * line:
        raise MachineError(
            f"'memory.l2_block_bytes' ({block}) must be 1 to 64 times 'memory.l2_line_bytes' "
            f"({line}), both powers of two, in {filename}", where("memory", "l2_block_bytes"))
    values.update(_parse_system(data.get("system"), values, filename, where))
    values["source"] = filename
    return Machine(**values)  # type: ignore[arg-type]


def _fidelity(data: dict, filename: str, where) -> dict[str, object]:
    """The optional [fidelity] section: each key's value (range-checked) or its default."""
    table = data.get("fidelity", {})
    if not isinstance(table, dict):
        raise MachineError(f"'fidelity' must be a table in {filename}", where(None, "fidelity"))
    for key in table:
        if key not in _FIDELITY:
            raise MachineError(
                f"unknown key 'fidelity.{key}' in machine file {filename}", where("fidelity", key),
                notes=[f"[fidelity] takes: {', '.join(sorted(_FIDELITY))}"])
    values: dict[str, object] = {}
    for key, (field_name, kind, default, low, high) in _FIDELITY.items():
        if key not in table:
            values[field_name] = default
            continue
        values[field_name] = _quantity(table[key], f"fidelity.{key}",
                                       Key(field_name, kind, low, high), filename,
                                       where("fidelity", key))
    return values

def _parse_system(table, values: dict, filename: str, where) -> dict[str, object]:
    """The `[system]` section (required): chips per node and the node's topology, checked
    against the chip's link count (each chip's links must reach its neighbours)."""
    if table is None:
        raise MachineError(f"missing section [system] in machine file {filename}",
                           notes=["[system] takes: chips_per_node, topology"])
    if not isinstance(table, dict):
        raise MachineError(f"'system' must be a table in {filename}", where(None, "system"))
    for key in table:
        if key not in _SYSTEM_SCHEMA:
            raise MachineError(f"unknown key 'system.{key}' in machine file {filename}",
                               where("system", key),
                               notes=[f"[system] takes: {', '.join(_SYSTEM_SCHEMA)}"])
    out: dict[str, object] = {}
    for key, (field_name, kind, allowed) in _SYSTEM_SCHEMA.items():
        if key not in table:
            raise MachineError(f"missing key 'system.{key}' in machine file {filename}",
                               where("system", None))
        raw, span = table[key], where("system", key)
        if kind is str:
            if raw not in allowed:  # type: ignore[operator]
                raise MachineError(f"'system.{key}' = {raw!r} in {filename}: expected one of "
                                   f"{', '.join(allowed)}", span)  # type: ignore[arg-type]
            out[field_name] = raw
            continue
        low, high = allowed  # type: ignore[misc]
        out[field_name] = _quantity(raw, f"system.{key}", Key(field_name, int, low, high),
                                    filename, span)
    chips, topology, links = out["chips_per_node"], out["topology"], values["link_count"]
    needed = links_needed(topology, chips)  # type: ignore[arg-type]
    if links < needed:
        raise MachineError(
            f"'system.topology' = '{topology}' with {chips} chips per node needs at least "
            f"{needed} links per chip, 'link.count' is {links} in {filename}",
            where("system", "topology"))
    return out


def torus_shape(chips: int) -> tuple[int, int]:
    """The rows x columns of a 2-D torus of `chips` chips: the most nearly square factors."""
    rows = max(r for r in range(1, math.isqrt(chips) + 1) if chips % r == 0)
    return rows, chips // rows


def neighbours(topology: str, chips: int) -> int:
    """How many distinct peers each chip of a node of `chips` chips has a direct link to."""
    if chips <= 1:
        return 0
    if topology == "switch":
        return 1  # the switch itself
    if topology == "full":
        return chips - 1
    if topology == "ring":
        return 1 if chips == 2 else 2
    rows, cols = torus_shape(chips)
    return sum(0 if n == 1 else 1 if n == 2 else 2 for n in (rows, cols))


def links_needed(topology: str, chips: int) -> int:
    """The fewest links per chip the topology needs: one per distinct neighbour."""
    return neighbours(topology, chips)


def _unit_kind(key: str) -> str | None:
    leaf = key.rsplit(".", 1)[-1]
    for suffix, kind in _SUFFIX_KIND:
        if leaf.endswith(suffix) or leaf == suffix.lstrip("_"):
            return kind
    return None


def _quantity(raw, key: str, spec: Key, filename: str, span: SourceSpan) -> int | float:
    """One numeric value, with its unit checked against the key's kind and its value
    against the key's type and range."""
    unit_kind = _unit_kind(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise MachineError(f"'{key}' must be a number in {filename}", span)
    if isinstance(raw, str):
        if unit_kind is None:
            raise MachineError(
                f"'{key}' takes a plain number, not '{raw}' (wrong unit) in {filename}", span
            )
        match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(\S+)\s*", raw)
        units = _UNITS[unit_kind]
        if match is None or match[2] not in units:
            raise MachineError(
                f"'{key}' = '{raw}': wrong unit for {unit_kind.replace('_', ' ')} in {filename}",
                span, notes=[f"units: {', '.join(units)}"],
            )
        value = float(match[1]) * units[match[2]]
    else:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise MachineError(f"'{key}' must be finite in {filename}", span)
    if spec.kind is int:
        rounded = round(value)
        if abs(value - rounded) > 1e-9 * max(1.0, abs(value)):
            raise MachineError(f"'{key}' must be a whole number, got {raw} in {filename}", span)
        value = int(rounded)
    if value < 0 or (value == 0 and spec.low > 0):
        raise MachineError(
            f"'{key}' must be {'non-negative' if spec.low == 0 else 'positive'}, "
            f"got {raw} in {filename}", span,
        )
    if not spec.low <= value <= spec.high:
        unit = "" if unit_kind is None else f" {_UNIT_NAMES[unit_kind]}"
        raise MachineError(
            f"'{key}' must be between {_plain(spec.low)} and {_plain(spec.high)}{unit}, got "
            f"{raw} in "
            f"{filename}", span,
        )
    return float(value) if spec.kind is float else value


def _plain(number: float) -> str:
    """`67108864`, `1e+06`, `0.015625`: whole numbers in full, others short."""
    if number == int(number) and abs(number) < 1e12:
        return str(int(number))
    return f"{number:g}"


_UNIT_NAMES = {"bytes": "bytes", "bytes_per_second": "bytes/s", "hz": "Hz",
               "seconds": "s", "cycles": "cycles"}


_locate = locate
