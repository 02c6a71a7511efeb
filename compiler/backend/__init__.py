"""The compiler backend: Graph IR -> Kernel IR -> M890 assembly (docs/design.md section 5).

```python
from zhenwu.compiler.backend.pipeline import CompileOptions, compile_function
compiled = compile_function(fn, machine, CompileOptions(opt_level=0))
compiled.program      # an isa Program, ready for runtime.run_program
compiled.asm_text     # the same as assembly text (printed from it)
compiled.kernels      # the planned Kernel IR (print_kernels / parse_kernels)
```

Modules: `kernel_ir` (the IR, its printer and parser), `lower` (one kernel per graph op),
`tiling` (tile sizes from the machine), `hbm` (addresses), `codegen` (the isa Program,
built through `emitter.Emitter`; text only when printed),
`pipeline` (the stages in order).
"""
