"""The Graph IR text form.

```
func @main(%x: bf16[4,784], %w: bf16[784,256]) -> (f32[4,256]) {
  %2 = matmul %x, %w : bf16[4,256] loc("mlp.zt":3:9-3:14)
  %3 = reduce_sum %2 {axes=[1], keepdims=true} : bf16[4,1] origin("softmax#1")
  return %3
}
```
Attribute values: integers, floats (Python repr: `1e-05`, `inf`), `true`/`false`, strings in
double quotes, `none`, and lists `[..]` (tuples in memory). `parse_function` reads it back.
"""

from __future__ import annotations

import json

from zhenwu.compiler.graph.ir import Function, Op, Value


def format_attr(value) -> str:
    """The text of one attribute value."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"unprintable attribute {value!r}")


def value_ref(value: Value) -> str:
    """`%name` for a parameter, `%id` for an op result."""
    return f"%{value.name}" if value.name is not None else f"%{value.id}"


def format_op(op: Op) -> str:
    """One op as a line of text (without indentation)."""
    text = f"{value_ref(op.result)} = {op.kind}"
    if op.inputs:
        text += " " + ", ".join(value_ref(v) for v in op.inputs)
    if op.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in op.attrs.items()) + "}"
    text += f" : {op.result.type}"
    if op.origin is not None:
        text += f" origin({json.dumps(op.origin)})"
    if op.span is not None:
        s = op.span
        text += f" loc({json.dumps(s.file)}:{s.line}:{s.col}"
        if s.end_line is not None and s.end_col is not None:
            text += f"-{s.end_line}:{s.end_col}"
        text += ")"
    return text


def print_function(fn: Function) -> str:
    """The text form of a function, one op per line, ending with a newline."""
    params = ", ".join(f"{value_ref(v)}: {v.type}" for v in fn.params)
    results = ", ".join(str(v.type) for v in fn.outputs)
    lines = [f"func @{fn.name}({params}) -> ({results}) {{"]
    lines.extend("  " + format_op(op) for op in fn.ops)
    lines.append("  return " + ", ".join(value_ref(v) for v in fn.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
