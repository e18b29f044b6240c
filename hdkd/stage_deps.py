"""The code dependencies of each DVC stage, derived from the import graph.

`python -m hdkd.stage_deps` (`make deps`) rewrites the code entries of every stage's `deps` in dvc.yaml
(the files under pipelines/ and hdkd/); data deps, params, outs and every comment stay as they are.
`--check` changes nothing and exits 1 naming each stage and each module it misses or lists in vain;
tests/test_stage_deps.py runs the same check, so a dvc.yaml that drifted from the code fails the tests.

What a stage runs: `python -m pipelines.<stage>` executes pipelines/__init__.py and pipelines/<stage>.py,
which call `hdkd.stages.run("<stage>")`. Of hdkd/stages.py that runs the module-level imports and the
imports inside `STAGES[stage]` (the other stages' imports are lazy and never run). From there every import
of every module counts, function-level ones too (any of a module's functions may run), except imports
under `if TYPE_CHECKING:`; importing a module also runs the `__init__.py` of its packages.

Not part of any stage on purpose: editing this generator reruns nothing.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdkd import stages
from hdkd.stages import STAGES

if TYPE_CHECKING:
    import grimp

ROOT = Path(__file__).resolve().parents[1]
ENTRY_PACKAGE = "pipelines"
# Modules that cannot change any stage's result, left out of the deps on purpose (module: why).
NO_RESULT = {
    "hdkd.errors": "the base class of user-facing errors: it shapes a message, never a number",
}
# Code that a module runs by its path instead of importing it (module: modules it runs).
RUN_BY_PATH = {
    "hdkd.deploy.pyfunc": ("hdkd.deploy.pyfunc_student",),  # MLflow's models-from-code logs and loads the file
}


def import_graph() -> grimp.ImportGraph:
    """The project's import graph (grimp, which import-linter uses too)."""
    import grimp

    return grimp.build_graph("hdkd", exclude_type_checking_imports=True, cache_dir=None)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_in(node: ast.AST, known: set[str], into_functions: bool = True) -> set[str]:
    """Project modules that the code under `node` imports (absolute imports; `from a import b` is the
    module a.b when b is a module)."""
    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        if not into_functions and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(child, ast.Import):
            found |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom) and child.module:
            found |= {
                f"{child.module}.{alias.name}" if f"{child.module}.{alias.name}" in known else child.module
                for alias in child.names
            }
        found |= imports_in(child, known, into_functions)
    return found & known


def module_path(module: str) -> Path:
    """The file of a module or package, relative to the repository root."""
    path = Path(*module.split("."))
    return path / "__init__.py" if (ROOT / path).is_dir() else path.with_suffix(".py")


def _parse(module: str) -> ast.Module:
    return ast.parse((ROOT / module_path(module)).read_text())


def stage_modules(stage: str, graph: grimp.ImportGraph) -> dict[str, str]:
    """Every module that `python -m pipelines.<stage>` runs, each with the chain of imports that reaches it."""
    known = set(graph.modules) | {ENTRY_PACKAGE, f"{ENTRY_PACKAGE}.{stage}"}
    function = textwrap.dedent(inspect.getsource(STAGES[stage]))
    stage_imports = imports_in(_parse(stages.__name__), known, into_functions=False) | imports_in(
        ast.parse(function), known
    )

    def imported_by(module: str) -> set[str]:
        if module == stages.__name__:
            return stage_imports
        if module.split(".")[0] == ENTRY_PACKAGE:
            return imports_in(_parse(module), known)
        return set(graph.find_modules_directly_imported_by(module)) | set(RUN_BY_PATH.get(module, ()))

    entry = f"{ENTRY_PACKAGE}.{stage}"
    chains = {entry: entry}
    queue = [entry]
    while queue:  # breadth first: each chain is a shortest one
        module = queue.pop(0)
        parts = module.split(".")
        packages = {".".join(parts[:end]) for end in range(1, len(parts))}
        for found in sorted(imported_by(module) | packages):
            if found not in chains:
                chains[found] = f"{chains[module]} -> {found}"
                queue.append(found)
    return chains


def derived_deps(stage: str, graph: grimp.ImportGraph) -> dict[str, str]:
    """The code deps of a stage (path: import chain), its entry file first, without the NO_RESULT modules."""
    chains = stage_modules(stage, graph)
    entry = f"{ENTRY_PACKAGE}.{stage}"
    ordered = [entry, *sorted(set(chains) - {entry} - NO_RESULT.keys(), key=lambda m: module_path(m).as_posix())]
    return {module_path(module).as_posix(): chains[module] for module in ordered}


def is_code(dep: str) -> bool:
    return dep.split("/")[0] in ("hdkd", ENTRY_PACKAGE)


def _listed_files(deps: Iterable[str]) -> set[str]:
    """The code files a deps list covers; a folder covers every module under it."""
    files = set()
    for dep in filter(is_code, deps):
        folder = ROOT / dep
        files |= {p.relative_to(ROOT).as_posix() for p in folder.rglob("*.py")} if folder.is_dir() else {dep}
    return files


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments, order and quotes survive
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    return yaml


def _stage_problem(name: str, stage: Any) -> str | None:
    if name not in STAGES:
        return f"{name}: not a stage of hdkd/stages.py (STAGES), so its code deps cannot be derived"
    if stage.get("cmd") != f"python -m {ENTRY_PACKAGE}.{name}":
        return f"{name}: cmd is not `python -m {ENTRY_PACKAGE}.{name}`, so its code deps cannot be derived"
    return None


def check(dvc_yaml: Path) -> list[str]:
    """One line per stage and module that dvc.yaml's deps miss or list in vain; empty when up to date."""
    graph = import_graph()
    problems = []
    for name, stage in _yaml().load(dvc_yaml)["stages"].items():
        if problem := _stage_problem(name, stage):
            problems.append(problem)
            continue
        derived, listed = derived_deps(name, graph), _listed_files(stage.get("deps", []))
        problems += [
            f"{name}: imports {path} ({chain}) but its deps do not list it"
            for path, chain in derived.items()
            if path not in listed
        ]
        problems += [f"{name}: lists {path}, which it does not import" for path in sorted(listed - derived.keys())]
    return problems


def write(dvc_yaml: Path) -> list[str]:
    """Rewrite the code deps of every stage in place; returns the stages whose deps changed."""
    yaml, graph = _yaml(), import_graph()
    document = yaml.load(dvc_yaml)
    changed = []
    for name, stage in document["stages"].items():
        if problem := _stage_problem(name, stage):
            raise SystemExit(f"error: {dvc_yaml}: {problem}")
        deps = stage.setdefault("deps", [])
        derived = list(derived_deps(name, graph))
        if [dep for dep in deps if is_code(dep)] == derived:
            continue
        for index in reversed(range(len(deps))):  # ruamel moves the comments of the kept entries along
            if is_code(deps[index]):
                del deps[index]
        for index, path in enumerate(derived):
            deps.insert(index, path)
        changed.append(name)
    if changed:
        yaml.dump(document, dvc_yaml)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hdkd.stage_deps", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if dvc.yaml is out of date")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dvc_yaml)
        for problem in problems:
            print(f"{args.dvc_yaml}: {problem}", file=sys.stderr)
        if problems:
            print("run `make deps` to derive the code deps again", file=sys.stderr)
        return 1 if problems else 0
    changed = write(args.dvc_yaml)
    print(f"{args.dvc_yaml}: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
