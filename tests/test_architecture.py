"""The house rules a newcomer relies on to find their way, checked so that they stay true.

- Only the PyO3 boundary (``src/lib.rs`` and ``src/py/``) touches Python.
- The top-level Rust modules do not import each other in a circle, and the worker pool and the
  timer thread know the engine only through their narrow traits.
- No source file grows past about 600 lines.
- The README's architecture map names every source file, and only files that exist.
- The type stubs match the compiled module (``mypy.stubtest``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = ROOT / "python" / "rnode_queue"
MAX_LINES = 600

pytestmark = pytest.mark.skipif(
    not (SRC / "lib.rs").is_file(), reason="needs the source tree (run from a checkout)"
)


def rust_files(under: Path = SRC) -> list[Path]:
    return sorted(under.rglob("*.rs"))


def code_of(path: Path) -> str:
    """The file without its comments (`//`, `//!`, `///`), so that docs may name anything."""
    return "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())


def test_only_the_boundary_touches_python() -> None:
    boundary = {SRC / "lib.rs", *(SRC / "py").rglob("*")}
    offenders = [
        str(path.relative_to(ROOT))
        for path in rust_files()
        if path not in boundary and re.search(r"\bpyo3\b", code_of(path))
    ]
    assert offenders == [], f"pyo3 used outside src/lib.rs and src/py/: {offenders}"


def is_test_module(path: Path) -> bool:
    return path.name == "tests.rs" or "tests" in path.relative_to(SRC).parts[:-1]


def top_level_imports() -> dict[str, set[str]]:
    """Which top-level modules of the crate each one uses (`crate::name`)."""
    modules = {path.stem for path in SRC.glob("*.rs")} | {
        path.name for path in SRC.iterdir() if path.is_dir()
    }
    modules -= {"lib", "py"}  # the boundary may use everything
    graph: dict[str, set[str]] = {}
    for module in modules:
        files = [SRC / f"{module}.rs"] if (SRC / f"{module}.rs").exists() else []
        files += rust_files(SRC / module) if (SRC / module).is_dir() else []
        used = set()
        # Test modules (`tests.rs`, `tests/`) may drive a backend through the engine; the code
        # may not.
        for path in (f for f in files if not is_test_module(f)):
            used |= set(re.findall(r"\bcrate::(\w+)", code_of(path)))
        graph[module] = (used & modules) - {module}
    return graph


def test_top_level_modules_import_each_other_without_a_circle() -> None:
    graph = top_level_imports()
    assert "py" not in {m for deps in graph.values() for m in deps}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail(f"import circle: {' -> '.join(cycle)}")
        if module in done:
            return
        for used in sorted(graph[module]):
            visit(used, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    # The layers, bottom up: the engine uses the backends, never the other way round.
    assert "engine" not in graph["backend"]


def test_workers_and_timers_know_the_engine_only_through_a_trait() -> None:
    engine = SRC / "engine"
    narrow = [*rust_files(engine / "workers"), engine / "timers.rs"]
    offenders = [
        str(path.relative_to(ROOT)) for path in narrow if re.search(r"\bEngine\b", code_of(path))
    ]
    assert offenders == [], f"these files should see WorkerHost / TimerHost only: {offenders}"


def test_no_source_file_is_over_the_limit() -> None:
    sources = [*rust_files(), *PACKAGE.glob("*.py"), *PACKAGE.glob("*.pyi")]
    long = {
        str(path.relative_to(ROOT)): count
        for path in sources
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concern (over {MAX_LINES} lines): {long}"


def readme_map() -> list[str]:
    """The paths the README's architecture section lists, relative to the repository."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Architecture\n", 1)[1]
    block = section.split("```", 2)[1]
    listed = []
    folder = ""
    for line in block.splitlines():
        if line and not line[0].isspace():
            folder = line.split()[0]
            listed.append(folder)
        elif match := re.match(r"^  (\S+)\s", line + " "):
            listed.append(folder + match.group(1))
    return listed


def test_the_readme_map_matches_the_tree() -> None:
    listed = readme_map()
    stale = [path for path in listed if not (ROOT / path).exists()]
    assert stale == [], f"the README map names files that do not exist: {stale}"
    sources = [
        path
        for path in [*SRC.rglob("*"), *PACKAGE.iterdir()]
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so"
    ]
    # Each source file by name; a folder entry covers only data files (the Lua scripts).
    code = {".rs", ".py", ".pyi", ".c"}
    unlisted = []
    for path in sources:
        rel = path.relative_to(ROOT).as_posix()
        covered = any(
            rel == entry
            or (entry.endswith("/") and rel.startswith(entry) and path.suffix not in code)
            for entry in listed
        )
        if not covered:
            unlisted.append(rel)
    assert unlisted == [], f"the README map does not name: {unlisted}"


def test_the_stubs_match_the_compiled_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "rnode_queue._core"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
