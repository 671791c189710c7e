"""The architecture's rules, counted from the tree (docs/architecture.md states them).

- a sealed backend: outside `backend_ndarray/` nothing reads `.native`, calls `NDArray._wrap`
  or touches an NDArray's `._array`;
- one gradient rule per op: only fused ops (those with forward state) carry a second backward
  body (`backward_arrays` beside `gradient_composed`), and there are at most 12 of them;
  nothing defines `gradient_nd` any more;
- no import cycle between needle modules except autograd <-> ops (imports inside functions
  count);
- no file in python/needle over 600 lines; `needle.train` is a package.
"""
import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "python", "needle")
ROOT = os.path.normpath(ROOT)


def _sources():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                yield os.path.relpath(path, ROOT), open(path, encoding="utf-8").read()


def _module_name(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["needle"] + parts)


def test_no_native_arrays_outside_the_backend():
    offenders = []
    pattern = re.compile(r"\.native\b|_wrap\(|\._array\b")
    for rel, src in _sources():
        if rel.startswith("backend_ndarray" + os.sep):
            continue
        for i, line in enumerate(src.splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "native arrays used above the backend:\n" + "\n".join(offenders)


def _classes_with(src, names):
    tree = ast.parse(src)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if names <= methods:
                out.append(node.name)
    return out


def test_one_gradient_rule_per_op():
    twice, legacy = [], []
    for rel, src in _sources():
        twice += [f"{rel}:{c}" for c in _classes_with(src, {"backward_arrays",
                                                            "gradient_composed"})]
        legacy += [f"{rel}:{c}" for c in _classes_with(src, {"gradient_nd"})]
    assert not legacy, f"classes still carrying gradient_nd: {legacy}"
    assert len(twice) <= 12, f"{len(twice)} op classes with two backward bodies: {twice}"


def _imports(rel, src):
    """needle modules imported anywhere in the file (inside functions too)."""
    mod = _module_name(rel)
    package = mod if rel.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("needle")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("needle"):
                continue
            # `from . import ops` imports the module needle.ops (its package is already being
            # imported); `from .x import name` imports needle.x
            out |= {f"{target}.{a.name}" for a in node.names}
            if node.module:
                out.add(target)
    return out


def _graph():
    mods = {_module_name(rel): src for rel, src in _sources()}
    names = set(mods)
    edges = {}
    for rel, src in _sources():
        mod = _module_name(rel)
        targets = set()
        for t in _imports(rel, src):
            # importing needle.a.b runs needle.a's __init__ too; count the deepest module known
            while t and t not in names:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != mod:
                targets.add(t)
        edges[mod] = targets
    return edges


def _collapse(mod):
    """Count a module's edges as its top-level unit's (needle.ops.ops_conv -> needle.ops).
    needle.distributed spans two layers on purpose (MPI primitives below nn, the trainer
    plugin above it), so its modules stay themselves."""
    parts = mod.split(".")
    return ".".join(parts[:3] if parts[1:2] == ["distributed"] else parts[:2])


def test_no_import_cycles_except_autograd_and_ops():
    edges = _graph()
    units = {}
    for mod, targets in edges.items():
        u = _collapse(mod)
        units.setdefault(u, set()).update(_collapse(t) for t in targets if _collapse(t) != u)
    allowed = {frozenset({"needle.autograd", "needle.ops"})}
    # Tarjan's strongly connected components over the units
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v, counter=[0]):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in units.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(frozenset(comp))

    for v in sorted(units):
        if v not in index:
            visit(v)
    bad = [sorted(c) for c in sccs if c not in allowed]
    assert not bad, f"import cycles: {bad}"


def test_no_file_over_600_lines():
    long = [f"{rel}: {src.count(chr(10))} lines" for rel, src in _sources()
            if src.count("\n") > 600]
    assert not long, long


@pytest.mark.parametrize("package", ["train", "distributed"])
def test_top_of_the_house_is_packages(package):
    assert os.path.isfile(os.path.join(ROOT, package, "__init__.py"))
