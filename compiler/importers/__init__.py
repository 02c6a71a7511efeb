"""Importers: models from other frameworks written as `.zt` programs.

`compiler.importers.onnx.import_onnx(path_or_model) -> (source, weights)` reads an ONNX model
and writes a readable `.zt` program; its initializers become parameters whose arrays are the
`weights` (an .npz beside the program). The `onnx` package is an optional extra
(`pip install -e '.[onnx]'`); nothing else in zhenwu needs it.
"""
