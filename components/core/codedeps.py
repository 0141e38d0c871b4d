"""Each stage's code deps in dvc.yaml, derived from what its module imports.

An edit to any module a stage runs must make DVC (and the flow's cache key, which hashes the same
deps) rerun that stage and the stages after it, and no other. So a stage's code deps are exactly
the project files its module imports, directly or not (function-local imports included), plus
the folders those modules declare in ``DATA_DIRS`` (data files, modules loaded by path).
``tests/test_architecture.py`` checks dvc.yaml against this; after moving an import:

    python -m components.core.codedeps --write

No stage imports this module, so editing it reruns nothing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from components.core.config import ROOT
from components.core.pipeline import DVC_YAML, _stages, stage, stage_deps, stages

CODE_ROOTS = ("components", "flows")


def _module_file(module: str, root: Path) -> Path | None:
    base = root / module.replace(".", "/")
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _only_docstring(tree) -> bool:
    body = tree.body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body) or not body


def _imports(tree, module: str) -> set[str]:
    """Project modules a module imports, anywhere in it (function-local imports included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in CODE_ROOTS}


def _data_dirs(tree) -> tuple[str, ...]:
    """A module's ``DATA_DIRS = (...)``: folders beside it that it reads (data, modules loaded by path)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DATA_DIRS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    return ()


def code_deps(module: str, root: Path = ROOT) -> list[str]:
    """Every project file ``module`` runs (its transitive imports), plus the folders they declare in
    ``DATA_DIRS``; package ``__init__.py`` files that hold only a docstring are left out. Paths are
    relative to ``root``, sorted."""
    seen: set[str] = set()
    deps: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        # importing a.b.c runs a/__init__.py and a/b/__init__.py too
        for i in range(1, name.count(".") + 2):
            part = ".".join(name.split(".")[:i])
            if part in seen:
                continue
            seen.add(part)
            f = _module_file(part, root)
            if f is None:
                continue
            tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
            if not (f.name == "__init__.py" and _only_docstring(tree)):
                deps.add(str(f.relative_to(root)))
            deps |= {str((f.parent / d).relative_to(root)) for d in _data_dirs(tree)}
            todo += sorted(_imports(tree, part))
    return sorted(deps)


def stage_module(name: str, root: Path = ROOT) -> str:
    """The module a stage's ``cmd`` runs (``python -m <module> ...``)."""
    cmds = stage(name, root)["cmd"]
    for cmd in cmds if isinstance(cmds, list) else [cmds]:
        parts = str(cmd).split()
        if len(parts) >= 3 and parts[0] in ("python", "python3") and parts[1] == "-m":
            return parts[2]
    raise ValueError(f"{root / DVC_YAML}: stage {name!r}: cmd is not `python -m <module>`")


def declared_code_deps(name: str, root: Path = ROOT) -> list[str]:
    """The code deps dvc.yaml lists for a stage (those under components/ or flows/)."""
    return sorted(d for d in stage_deps(name, root) if d.split("/")[0] in CODE_ROOTS)


def write_code_deps(root: Path = ROOT) -> list[str]:
    """Rewrite each stage's code deps in dvc.yaml to ``code_deps`` (comments kept); returns the stages changed."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)  # dvc.yaml's own style
    path = root / DVC_YAML
    doc = rt.load(path.read_text(encoding="utf-8"))
    changed = []
    for name, body in doc["stages"].items():
        want = code_deps(stage_module(name, root), root)
        deps = body.get("deps") or []
        if sorted(d for d in deps if str(d).split("/")[0] in CODE_ROOTS) == want:
            continue
        keep = [d for d in deps if str(d).split("/")[0] not in CODE_ROOTS and d != "profiles"]
        for i in reversed(range(len(deps))):
            del deps[i]
        deps.extend(keep + want + ["profiles"])  # every stage reads its profile's deltas
        changed.append(name)
    if changed:
        with open(path, "w", encoding="utf-8") as f:
            rt.dump(doc, f)
        _stages.cache_clear()
    return changed


if __name__ == "__main__":
    # python -m components.core.codedeps [--write]: check (or rewrite) every stage's code deps in dvc.yaml
    write = "--write" in sys.argv[1:]
    if write:
        print("rewrote the code deps of: " + (", ".join(write_code_deps()) or "no stage (all current)"))
    else:
        stale = [s for s in stages() if declared_code_deps(s) != code_deps(stage_module(s))]
        print("code deps current" if not stale else f"stale code deps in dvc.yaml: {', '.join(stale)} "
              "(python -m components.core.codedeps --write)")
        sys.exit(1 if stale else 0)
