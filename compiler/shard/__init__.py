"""Many chips from one program: a mesh, sharding annotations, propagation, SPMD compile.

    from zhenwu.compiler.shard import resolve_mesh, shard_function, compile_spmd, run_spmd
    mesh = resolve_mesh(fn, "tp=8", chips=8)       # the mesh (or the one the file implies)
    spmd = shard_function(fn, mesh)                # SPMD Graph IR with collectives
    compiled = compile_spmd(spmd, machine, options, chips=8)
    outputs, result = run_spmd(compiled, machine, inputs)

mesh.py (the mesh), annotations.py (`F@tp` in types), propagate.py (the `shard` pass),
spmd.py (segments, per-chip programs, runs).
"""

from __future__ import annotations

from zhenwu.compiler.shard.mesh import Mesh, parse_mesh
from zhenwu.isa.errors import Diagnostic, UsageError

# propagate.py and spmd.py (and the collective codegen they pull in) load on first use: a
# one-chip compile reads only annotations.py and must not pay for them.
_LAZY = {"SpmdFunction": "propagate", "shard_function": "propagate", "SpmdProgram": "spmd",
         "compile_spmd": "spmd", "run_spmd": "spmd"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def resolve_mesh(fn, mesh_text: str | None, chips: int) -> Mesh:
    """The mesh of a run: `--mesh`, else the file's `mesh` declaration, else the one axis
    the program's annotations name, over all `chips`. The mesh must cover exactly the chips
    of the run (`chips` 1: the mesh's own size)."""
    declared = fn.attrs.get("mesh")
    if mesh_text or declared is not None:
        mesh = parse_mesh(mesh_text) if mesh_text else Mesh(declared.axes)
        if chips == 1:
            chips = mesh.chips
        if declared is not None and not mesh_text and mesh.chips != chips:
            raise Diagnostic(f"the program's mesh {mesh} has {mesh.chips} chips, but --chips "
                             f"is {chips}", declared.span)
    else:
        shardings = fn.attrs.get("shardings")
        axes = sorted({item.axis for items in (shardings.params.values() if shardings else ())
                       for item in items} | {item.axis for items in (
                           shardings.results if shardings else ()) for item in items})
        if len(axes) != 1:
            raise UsageError(f"--chips {chips}: say how to split the program with --mesh, e.g. "
                             f"--mesh tp={chips}" + (f" (its annotations name the axes "
                                                     f"{', '.join(axes)})" if axes else ""))
        mesh = Mesh(((axes[0], chips),))
    if mesh.chips > chips:
        raise UsageError(f"--mesh {mesh} needs {mesh.chips} chips, more than --chips {chips}")
    if mesh.chips < chips:
        raise UsageError(f"--mesh {mesh} covers {mesh.chips} chips, but --chips is {chips}: "
                         "the mesh must cover every chip")
    return mesh


__all__ = ["Mesh", "SpmdFunction", "SpmdProgram", "compile_spmd", "parse_mesh", "resolve_mesh",
           "run_spmd", "shard_function"]
