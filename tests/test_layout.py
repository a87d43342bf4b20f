"""The repository's shape: no import cycle among its modules, and the models importable
from anywhere with the repository on PYTHONPATH."""

import ast
import os
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

from conftest import REPO_ROOT

SCRIPTS = ("train.py", "eval.py", "predict.py", "bench.py", "ablate.py", "hubconf.py")
MODULES = ("utils.py",)


def module_name(path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, object]:
    paths = [REPO_ROOT / name for name in (*SCRIPTS, *MODULES) if (REPO_ROOT / name).exists()]
    for package in ("models", "dataloader", "training", "tools", "data"):
        paths += sorted((REPO_ROOT / package).rglob("*.py"))
    return {module_name(path): path for path in paths}


def imports_of(name: str, path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a package counts as its __init__)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = project_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    scripts = {name for name in graph if f"{name}.py" in SCRIPTS}
    library = {name: deps for name, deps in graph.items() if name not in scripts}
    assert all(not deps & scripts for deps in library.values()), "the library imports a script"
    assert all(not graph[s] & scripts for s in scripts), "a script imports another script"


def test_models_import_from_another_folder(tmp_path):
    code = (
        "import models, torch; m = models.build_model('fishnet99', width=0.25).eval(); "
        "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 10)"
