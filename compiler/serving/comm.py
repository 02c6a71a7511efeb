"""ANALYTIC cost of the collectives between chips in a serving estimate (an alpha-beta model).

The layer programs are simulated one chip at a time; what passes between the chips is costed
here, by formula, from the machine file's `[link]` (inside a node) and `[nic]` (between
nodes) numbers. Every figure this gives is labelled "analytic" in `zhenwu serve`'s output.
Collectives inside a node are the many-chip model's (compiler/collectives.py: the node's
topology from the machine's `[system]`, the cheapest of direct and ring schedules, the same
model `zhenwu collective` prints and `zhenwu bench collectives` checks against simulation
within 1%). A stage-to-stage send, and collectives across nodes, use the formulas below.

Over p chips, n bytes per chip, per-message start-up alpha and per-chip bandwidth beta
(inside a node: all `link.count` links of a chip, `count x bytes_per_second`; between
nodes: the NIC), with a direct schedule (every chip sends its p-1 pieces at once over the
node switch, paying one alpha; a ring moves the same bytes but pays p-1 alphas):

    all_reduce      2 alpha + 2 (p-1)/p n / beta            (a reduce-scatter + all-gather)
    all_gather      alpha + (p-1)/p n / beta                (n: the gathered result)
    reduce_scatter  alpha + (p-1)/p n / beta                (n: the input)
    all_to_all      alpha + (p-1)/p n / beta                (n: what one chip sends in all)
    send            alpha + n / beta                        (pipeline stage to stage)
"""

from __future__ import annotations

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send")


def collective_seconds(kind: str, nbytes: float, chips: int, machine, *,
                       across_nodes: bool = False) -> float:
    """Seconds for one collective of `kind` over `chips` chips moving `nbytes` per chip
    (analytic: an alpha-beta model of a direct schedule on `machine`'s link or NIC
    numbers)."""
    if kind not in COLLECTIVES:
        raise ValueError(f"unknown collective {kind!r}")
    if kind != "send" and chips <= 1:
        return 0.0
    if kind != "send" and not across_nodes and chips <= machine.chips_per_node:
        from zhenwu.compiler.collectives import collective_seconds as node_collective

        return node_collective(kind.replace("_", ""), max(int(round(nbytes)), 1), chips,
                               machine)[0]
    if across_nodes:
        alpha, beta = machine.nic_alpha, machine.nic_bandwidth
    else:
        alpha, beta = machine.link_alpha, machine.link_count * machine.link_bandwidth
    if kind == "send":
        return alpha + nbytes / beta
    share = (chips - 1) / chips * nbytes / beta
    if kind == "all_reduce":
        return 2 * alpha + 2 * share
    return alpha + share
