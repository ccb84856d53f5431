"""The package's walls, read from the source (every import, also those inside functions; nothing is imported).

The layout (README, "Layout"): leaves (config, errors, records, prompts, progress, ray_cluster) import no
subpackage; io/, teachers/, filters/ sit above them; stages/ and train/ above those; runs/ above all of these; report/ reads runs
through runs/read; cli/ on top, and nothing imports it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
LEAVES = {"config", "errors", "records", "prompts", "progress", "ray_cluster"}
# The names of the run directory's layout (runs/store knows it): files and folders of <run>/, and the flat folder
# `pipeline filter --out DIR` writes.
LAYOUT_FILES = {"manifest.json", ".done", ".lock", "cache.sqlite", "kept.jsonl", "rejected.jsonl", "stats.json",
                "train.jsonl", "messages.jsonl", "README.md", "report.html"}
LAYOUT_NAMES = LAYOUT_FILES | {"dataset", "tune", "eval"}
FILE_IO_MODULES = {"os", "io", "shutil", "tempfile", "pathlib", "sqlite3", "csv", "pickle", "glob", "fcntl"}
FILE_IO_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "rmdir",
                 "touch", "iterdir", "glob", "rglob", "savefig"}


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def imports(name: str, files: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in a module, relative ones resolved; ``from X import y`` counts
    as importing X.y when that is a module of the package, else X."""
    tree = ast.parse(files[name].read_text(encoding="utf-8"))
    base = name.split(".") if _is_package(name, files) else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                origin = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                found.append((sub if sub in files else origin, node.lineno))
    return found


def _group(module: str) -> str:
    """The folder of a module of the package ("cli", "runs", ...), or the leaf's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _subpackages(files: dict[str, Path]) -> set[str]:
    return {_group(m) for m in files if _is_package(m, files) and m.count(".") == 1}


def forbidden_imports(package: Path, rule) -> list[str]:
    """``file:line imports X`` for every import in the package that ``rule(importer, imported)`` refuses."""
    files = modules(package)
    found = []
    for name in files:
        for target, line in imports(name, files):
            if target.split(".")[0] == package.name and rule(name, target):
                found.append(f"{files[name].relative_to(package.parent)}:{line} imports {target}")
    return list(dict.fromkeys(found))


def _in(module: str, group: str) -> bool:
    return module.split(".")[1:2] == [group]


def check_nothing_imports_the_cli(package: Path) -> list[str]:
    return forbidden_imports(package, lambda src, dst: not _in(src, "cli") and _group(dst) == "cli")


def check_lower_floors_know_no_runs(package: Path) -> list[str]:
    """stages/, filters/ and train/ never import runs/ or cli/."""
    files = modules(package)
    low = ("stages", "filters", "train")
    missing = [f"no {group}/ folder" for group in low if not any(_in(m, group) for m in files)]
    return missing or forbidden_imports(package, lambda src, dst: _group(src) in low and _group(dst) in ("runs", "cli"))


def check_filters_are_pure(package: Path) -> list[str]:
    """filters/ imports neither teachers/ nor io/ and does no file I/O (no file modules, no file calls)."""
    files = modules(package)
    found = forbidden_imports(package, lambda src, dst: _in(src, "filters") and _group(dst) in ("teachers", "io"))
    for name, path in files.items():
        if not _in(name, "filters"):
            continue
        where = path.relative_to(package.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                          if a.name.split(".")[0] in FILE_IO_MODULES]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                if (node.module or "").split(".")[0] in FILE_IO_MODULES:
                    found.append(f"{where}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if called in FILE_IO_CALLS:
                    found.append(f"{where}:{node.lineno} calls {called}")
    return found


_PATHLIKE = re.compile(r"^[\w.<>/-]+$")


def check_only_runs_know_the_layout(package: Path) -> list[str]:
    """No module outside runs/ names a file or folder of the run directory in a path: a string constant that is a
    path holding one (``"dataset/train.jsonl"``), one of its file names (``"kept.jsonl"``), or the right side of
    ``path / "name"`` (``run_dir / "dataset"``)."""
    files = modules(package)
    found = []
    for name, path in files.items():
        if _in(name, "runs"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        divided = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)}
        pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}  # of f-strings
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and _PATHLIKE.match(node.value)
                    and id(node) not in pieces):
                continue
            s = node.value
            if (("/" in s or id(node) in divided) and set(s.split("/")) & LAYOUT_NAMES) or s in LAYOUT_FILES:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno} names {s!r}")
    return found


def check_report_reads_runs_through_read(package: Path) -> list[str]:
    files = modules(package)
    if not any(_in(m, "report") for m in files):
        return ["no report/ folder"]
    return forbidden_imports(package, lambda src, dst: _in(src, "report") and _group(dst) == "runs"
                             and dst != f"{package.name}.runs.read")


def check_leaves_import_no_subpackage(package: Path) -> list[str]:
    files = modules(package)
    subs = _subpackages(files)
    leaves = {f"{package.name}.{leaf}" for leaf in LEAVES}
    missing = [leaf for leaf in leaves if leaf not in files or _is_package(leaf, files)]
    if missing:
        return [f"{leaf} is not a leaf module" for leaf in sorted(missing)]
    return forbidden_imports(package, lambda src, dst: src in leaves and _group(dst) in subs)


def check_no_import_cycles(package: Path) -> list[str]:
    """No loop of imports between modules, lazy imports included, so no lazy import can be dodging one."""
    files = modules(package)
    graph = {m: sorted({t for t, _ in imports(m, files) if t in files and t != m}) for m in files}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    return cycles


WALLS = [check_nothing_imports_the_cli, check_lower_floors_know_no_runs, check_filters_are_pure,
         check_only_runs_know_the_layout, check_report_reads_runs_through_read, check_leaves_import_no_subpackage,
         check_no_import_cycles]


@pytest.mark.parametrize("wall", WALLS, ids=lambda w: w.__name__.removeprefix("check_"))
def test_wall(wall):
    assert wall(PACKAGE) == []
