"""Where a frame's code comes from, and what a frame is calling: the places the stall watchdog names.

Only the standard library is imported here, so that the CPython-version-specific parts (instruction
offsets, source positions) can be checked on every interpreter without the package's dependencies.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dis
import itertools
import linecache
import os
import site
import sys
import sysconfig
import types
from typing import Any

__all__ = ["APP", "LIBRARY", "OURS", "call_at", "classify", "function_name"]

APP, LIBRARY, OURS = 0, 1, 2  # the application's code, the standard library or a package, asyncproof's
_CALL_OPCODES = frozenset(
    dis.opmap[name] for name in ("CALL", "CALL_KW", "CALL_FUNCTION_EX", "PRECALL") if name in dis.opmap
)


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    with contextlib.suppress(Exception):  # site may be stripped down (embedded interpreters)
        roots.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        roots.add(site.getusersitepackages())
    return tuple(sorted({os.path.join(os.path.realpath(root), "") for root in roots if root}))


_LIBRARY_ROOTS = _library_roots()
_LIBRARY_FOLDERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_OUR_ROOT = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(__file__))), "")
# The reference app is application code wherever it is installed: prove names its lines.
_APPLICATION_PACKAGE = "asyncproof.app"


def classify(filename: str, module: object, cwd: str) -> tuple[int, str]:
    """Whether code from ``filename`` is the application's, and how a place in it is shown."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>: not the application
        return LIBRARY, filename
    real = os.path.realpath(filename)
    # below the working directory, or the installation root (site-packages/asyncproof/app/work.py
    # shows as asyncproof/app/work.py), or as it is
    roots = [cwd] if real.startswith(cwd) else [r for r in _LIBRARY_ROOTS if real.startswith(r)]
    root = max(roots, key=len, default=None)  # site-packages, not the stdlib folder it sits in
    shown = os.path.relpath(real, root) if root else filename
    if real.startswith(_OUR_ROOT):
        return OURS, shown
    if isinstance(module, str) and (
        module == _APPLICATION_PACKAGE or module.startswith(_APPLICATION_PACKAGE + ".")
    ):
        return APP, shown
    if real.startswith(_LIBRARY_ROOTS) or any(folder in real for folder in _LIBRARY_FOLDERS):
        return LIBRARY, shown
    return APP, shown


def function_name(frame: types.FrameType) -> str:
    """``module.qualname`` of the function ``frame`` runs (``json.dumps``, ``requests.api.get``)."""
    module = frame.f_globals.get("__name__")
    qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _public_name(function: Any) -> str:
    """``time.sleep`` for a function imported by name; ``hashlib.pbkdf2_hmac`` rather than the
    private module that defines it, when the public one has it."""
    module = getattr(function, "__module__", None)
    qualname = str(getattr(function, "__qualname__", None) or getattr(function, "__name__", "?"))
    if not isinstance(module, str) or module == "builtins":
        return qualname
    public = sys.modules.get(module.lstrip("_"))
    if module.startswith("_") and public is not None and vars(public).get(qualname) is function:
        module = public.__name__
    return f"{module}.{qualname}"


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _qualified(parts: list[str], namespace: dict[str, Any]) -> str:
    """A dotted callee as written, its first name resolved where that is safe (modules, functions)."""
    first = namespace[parts[0]] if parts[0] in namespace else vars(builtins).get(parts[0])
    if isinstance(first, types.ModuleType):  # import numpy as np; np.dot -> numpy.dot
        return ".".join([first.__name__, *parts[1:]])
    if len(parts) == 1 and isinstance(first, types.BuiltinFunctionType | types.FunctionType):
        return _public_name(first)  # from time import sleep; sleep(1) -> time.sleep
    return ".".join(parts)


def _source(filename: str, position: tuple[int | None, ...]) -> str | None:
    line, end_line, column, end_column = position
    if line is None or end_line is None or column is None or end_column is None:
        return None
    lines = [linecache.getline(filename, number).encode() for number in range(line, end_line + 1)]
    if not all(lines):
        return None
    # co_positions' columns count UTF-8 bytes
    if line == end_line:
        return lines[0][column:end_column].decode(errors="replace")
    middle = b"".join(lines[1:-1])
    return (lines[0][column:] + middle + lines[-1][:end_column]).decode(errors="replace")


def call_at(code: types.CodeType, lasti: int, namespace: dict[str, Any]) -> str | None:
    """The callee of the call instruction at byte offset ``lasti`` of ``code``, from its source
    (``time.sleep``); ``None`` when that instruction is no call or its source cannot be read."""
    if lasti < 0 or lasti >= len(code.co_code) or code.co_code[lasti] not in _CALL_OPCODES:
        return None
    position = next(itertools.islice(code.co_positions(), lasti // 2, None), None)
    text = None if position is None else _source(code.co_filename, position)
    if not text:
        return None
    try:
        node = ast.parse(f"({text}\n)", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call):
        return None
    parts = _dotted(node.func)
    if parts is None:
        return ast.unparse(node.func)[:80]
    return _qualified(parts, namespace)
