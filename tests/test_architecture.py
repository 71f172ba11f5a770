"""The layout's rules, checked on the source: which package may import which, what the model's remote-code
files may import, and which modules sit at the top level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

ENTRY_POINTS = {"eval_cir", "train_accelerate"}
# package -> the packages of ours it may import (itself always). Read as: data below retrieval below evaluation
# below training and the app; the model beside data, importing nothing of ours; facap_io under everything.
ALLOWED = {
    "facap_io": set(),
    "modeling_fashionblip2": {"facap_io"},  # tooling modules only; remote-code files: nothing (see below)
    "facap_dataset": {"facap_io"},
    "facap_retrieval": {"facap_io", "facap_dataset"},
    "facap_eval": {"facap_io", "facap_dataset", "facap_retrieval", "modeling_fashionblip2"},
    "facap_train": {"facap_io", "facap_dataset", "facap_retrieval", "facap_eval", "modeling_fashionblip2"},
    "facap_app": {"facap_io", "facap_dataset", "facap_retrieval", "facap_eval", "modeling_fashionblip2"},
    "eval_cir": {"facap_io", "facap_dataset", "facap_retrieval", "facap_eval", "modeling_fashionblip2"},
    "train_accelerate": {"facap_io", "facap_dataset", "facap_retrieval", "facap_eval", "facap_train",
                         "modeling_fashionblip2"},
    "app": {"facap_app"},
    # the top of the graph: runs the entry points as subprocesses and checks a plan with their own parsers
    "facap_paper": {"facap_io", "facap_dataset", "modeling_fashionblip2", "eval_cir", "train_accelerate"},
}
OURS = set(ALLOWED)
REMOTE_CODE_PREFIXES = ("configuration_", "modeling_", "processing_")


def _sources(unit: str) -> list[Path]:
    folder = REPO_ROOT / unit
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [REPO_ROOT / f"{unit}.py"]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(top-level module, level) of every import statement, lazy ones inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(((node.module or "").split(".")[0], node.level))
    return found


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_dependencies_flow_one_way(unit):
    if not any(path.exists() for path in _sources(unit)):
        pytest.skip(f"{unit} does not exist")
    wrong = [
        f"{path.relative_to(REPO_ROOT)} imports {module}"
        for path in _sources(unit)
        for module, level in _imports(path)
        if level == 0 and module in OURS and module != unit and module not in ALLOWED[unit]
    ]
    assert not wrong, "imports against the dependency direction: " + "; ".join(wrong)


def _remote_code_files() -> list[Path]:
    """The model's files copied next to saved weights: the three remote-code modules and the flat siblings they
    import (transformers copies exactly what `from .sibling import X` names)."""
    folder = REPO_ROOT / "modeling_fashionblip2"
    todo = [p for p in folder.glob("*.py") if p.name.startswith(REMOTE_CODE_PREFIXES)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(folder / f"{node.module}.py")
    return sorted(seen)


def test_remote_code_files_import_nothing_of_ours_and_only_flat_siblings():
    files = _remote_code_files()
    assert {p.name for p in files} >= {"configuration_fashionblip2.py", "modeling_fashionblip2.py"}
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and (node.level > 1 or not node.module or "." in node.module):
                wrong.append(f"{path.name}: from {'.' * node.level}{node.module or ''} import ...")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                wrong += [f"{path.name} imports {m}" for m, level in _imports_of(node) if level == 0 and m in OURS]
    assert not wrong, "remote code must be flat and self-contained: " + "; ".join(wrong)


def _imports_of(node) -> list[tuple[str, int]]:
    if isinstance(node, ast.Import):
        return [(alias.name.split(".")[0], 0) for alias in node.names]
    return [((node.module or "").split(".")[0], node.level)]


def test_shipped_files_cite_no_unshipped_document():
    shipped = [p for unit in OURS for p in _sources(unit) if p.exists()]
    citing = [str(p.relative_to(REPO_ROOT)) for p in shipped if "DESIGN.md" in p.read_text()]
    assert not citing, f"shipped files cite DESIGN.md, which is not shipped: {citing}"


def test_only_entry_points_are_loose_modules():
    loose = {p.stem for p in REPO_ROOT.glob("*.py")} - ENTRY_POINTS - {"app", "setup"}
    assert not loose, f"library modules at the repository root (move them into a package): {sorted(loose)}"
