"""zhenwu installs under one top-level name: compiler/, isa/ and runtime/ are zhenwu.compiler,
zhenwu.isa and zhenwu.runtime. A bare `import compiler...` would load a second copy of a module
(two registries, two error classes that `except` cannot match), so no source may use one."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BARE = {"compiler", "isa", "runtime"}


def _python_files():
    for folder in ("compiler", "isa", "runtime", "zhenwu", "tests", "samples"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_source_imports_a_bare_top_level_package():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
                          for name in names if name.split(".")[0] in BARE]
    assert not offenders, "\n".join(offenders)


def test_installed_names_live_under_zhenwu(tmp_path):
    # from a folder where the source tree is not on sys.path, only the installed names resolve
    code = ("import importlib.util as u, zhenwu.compiler.cli, zhenwu.isa.machine, "
            "zhenwu.runtime.engine; print([u.find_spec(n) is None for n in "
            "('compiler', 'isa', 'runtime')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[True, True, True]"
