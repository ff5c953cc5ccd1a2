"""The packages form layers, read from their import statements (ast, nothing imported): vaegan.runtime imports none
of the others, vaegan.train only the torch-free runtime (the image contract, runtime/contract.py, and the one
preprocessing function, runtime/io.py), vaegan.export builds on both, vaegan.adaptive on all three, vaegan.serve on
vaegan.runtime, and nothing imports vaegan.adaptive or vaegan.serve; so no import cycle between the packages."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"vaegan": "src/vaegan", "train": "train", "runtime": "runtime", "export": "export", "adaptive": "adaptive",
           "serve": "serve"}
MAY_IMPORT = {"vaegan": set(), "runtime": set(), "train": {"runtime"}, "export": {"train", "runtime"},
              "adaptive": {"train", "export", "runtime"}, "serve": {"runtime"}}


def imported_packages(path: Path, package: str) -> set[str]:
    """The vaegan packages (train, runtime, ...) that a module of ``package`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:  # relative imports stay inside the package (checked below)
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "vaegan" and len(parts) > 1 and parts[1] in FOLDERS:
                found.add(parts[1])
            elif parts[0] in FOLDERS and parts[0] != "vaegan":  # a bare `import train`: not the installed package
                found.add(f"bare {parts[0]}")
    return found - {package}


def test_relative_imports_do_not_leave_their_package():
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            depth = len(path.relative_to(ROOT / folder).parts) - 1  # folders below the package root
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level - 1 <= depth, f"{path.relative_to(ROOT)}: `from {'.' * node.level}...` leaves " \
                                                    f"vaegan.{package}"


@pytest.mark.parametrize("package", [p for p in FOLDERS if p != "vaegan"])
def test_each_package_imports_only_the_layers_below_it(package):
    bad = {}
    for path in (ROOT / FOLDERS[package]).rglob("*.py"):
        extra = imported_packages(path, package) - MAY_IMPORT[package]
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"vaegan.{package} may import only {sorted(MAY_IMPORT[package]) or 'none of the others'}: {bad}"


def test_the_top_package_imports_no_subpackage():
    for path in (ROOT / FOLDERS["vaegan"]).rglob("*.py"):
        assert not imported_packages(path, "vaegan"), path


def test_the_allowed_imports_have_no_cycle():
    done = set()

    def visit(p, stack):
        assert p not in stack, f"import cycle: {' -> '.join(stack + [p])}"
        if p in done:
            return
        for q in MAY_IMPORT[p]:
            visit(q, stack + [p])
        done.add(p)

    for p in MAY_IMPORT:
        visit(p, [])
    assert done == set(MAY_IMPORT)
