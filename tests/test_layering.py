"""The package's import layering (README, "Layout"): no import cycle between modules, and no
module imports one of a higher layer. Every import counts, at the top of a file or inside a
function."""

from __future__ import annotations

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "metarm_jax"

# Bottom to top. A module may import modules of its own layer or below, never above. A part is a
# folder of the package (``runtime``) or, where a folder spans layers, one of its modules
# (``config.defaults``); a module belongs to the longest part that names it.
LAYERS = (
    ("runtime", "config.defaults", "core"),
    ("sharding", "config.stages"),
    ("models",),
    ("data",),
    ("generation",),
    ("config",),
    ("eval",),
    ("train",),
    ("inspect_stage",),
    ("rlhf",),
    ("main",),
)
# Parts that may import nothing of the package outside themselves.
SELF_CONTAINED = ("core", "runtime", "config.defaults")


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """{module: package modules it imports} for every .py file under ``root`` (a package)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != top:
                    continue
                for a in node.names:  # `from pkg import sub` imports the submodule sub
                    sub = f"{mod}.{a.name}"
                    targets.add(sub if sub in files else mod)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _part(module: str) -> str:
    """The longest part of LAYERS that names the module: metarm_jax.train.ppo -> train,
    metarm_jax.config.defaults -> config.defaults, metarm_jax.config.lib -> config; metarm_jax
    -> '' (the package's own __init__)."""
    parts = module.split(".")[1:]
    known = {p for layer in LAYERS for p in layer}
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return parts[0] if parts else ""


def layer_of(module: str) -> int:
    part = _part(module)
    if part == "":
        return -1
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module}: in no layer of tests/test_layering.py; add it to LAYERS.")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run up the layers, or out of a self-contained part."""
    out = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = layer_of(src), layer_of(dst)
            if a >= 0 and b > a:
                out.append(f"{src} (layer {a}) imports {dst} (layer {b})")
            elif _part(src) in SELF_CONTAINED and _part(dst) != _part(src):
                out.append(f"{src} ({_part(src)} is self-contained) imports {dst}")
    return out


def test_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_imports_follow_the_layers():
    graph = import_graph(PACKAGE)
    assert {_part(m) for m in graph} - {""} <= {p for layer in LAYERS for p in layer}
    bad = violations(graph)
    assert not bad, "imports against the layering (README, Layout):\n" + "\n".join(bad)


def test_the_checks_catch_a_back_import_and_a_cycle(tmp_path):
    """The checker itself: on a small package with one back-import it reports both problems."""
    pkg = tmp_path / "metarm_jax"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "losses.py").write_text("from metarm_jax import rlhf\n")
    (pkg / "rlhf.py").write_text("def f():\n    from metarm_jax.core import losses\n")
    graph = import_graph(pkg)
    assert graph["metarm_jax.core.losses"] == {"metarm_jax.rlhf"}
    assert cycles(graph) == [["metarm_jax.core.losses", "metarm_jax.rlhf"]]
    assert any("core.losses (layer 0) imports metarm_jax.rlhf" in v for v in violations(graph))


def test_core_and_eval_keep_to_themselves():
    """The named rules: core imports nothing else of the package; eval does not import train."""
    graph = import_graph(PACKAGE)
    for module, targets in graph.items():
        if _part(module) == "core":
            assert all(_part(t) == "core" for t in targets), (module, targets)
        if _part(module) == "eval":
            assert not any(_part(t) == "train" for t in targets), (module, targets)


def test_the_readme_layout_names_every_module():
    """README's Layout is drawn from the tree: every module file of the package (and every folder
    of it) is named there, and it names no module that is gone."""
    readme = (PACKAGE.parent / "README.md").read_text()
    start = readme.index("## Layout")
    first = readme.index("```\nmetarm_jax/", start) + 4
    block = readme[first : readme.index("\n```\n", first)]
    files = {
        p.name
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "schemas" not in p.parts
    }
    missing = sorted(f for f in files if f not in block)
    assert not missing, f"README, Layout: add {missing}"
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert all(f"{d}/" in block for d in folders), folders
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", block))
    gone = sorted(
        n for n in named - files if not any(PACKAGE.parent.rglob(f"{n}")) and n != "__init__.py"
    )
    assert not gone, f"README, Layout names modules that are gone: {gone}"
