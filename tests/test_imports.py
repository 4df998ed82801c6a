"""The house's floors and its framework boundaries, read from the code itself.

Every .py file's imports are parsed with `ast` (lazy imports inside functions included: they are
imports all the same) into a graph of packages:

- ground floor: core, shardset, benchdata, segmodel, masking, scoring. They import core and nothing
  else of this project (core imports none of them).
- between them, on the TensorFlow side: gans (the GANs and their direction files), which imports the
  ground floor only: what the generator and the finder share sits below both.
- upper floor: generator, finder, trainer, evaluator, segmenter. Each may import the floors below,
  none imports another upper package (what two tools share lies below them: the trainer and the
  evaluator score through scoring).
- experiments sits on top and may import anything.

And the frameworks: TensorFlow only in gans, the generator and the finder; torch nowhere in core,
shardset, benchdata, masking or the TensorFlow side (it reads .pth files with gans.torchfile); the segmenter and
segmodel.runtime load torch only for a checkpoint, so `segment --model` runs without it. Importing a
package's modules in a fresh interpreter proves the same at run time, and a trainer-only install's
declared dependencies name no TensorFlow."""
from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GROUND = ("core", "shardset", "benchdata", "segmodel", "masking", "scoring")
MIDDLE = ("gans",)  # the TensorFlow side's shared floor, below the generator and the finder
UPPER = ("generator", "finder", "trainer", "evaluator", "segmenter")
TOP = ("experiments",)
PACKAGES = GROUND + MIDDLE + UPPER + TOP
TF_SIDE = ("gans", "generator", "finder")
TF_MODULES = ("tensorflow", "tensorflow_hub", "tf_keras", "keras")


def _imports(path: Path, package: str) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file at `path`, a module of `package`."""
    tree = ast.parse(path.read_text(), str(path))
    here = [package, *path.relative_to(REPO / package).parts[:-1]]  # the file's own (sub)package
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import mod` may name a module: keep both the package and pkg.mod
            out.append((mod, node.lineno))
            out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]
    return out


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported module of another package of ours) -> where."""
    edges: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in _files(package):
            for mod, line in _imports(path, package):
                top = mod.split(".")[0]
                if top in PACKAGES and top != package:
                    edges.setdefault((package, mod), []).append(f"{path.relative_to(REPO)}:{line}")
    return edges


EDGES = _edges()


def _package_graph() -> dict[str, set[str]]:
    graph = {p: set() for p in PACKAGES}
    for (src, mod) in EDGES:
        graph[src].add(mod.split(".")[0])
    return graph


def test_the_parser_sees_lazy_and_relative_imports():
    """The graph below would be blind without these: the trainer imports scoring at module level,
    and benchdata's modules import each other relatively."""
    assert ("trainer", "scoring") in EDGES
    mods = {m for m, _ in _imports(REPO / "benchdata" / "predictions.py", "benchdata")}
    assert "benchdata.datasets" in mods and "benchdata.sizing" in mods
    mods = {m for m, _ in _imports(REPO / "generator" / "inputs.py", "generator")}
    assert "benchdata.io" in mods  # imported inside a function


@pytest.mark.parametrize("package", GROUND)
def test_the_ground_floor_imports_only_core(package):
    bad = {mod: where for (src, mod), where in EDGES.items()
           if src == package and mod.split(".")[0] != "core"}
    assert not bad, f"{package} imports {bad}"


@pytest.mark.parametrize("package", MIDDLE)
def test_the_middle_floor_imports_only_the_ground_floor(package):
    bad = {mod: where for (src, mod), where in EDGES.items()
           if src == package and mod.split(".")[0] not in GROUND}
    assert not bad, f"{package} imports {bad}"


def test_the_generator_and_the_finder_share_only_what_lies_below_them():
    assert not [k for k in EDGES if k[0] in ("generator", "finder") and k[1].split(".")[0] in ("generator", "finder")]
    assert ("finder", "gans.loader") in EDGES and ("generator", "gans.loader") in EDGES


def test_core_imports_no_other_package():
    assert not [k for k in EDGES if k[0] == "core"]


@pytest.mark.parametrize("package", UPPER)
def test_no_upper_package_imports_a_sibling(package):
    bad = {mod: where for (src, mod), where in EDGES.items()
           if src == package and mod.split(".")[0] in UPPER + TOP}
    assert not bad, f"{package} imports {bad}"


