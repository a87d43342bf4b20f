"""The repository's shape: layers that import only the layers below them, no import cycle
among its modules, and the models importable from anywhere with only torch installed."""

import ast
import os
import shutil
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

import pytest
from conftest import REPO_ROOT

SCRIPTS = ("train.py", "eval.py", "predict.py", "bench.py", "ablate.py", "hubconf.py")
MODULES = ("utils.py",)
# Bottom to top: each layer may import itself and the layers before it, never one after it.
# models/ is a backbone for other projects: it imports nothing of this repository.
LAYERS = ("utils", "models", "dataloader", "training", "downstream", "tools")
SELF_CONTAINED = {"models"}


def module_name(path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, object]:
    paths = [REPO_ROOT / name for name in (*SCRIPTS, *MODULES) if (REPO_ROOT / name).exists()]
    for package in ("models", "dataloader", "training", "downstream", "tools", "data"):
        paths += sorted((REPO_ROOT / package).rglob("*.py"))
    return {module_name(path): path for path in paths}


def imports_of(name: str, path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a package counts as its __init__)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        # A module named by a dotted string (importlib, a table of lazy names) is imported
        # too; a plain word ("train", a split's name) is no module name.
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            targets = [node.value]
        elif isinstance(node, ast.Import):
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


def layer_of(module: str) -> str:
    """The layer of a module: its package, or the script layer above every package."""
    top = module.partition(".")[0]
    return top if top in LAYERS else "scripts"


def allowed_layers(layer: str) -> set[str]:
    if layer in SELF_CONTAINED:
        return {layer}
    if layer == "scripts":
        return {*LAYERS, "scripts"}
    return set(LAYERS[: LAYERS.index(layer) + 1])


def test_no_layer_imports_a_layer_above_it():
    modules = project_modules()
    assert {layer_of(name) for name in modules} == {*LAYERS, "scripts"}
    wrong = [
        f"{name} imports {target}"
        for name, path in modules.items()
        for target in sorted(imports_of(name, path, set(modules)))
        if layer_of(target) not in allowed_layers(layer_of(name))
    ]
    assert not wrong, "; ".join(wrong)


def test_the_layer_rule_sees_an_import_upwards(tmp_path):
    package = tmp_path / "models"
    package.mkdir()
    (package / "helper.py").write_text(
        "from training.cli import run_cli\nimport utils\nLAZY = {'x': 'dataloader.loader'}\n"
    )
    known = {"training.cli", "utils", "dataloader.loader"}
    found = imports_of("models.helper", package / "helper.py", known)
    assert found == known
    assert not {layer_of(t) for t in found} <= allowed_layers("models")


@pytest.mark.slow
def test_models_import_with_only_torch_besides(tmp_path):
    """models/ alone, copied away from the repository, builds a network: nothing outside it
    (utils.py, numpy, Pillow) is needed."""
    shutil.copytree(
        REPO_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__")
    )
    code = (
        "import sys; sys.modules.update(numpy=None, PIL=None, utils=None, tqdm=None); "
        "import models, torch; m = models.build_model('fishnet99', width=0.25).eval(); "
        "print(tuple(m(torch.zeros(1, 3, 32, 32)).shape))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 10)"


@pytest.mark.slow
def test_the_scripts_start_without_the_compiler():
    """torch._dynamo takes seconds to import; only a run that compiles may pay for it."""
    code = "import sys, train, eval, predict; print('torch._dynamo' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
