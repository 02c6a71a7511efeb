"""The network between chips: which bandwidth servers a chip-to-chip transfer passes.

A system of `chips` chips (from a machine's `[system]`, `[link]` and `[nic]`) is cut into
nodes of `chips_per_node` chips. Inside a node the chips are joined by their links in the
machine's topology; between nodes every chip has its NIC. A `Channel` is one direction of a
bandwidth resource, and `Topology.route(src, dst)` lists the channels a transfer from chip
`src` to chip `dst` passes, with its start-up time (alpha):

- `switch`: each chip's links all go to a non-blocking node switch. Channels `chipI.tx` and
  `chipI.rx`, each the chip's whole link bandwidth (`link.count` x `link.bytes_per_second`):
  a transfer is striped over all of the chip's links. Route: tx of the sender, rx of the
  receiver; alpha `link.alpha_seconds`.
- `full`: a direct link bundle between every pair (`link.count // (chips - 1)` links each).
  Route: the one channel `I>J`; alpha as above.
- `ring`: chip I links to I-1 and I+1 (`link.count // 2` links each way). Route: the
  shorter way round (forward on a tie), one channel per hop, alpha per hop.
- `torus2d`: rows x columns (the most nearly square factors), links split evenly over the
  distinct neighbours; dimension-ordered routes (columns first), alpha per hop.
- between nodes: `nicI.tx`, `nicJ.rx` at `nic.bytes_per_second`, alpha `nic.alpha_seconds`.

Both the many-chip interpreter (runtime/cluster.py) and the alpha-beta cost model of
collectives (compiler/collectives.py) read these routes, so they agree on the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from zhenwu.isa.errors import MachineError
from zhenwu.isa.machine import Machine, neighbours, torus_shape


@dataclass(frozen=True)
class Channel:
    """One direction of a bandwidth resource (a link bundle, a switch port, a NIC)."""

    name: str
    bytes_per_second: float


@dataclass(frozen=True)
class Route:
    """The channels a transfer passes, in order, and its start-up time in seconds."""

    channels: tuple[str, ...]
    alpha_seconds: float

    @property
    def hops(self) -> int:
        return len(self.channels)


class Topology:
    """The network of `chips` chips built from `machine` (see the module docstring)."""

    def __init__(self, machine: Machine, chips: int):
        if chips < 1:
            raise MachineError(f"a system needs at least one chip, got {chips}")
        self.machine = machine
        self.chips = chips
        self.per_node = min(chips, machine.chips_per_node)
        self.kind = machine.topology
        self.channels: dict[str, Channel] = {}
        self._routes: dict[tuple[int, int], Route] = {}
        node_chips = self.per_node
        distinct = neighbours(self.kind, node_chips)
        self.links_per_neighbour = machine.link_count // distinct if distinct else 0
        for chip in range(chips):
            self._add(f"nic{chip}.tx", machine.nic_bandwidth)
            self._add(f"nic{chip}.rx", machine.nic_bandwidth)
            if self.kind == "switch" and node_chips > 1:
                self._add(f"chip{chip}.tx", machine.link_total_bandwidth)
                self._add(f"chip{chip}.rx", machine.link_total_bandwidth)
        if self.kind != "switch":  # the link bundles: every route inside a node uses them
            for chip in range(chips):
                first = self.node_of(chip) * self.per_node
                for peer in range(first, min(first + self.per_node, chips)):
                    if peer != chip:
                        self.route(chip, peer)

    def _add(self, name: str, bandwidth: float) -> None:
        self.channels[name] = Channel(name, bandwidth)

    def _edge(self, src: int, dst: int) -> str:
        name = f"{src}>{dst}"
        if name not in self.channels:
            self._add(name, self.links_per_neighbour * self.machine.link_bandwidth)
        return name

    def node_of(self, chip: int) -> int:
        return chip // self.per_node

    def route(self, src: int, dst: int) -> Route:
        """The route of a transfer from chip `src` to chip `dst` (src != dst)."""
        key = (src, dst)
        if key not in self._routes:
            self._routes[key] = self._route(src, dst)
        return self._routes[key]

    def _route(self, src: int, dst: int) -> Route:
        machine = self.machine
        if self.node_of(src) != self.node_of(dst):
            return Route((f"nic{src}.tx", f"nic{dst}.rx"), machine.nic_alpha)
        if self.kind == "switch":
            return Route((f"chip{src}.tx", f"chip{dst}.rx"), machine.link_alpha)
        if self.kind == "full":
            return Route((self._edge(src, dst),), machine.link_alpha)
        base = self.node_of(src) * self.per_node
        hops = [base + local for local in self._local_path(src - base, dst - base)]
        channels = tuple(self._edge(a, b) for a, b in pairwise(hops))
        return Route(channels, machine.link_alpha * len(channels))

    def _local_path(self, src: int, dst: int) -> list[int]:
        """Node-local chip indices from src to dst along ring or torus links."""
        if self.kind == "ring":
            return _ring_path(src, dst, self.per_node)
        rows, cols = torus_shape(self.per_node)
        (row, col), (row_end, col_end) = divmod(src, cols), divmod(dst, cols)
        path = [src]
        for step in _ring_path(col, col_end, cols)[1:]:
            path.append(row * cols + step)
        for step in _ring_path(row, row_end, rows)[1:]:
            path.append(step * cols + col_end)
        return path

    # ---- derived numbers (`zhenwu machines`, the cost model) ----------------------------

    def injection_bandwidth(self) -> float:
        """Bytes/s one chip can send into its node at once (all its links)."""
        if self.per_node <= 1:
            return 0.0
        if self.kind == "switch":
            return self.machine.link_total_bandwidth
        used = self.links_per_neighbour * neighbours(self.kind, self.per_node)
        return used * self.machine.link_bandwidth

    def bisection_bandwidth(self) -> float:
        """Bytes/s (one direction) across the narrowest cut of a node into two halves."""
        n = self.per_node
        if n <= 1:
            return 0.0
        link = self.machine.link_bandwidth
        half = n // 2
        if self.kind == "switch":
            return half * self.machine.link_total_bandwidth
        if self.kind == "full":
            return half * (n - half) * self.links_per_neighbour * link
        if self.kind == "ring":
            return (1 if n == 2 else 2) * self.links_per_neighbour * link
        rows, cols = torus_shape(n)
        cut_dim, other = (cols, rows) if cols >= rows else (rows, cols)
        crossings = 1 if cut_dim == 2 else 2
        return crossings * other * self.links_per_neighbour * link


def _ring_path(src: int, dst: int, size: int) -> list[int]:
    """Indices from src to dst on a ring of `size`, the shorter way (forward on a tie)."""
    forward = (dst - src) % size
    step = 1 if forward <= size - forward else -1
    path = [src]
    while path[-1] != dst:
        path.append((path[-1] + step) % size)
    return path
