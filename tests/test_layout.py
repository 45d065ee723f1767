"""The architecture the tree shows: src/ grouped by stage, imports flowing one way between the
packages, no module importing back into one that imports it, and nothing patched at run time."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

# what each package may import (besides itself): from the scripts' layer down to the plumbing
ALLOWED = {
    "utils": set(),
    "models": {"utils"},
    "data": {"utils"},
    "checkpoints": {"utils", "models", "data"},
    "inference": {"utils", "models", "data", "checkpoints"},
    "training": {"utils", "models", "data", "checkpoints"},
    "evaluation": {"utils", "models", "data", "checkpoints", "inference"},
    "web": {"utils", "models", "data", "checkpoints", "inference"},
}


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of src/."""
    found = {}
    for folder, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def imports_of(path: str) -> set[str]:
    """The src modules a file imports, at any depth of the file (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("src"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("src"))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports_of(path) if m in mods and m != name} for name, path in mods.items()}


def test_src_is_grouped_by_stage_and_each_package_says_what_it_holds():
    top = {f for f in os.listdir(SRC) if not f.startswith("__")}
    assert {f for f in top if os.path.isdir(os.path.join(SRC, f))} == set(ALLOWED)
    assert {f for f in top if f.endswith(".py")} == {"cli.py"}  # the scripts' shared layer
    for package in ALLOWED:
        doc = ast.get_docstring(ast.parse(open(os.path.join(SRC, package, "__init__.py")).read()))
        assert doc and "\n" not in doc.strip(), f"src/{package}/__init__.py: one line saying what it holds"


def test_imports_flow_one_way_between_packages():
    wrong = []
    for name, targets in graph().items():
        parts = name.split(".")
        if len(parts) < 3:
            continue  # src/__init__.py and src/cli.py sit above every package
        for target in targets:
            package = target.split(".")[1]
            if package != parts[1] and package not in ALLOWED[parts[1]]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_no_import_cycle():
    edges = graph()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in edges[node]:
            assert state.get(nxt) != "open", " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for node in edges:
        if node not in state:
            visit(node, [node])


def test_nothing_replaces_project_code_at_run_time():
    """Experiments run the code users run: no script or tool assigns into a project module."""
    scripts = [os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".py")]
    scripts += [os.path.join(ROOT, "tools", f) for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")]
    for path in scripts + list(modules().values()):
        tree = ast.parse(open(path).read())
        project = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                   for a in n.names if (getattr(n, "module", None) or a.name).startswith(("src", "train"))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                        assert target.value.id not in project, f"{path}: assigns {target.value.id}.{target.attr}"
