"""Which of quotaflow's modules run compiled to C (by mypyc), and the fallback to their source.

The charging hot path (ledger, store, engine, the Diameter codec, the Nchf mapping) is plain
typed Python that `setup.py` compiles with mypyc when the package is installed; the compiled
modules run about twice as fast. The build writes `_native.json`, the SHA-256 of each source it
compiled. At import, compiled modules are used only if every listed one is present and was built
from the source beside it, and no other compiled module lies in the package (an older build's);
otherwise (a source edited since, a build without a compiler, or
QUOTAFLOW_NATIVE=0) all of them are loaded from source, since a compiled class cannot mix with
an interpreted one. `MODE` says which, and the server logs it at start.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# Leaf modules only: a package's __init__ stays interpreted, and so do modules defining
# exceptions (a compiled subclass of an interpreted exception loses its class attributes).
COMPILED: tuple[str, ...] = (
    "quotaflow.ledger._base",
    "quotaflow.ledger._groups",
    "quotaflow.ledger._moves",
    "quotaflow.ledger._opids",
    "quotaflow.ledger.ledger",
    "quotaflow.ledger.model",
    "quotaflow.ledger.periods",
    "quotaflow.ledger.transfers",
    "quotaflow.store.clock",
    "quotaflow.store.journal",
    "quotaflow.store.immediate",
    "quotaflow.store.embedded",
    "quotaflow.engine.engine",
    "quotaflow.engine.grants",
    "quotaflow.engine.pools",
    "quotaflow.engine.types",
    "quotaflow.rating.rater",
    "quotaflow.rating.tariff",
    "quotaflow.diameter._values",
    "quotaflow.diameter.dictionary",
    "quotaflow.diameter.message",
    "quotaflow.diameter.codec",
    "quotaflow.diameter.validate",
    "quotaflow.diameter.messages",
    "quotaflow.diameter.events",
    "quotaflow.diameter.peer",
    "quotaflow.diameter._link",
    "quotaflow.diameter.gy_answer",
    "quotaflow.diameter.gy_wire",
    "quotaflow.diameter.gy_mapping",
    "quotaflow.diameter.gy_retransmit",
    "quotaflow.diameter.gy_notify",
    "quotaflow.diameter.gy",
    "quotaflow.nchf._wire",
    "quotaflow.notify._gate",
    "quotaflow.nchf._mapping",
    "quotaflow.nchf._app",
    "quotaflow.records._chain",
    "quotaflow.records._writer",
    "quotaflow.records._export",
    "quotaflow.groups.watch",
    "quotaflow.tally",
)
# Written in C, built beside them, and used with them (their Python stand-ins are in the
# modules that load them).
C_MODULES: tuple[str, ...] = ("quotaflow.ledger._idtable", "quotaflow.store._walsync")
ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "_native.json"


def source_path(module: str) -> Path:
    suffix = ".c" if module in C_MODULES else ".py"
    return ROOT.joinpath(*module.split(".")[1:]).with_suffix(suffix)


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def compiled_files(root: Path = ROOT) -> dict[str, Path]:
    """Every extension module in the package, by module name (left by any build)."""
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        suffix = next((x for x in suffixes if path.name.endswith(x)), None)
        if suffix is not None:
            parts = path.relative_to(root).with_name(path.name[: -len(suffix)]).parts
            found[".".join(("quotaflow", *parts))] = path
    return found


def why_not_compiled(manifest: Path = MANIFEST, found: dict[str, Path] | None = None) -> str | None:
    """None when the compiled modules are usable; else the reason they are not. `found`: the
    package's extension modules (`compiled_files()`), when the caller has them already."""
    if os.environ.get("QUOTAFLOW_NATIVE", "1") == "0":
        return "QUOTAFLOW_NATIVE=0"
    try:
        built = json.loads(manifest.read_bytes())["modules"]
    except (OSError, ValueError, KeyError):
        return "not built"
    found = compiled_files() if found is None else found
    for module in (*COMPILED, *C_MODULES):
        if module not in found:
            return f"{module} is not compiled"
        if built.get(module) != source_digest(module):
            return f"{module} changed since it was compiled"
    for module in found:
        if module not in COMPILED and module not in C_MODULES:  # an older build's, no longer listed
            return f"{module} is compiled but not listed"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads quotaflow's modules from their .py files even where a compiled one lies beside."""

    def __init__(self, compiled: dict[str, Path]) -> None:
        self.compiled = compiled

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in C_MODULES:  # no Python source: QUOTAFLOW_NATIVE=0 leaves it unused
            return None
        if fullname not in self.compiled or not source_path(fullname).exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def _install() -> str:
    found = compiled_files()  # one scan of the package at start-up
    reason = why_not_compiled(found=found)
    if reason is None:
        return "compiled"
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(found))
    return f"interpreted ({reason})"


MODE = _install()
