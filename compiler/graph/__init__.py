"""The Graph IR: types, values, ops, functions, the op registry, text form and verifier."""

from zhenwu.compiler.graph.ir import Function, Op, TensorType, Value, to_dot
from zhenwu.compiler.graph.ops import OPS, PRIMITIVES, OpDef
from zhenwu.compiler.graph.parser import parse_function
from zhenwu.compiler.graph.printer import print_function
from zhenwu.compiler.graph.verify import verify_function

__all__ = [
           "OPS",
           "PRIMITIVES",
           "Function",
           "Op",
           "OpDef",
           "TensorType",
           "Value",
           "parse_function",
           "print_function",
           "to_dot",
           "verify_function",
]
