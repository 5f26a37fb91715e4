"""Builds quotaflow. The modules listed in quotaflow._native.COMPILED are compiled to C with
mypyc (QUOTAFLOW_NATIVE=0 installs pure Python); the rest of the metadata is in pyproject.toml."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "src"))
os.environ.setdefault("QUOTAFLOW_NATIVE", "1")
from quotaflow._native import (  # noqa: E402
    C_MODULES,
    COMPILED,
    MANIFEST,
    source_digest,
    source_path,
)

# pip runs this file several times (metadata, then the build): compile only when building.
BUILDING = bool({"build", "build_ext", "bdist_wheel", "editable_wheel", "develop"} & set(sys.argv))
NATIVE = os.environ["QUOTAFLOW_NATIVE"] != "0"

ext_modules = []
if BUILDING:
    # A module compiled by an earlier build but no longer listed would shadow its source, in
    # the tree or in a wheel (setuptools reuses build/lib*).
    for old in [*(HERE / "src").glob("*__mypyc*.so"), *(HERE / "src" / "quotaflow").rglob("*.so")]:
        old.unlink()
    for stale_lib in (HERE / "build").glob("lib*"):
        shutil.rmtree(stale_lib)
    MANIFEST.unlink(missing_ok=True)
if BUILDING and NATIVE:
    from mypyc.build import mypycify

    paths = [str(source_path(m).relative_to(HERE)) for m in COMPILED]
    # Read before mypyc reads the sources; a source changed while it compiled gets no manifest.
    digests = {m: source_digest(m) for m in (*COMPILED, *C_MODULES)}
    # An isolated build (pip install .) has no dependencies installed: their types are Any
    # there, so the strict checks that only warn about Any are off for the build (CI runs
    # mypy --strict on its own).
    relaxed = [
        "--ignore-missing-imports",
        "--no-warn-return-any",
        "--no-warn-unused-ignores",
        "--allow-subclassing-any",
        "--allow-untyped-calls",
        "--allow-untyped-decorators",
    ]
    ext_modules = mypycify(  # one C file per module, so that the build runs on every core
        [*relaxed, *paths],
        multi_file=True,
        opt_level=os.environ.get("QUOTAFLOW_OPT_LEVEL", "3"),
    )
    ext_modules += [
        Extension(m, [str(source_path(m).relative_to(HERE))], extra_compile_args=["-O2"])
        for m in C_MODULES
    ]
    after = {m: source_digest(m) for m in (*COMPILED, *C_MODULES)}
    if after != digests:
        raise SystemExit("a compiled source changed during the build: build again")
    MANIFEST.write_text(json.dumps({"modules": digests}, indent=1, sort_keys=True) + "\n")


class ParallelBuildExt(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=ext_modules, cmdclass={"build_ext": ParallelBuildExt})
