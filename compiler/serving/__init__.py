"""Serving estimates (`zhenwu serve`): model files, the generated per-chip layer programs, the
analytic collectives and the composition into TTFT, TPOT, tokens/s and cost (docs/serving.md).
Nothing here runs the simulator: compiler/commands/serve_simulate.py does."""
