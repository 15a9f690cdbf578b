"""The import boundaries of the architecture, read from the source with `ast` (nothing is imported):

- A1111's own modules (`modules.*`, `ldm`, `sgm`, the Lora extension's `networks`, `launch`, …) only under
  lora_trainer/webui/: the engine and the dataset preparation run without a WebUI;
- gradio only in the tab modules;
- no import cycles among lora_trainer's modules, counting imports inside functions (lazy) and under
  `if TYPE_CHECKING:` as well: a lazy import hides a cycle from start-up, not from the design;
- scripts/ (what the WebUI runs at start-up) imports nothing of ours but lora_trainer.webui.register.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "lora_trainer"

# Top-level names A1111 v1.10.1 puts on sys.path (its repo, repositories/*, the built-in Lora extension).
A1111_TOP_LEVEL = {"modules", "ldm", "sgm", "k_diffusion", "launch", "webui", "networks", "network",
                   "lora", "lora_patches", "extra_networks_lora", "ui_extra_networks_lora", "lyco_helpers"}
WEBUI_PACKAGE = f"{PACKAGE}.webui"
TAB_MODULES = {f"{PACKAGE}.webui.tab", f"{PACKAGE}.webui.dataset_tab"}
SCRIPT_MAY_IMPORT = {f"{PACKAGE}.webui.register"}

# Import edges (importer, imported) allowed to close a cycle, each with the reason it is needed.
# None today; an entry here must say why the cycle cannot be cut.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str      # dotted module name, or a path for scripts/
    target: str        # absolute dotted name of what is imported
    line: int
    lazy: bool         # inside a function


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports_in(path: Path, ours: set[str], root: Path = ROOT) -> list[Import]:
    """Every import statement in the file, wherever it stands, with relative names resolved.
    `from pkg import sub` where pkg.sub is one of our modules counts as importing pkg.sub."""
    name = module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []

    def visit(node, lazy):
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(name, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package_of(name, path).split(".")
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                subs = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in ours]
                if subs:
                    found.extend(Import(name, s, child.lineno, lazy) for s in subs)
                if len(subs) < len(child.names):
                    found.append(Import(name, target, child.lineno, lazy))
            visit(child, inner)
    visit(tree, False)
    return found


def our_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def all_imports() -> list[Import]:
    files = our_files()
    return [imp for path in files.values() for imp in imports_in(path, set(files))]


def top(name: str) -> str:
    return name.partition(".")[0]


def where(imp: Import) -> str:
    return f"{imp.importer}:{imp.line} imports {imp.target}" + (" (inside a function)" if imp.lazy else "")


def test_the_import_reader_sees_relative_lazy_and_submodule_imports(tmp_path):
    pkg = tmp_path / PACKAGE / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("from ..x import y\nimport gradio as gr\n\ndef f():\n    from .b import c\n"
                              "    from modules import shared\n")
    (pkg / "b.py").write_text("")
    ours = {f"{PACKAGE}.sub", f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b"}
    got = {(i.target, i.lazy) for i in imports_in(pkg / "a.py", ours, tmp_path)}
    assert got == {(f"{PACKAGE}.x", False), ("gradio", False), (f"{PACKAGE}.sub.b", True), ("modules", True)}
    assert {i.target for i in imports_in(pkg / "__init__.py", ours, tmp_path)} == {f"{PACKAGE}.sub.b"}


def test_a1111_is_imported_only_under_webui():
    outside = [where(i) for i in all_imports()
               if top(i.target) in A1111_TOP_LEVEL
               and not (i.importer == WEBUI_PACKAGE or i.importer.startswith(WEBUI_PACKAGE + "."))]
    assert not outside, "A1111 modules imported outside lora_trainer/webui/:\n" + "\n".join(outside)


def test_gradio_is_imported_only_by_the_tab_modules():
    outside = [where(i) for i in all_imports() if top(i.target) == "gradio" and i.importer not in TAB_MODULES]
    assert not outside, f"gradio imported outside {sorted(TAB_MODULES)}:\n" + "\n".join(outside)


def test_the_tab_modules_exist():
    files = our_files()
    assert TAB_MODULES <= set(files), "update TAB_MODULES: " + ", ".join(sorted(TAB_MODULES - set(files)))


def find_cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a list."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, {}):
                result.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return result


def test_find_cycles_reports_each_cycle_once_and_ignores_chains():
    edges = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None, "d": None}, "d": {}, "e": {"d": None}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b": None}, "b": {}}) == []


def test_no_import_cycles_among_our_modules():
    files = our_files()
    edges: dict[str, dict[str, Import]] = {}
    for imp in all_imports():
        if imp.target in files and imp.target != imp.importer \
                and (imp.importer, imp.target) not in ALLOWED_CYCLE_EDGES:
            edges.setdefault(imp.importer, {}).setdefault(imp.target, imp)
    cycles = find_cycles(edges)
    report = []
    for component in cycles:
        members = set(component)
        report.append("cycle: " + " ↔ ".join(component))
        report += ["  " + where(imp) for a in component for b, imp in sorted(edges.get(a, {}).items())
                   if b in members]
    assert not cycles, "import cycles among lora_trainer modules:\n" + "\n".join(report)


def test_allowed_cycle_edges_still_exist():
    present = {(i.importer, i.target) for i in all_imports()}
    stale = [f"{a} -> {b}" for a, b in ALLOWED_CYCLE_EDGES if (a, b) not in present]
    assert not stale, "remove from ALLOWED_CYCLE_EDGES: " + ", ".join(stale)


def test_scripts_import_only_the_register_module():
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert scripts
    bad = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    bad.append(f"{path.name}:{node.lineno} relative import")
                    continue
                module = node.module or ""
                targets = [module] if module in SCRIPT_MAY_IMPORT else [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            bad += [f"{path.name}:{node.lineno} imports {t}" for t in targets
                    if top(t) == PACKAGE and t not in SCRIPT_MAY_IMPORT]
    assert not bad, "scripts/ may import only lora_trainer.webui.register:\n" + "\n".join(bad)
