"""The bench's informative `eff HBM` column: the latency-aware bound with the compulsory
traffic at the HBM's sustained streaming rate (compiler.roofline.sustained_bound_cycles)."""

from __future__ import annotations

from dataclasses import replace

from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
from zhenwu.compiler.frontend import load_program
from zhenwu.compiler.roofline import (
    kernel_latencies,
    latency_bound_cycles,
    roofline,
    sustained_bound_cycles,
)
from zhenwu.isa.machine import load_machine


def test_a_memory_bound_program_is_bounded_at_the_sustained_rate():
    machine = load_machine("m890")
    fn = load_program("t.zt", text="fn main(x: f32[512, 1024]) -> f32[512, 1024] {\n"
                                   "    return softmax(x, axis=-1)\n}\n")
    compiled = compile_function(fn, machine, CompileOptions(opt_level=2))
    bound = roofline(compiled.graph, machine)
    latencies = sum(k.cycles for k in kernel_latencies(compiled.kernels, machine))
    sustained = sustained_bound_cycles(compiled.graph, compiled.kernels, machine)
    assert sustained == bound.memory_cycles / machine.hbm_streaming_efficiency + latencies
    assert sustained > latency_bound_cycles(compiled.graph, compiled.kernels, machine)
    # at full streaming efficiency the two bounds agree
    ideal = replace(machine, hbm_streaming_efficiency=1.0)
    assert sustained_bound_cycles(compiled.graph, compiled.kernels, ideal) == \
        latency_bound_cycles(compiled.graph, compiled.kernels, ideal)


def test_a_compute_bound_program_keeps_its_compute_time():
    machine = load_machine("m890")
    fn = load_program("t.zt", text="fn main(a: bf16[1024, 1024], b: bf16[1024, 1024]) -> "
                                   "bf16[1024, 1024] {\n    return a @ b\n}\n")
    compiled = compile_function(fn, machine, CompileOptions(opt_level=2))
    bound = roofline(compiled.graph, machine)
    assert bound.compute_cycles > bound.memory_cycles / machine.hbm_streaming_efficiency
    assert sustained_bound_cycles(compiled.graph, compiled.kernels, machine) == \
        latency_bound_cycles(compiled.graph, compiled.kernels, machine)