def test_the_package_graph_has_no_cycle():
    graph = _package_graph()
    state: dict[str, int] = {}

    def visit(p: str, path: list[str]) -> None:
        state[p] = 1
        for q in graph[p]:
            assert state.get(q) != 1, f"import cycle: {' -> '.join(path + [p, q])}"
            if q not in state:
                visit(q, path + [p])
        state[p] = 2

    for p in PACKAGES:
        if p not in state:
            visit(p, [])


def _framework_imports(package: str, names: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(REPO)}:{line} {mod}" for path in _files(package)
            for mod, line in _imports(path, package) if mod.split(".")[0] in names]


@pytest.mark.parametrize("package", [p for p in PACKAGES if p not in (*TF_SIDE, "experiments")])
def test_no_tensorflow_outside_the_tensorflow_side(package):
    assert not _framework_imports(package, TF_MODULES)


@pytest.mark.parametrize("package", ["core", "shardset", "benchdata", "masking", *TF_SIDE])
def test_no_torch_in_core_shardset_benchdata_masking_or_the_tensorflow_side(package):
    assert not _framework_imports(package, ("torch", "safetensors", "torchvision"))


# --------------------------------------------------------------------------- at run time


def _modules(package: str) -> list[str]:
    pkg_dir = REPO / package
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(pkg_dir)])]


def _frameworks_after_importing(modules: list[str]) -> list[str]:
    """Which of torch and tensorflow are in sys.modules after importing `modules` in a fresh
    interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in ('torch', 'tensorflow') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", ["shardset", "trainer", "evaluator", "segmodel", "benchdata", "core", "segmenter",
                                     "scoring"])
def test_package_never_imports_tensorflow(package):
    assert "tensorflow" not in _frameworks_after_importing(_modules(package)), f"{package} imported tensorflow"


@pytest.mark.parametrize("package", ["core", "shardset", "benchdata", "masking", "scoring"])
def test_ground_floor_data_packages_import_neither_framework(package):
    assert _frameworks_after_importing(_modules(package)) == []


@pytest.mark.parametrize("package", TF_SIDE)
def test_the_tensorflow_side_imports_no_torch(package):
    """A `[gen]` install has no torch: .pth files are read with gans.torchfile."""
    assert "torch" not in _frameworks_after_importing(_modules(package))


def test_the_segmenter_and_the_model_runtime_load_no_torch():
    """`segment --model` runs on onnxruntime where torch is not installed: importing the segmenter's
    modules and segmodel.runtime loads no framework (torch comes only with a checkpoint)."""
    assert _frameworks_after_importing(_modules("segmenter") + ["segmodel.runtime"]) == []


def test_the_metrics_and_the_quantisation_rule_cost_no_torch():
    """scoring's modules and segmodel.inference (whose probability_to_uint8, core.maps', scoring uses
    too) stay numpy."""
    assert _frameworks_after_importing(_modules("scoring") + ["segmodel.inference"]) == []


def _closure(extras: list[str]) -> list[str]:
    """Requirement strings a `pip install .[extras]` asks for, following self-references."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    name = project["name"]
    reqs, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project["optional-dependencies"][extra]:
            if req.startswith(f"{name}["):
                todo += req[len(name) + 1 : req.index("]")].split(",")
            else:
                reqs.append(req)
    return reqs


def test_trainer_only_install_pulls_no_tensorflow():
    reqs = _closure(["train", "eval"])
    assert any(r.startswith("torch") for r in reqs)
    assert not [r for r in reqs if "tensorflow" in r.lower() or r.lower().startswith("tf-")]
    # and the generator extra really does carry it, so the check above can fail
    assert any(r.startswith("tensorflow") for r in _closure(["gen"]))


def test_every_package_is_installed():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.rstrip("*") for p in include) == sorted(PACKAGES)


def _module_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (lazy imports included). An import of one's own
    package (its __init__) is left out: importing any module runs its packages' __init__ anyway."""
    modules = {}
    for package in PACKAGES:
        for path in _files(package):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".")[0]
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {m for m, _ in _imports(path, package) if m in modules and m != name and m not in ancestors}
    return graph


def test_no_module_imports_itself_through_another():
    """No circle between modules either (metrics <-> protocols and checkpoint <-> runtime were two)."""
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for q in sorted(graph[m]):
            assert state.get(q) != 1, f"import cycle: {' -> '.join(path + [m, q])}"
            if q not in state:
                visit(q, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert len(graph) > 80  # the walk saw the whole house (93 modules when written)
