"""The package's shape: three layers visible in its folders (the method in ``dftnb/``, measurement in
``dftnb/measure/``, the lab in ``dftnb/lab/``), imports only downward (the method imports neither of the others,
measurement does not import the lab), an acyclic import graph, small modules, a layout table in ``docs/design.md``
that matches the folders, and documentation references that resolve inside the repository."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dftnb"
LAYERS = {"method": PACKAGE, "measurement": PACKAGE / "measure", "lab": PACKAGE / "lab"}
MAY_IMPORT = {"method": {"method"}, "measurement": {"method", "measurement"},
              "lab": {"method", "measurement", "lab"}}
MAX_LINES = 700


def layer_of() -> dict[str, str]:
    """``{dotted module: layer}``, read from the folders: the one place a module's layer is written."""
    return {f"{folder.relative_to(REPO).as_posix().replace('/', '.')}.{p.stem}": layer
            for layer, folder in LAYERS.items() for p in folder.glob("*.py") if p.stem != "__init__"}


def _absolute(module: str, level: int, name: str | None, is_package: bool) -> str:
    """The dotted name a relative import ``from <level dots><name>`` in ``module`` refers to."""
    parts = module.split(".")
    base = parts[: len(parts) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def import_graph(sources: dict[str, str] | None = None) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` from the source (relative and absolute imports, at any depth);
    ``sources`` (``{dotted module: source}``) replaces the files, for tests of this test."""
    if sources is None:
        sources = {m: (REPO / (m.replace(".", "/") + ".py")).read_text() for m in layer_of()}
    known = set(sources)
    graph = {}
    for module, text in sources.items():
        deps = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                base = _absolute(module, node.level, node.module, False) if node.level else (node.module or "")
                deps.add(base)
                deps.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[module] = {d for d in deps if d in known} - {module}
    return graph


def layering_violations(graph: dict[str, set[str]], layers: dict[str, str]) -> list[str]:
    return sorted(f"{m} ({layers[m]}) imports {d} ({layers[d]})" for m, deps in graph.items() for d in deps
                  if layers[d] not in MAY_IMPORT[layers[m]])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = "done"
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layering_check_catches_a_method_module_importing_the_lab():
    """The check itself can fail: a method module with a relative, an absolute or a function-level import of the
    lab, or a measurement module importing the lab, is reported."""
    layers = {"dftnb.losses": "method", "dftnb.lab.models": "lab", "dftnb.measure.metrics": "measurement"}
    for text in ("from .lab.models import load_model", "from dftnb.lab import models",
                 "def f():\n    from .lab import models\n"):
        graph = import_graph({"dftnb.losses": text, "dftnb.lab.models": "", "dftnb.measure.metrics": ""})
        assert layering_violations(graph, layers) == ["dftnb.losses (method) imports dftnb.lab.models (lab)"], text
    graph = import_graph({"dftnb.losses": "", "dftnb.lab.models": "",
                          "dftnb.measure.metrics": "from ..lab.models import load_model"})
    assert layering_violations(graph, layers) == ["dftnb.measure.metrics (measurement) imports dftnb.lab.models (lab)"]
    graph = import_graph({"dftnb.losses": "", "dftnb.lab.models": "from ..losses import reverse_kl",
                          "dftnb.measure.metrics": "from .. import losses"})
    assert layering_violations(graph, layers) == []  # downward imports are fine


def test_imports_go_only_downward_and_have_no_cycle():
    layers, graph = layer_of(), import_graph()
    assert {"dftnb.losses", "dftnb.measure.evals", "dftnb.lab.study"} <= set(graph)
    assert {"dftnb.measure.metrics", "dftnb.lab.models"} <= graph["dftnb.lab.evaluation"]  # the parser sees imports
    assert layering_violations(graph, layers) == []
    assert find_cycle(graph) is None


def test_the_public_api_is_the_method():
    import dftnb

    assert {f"dftnb.{module}" for module in dftnb._API} <= {m for m, layer in layer_of().items() if layer == "method"}


LAYOUT_DOC = REPO / "docs/design.md"  # its "## Layout" section holds the table of modules per layer


def layout_table(text: str) -> dict[str, str]:
    """``{module: layer}`` from the first table after ``## Layout`` (rows ``| layer (folder) | `module`, ... | ... |``;
    a row with an empty first cell continues the layer above)."""
    table = text[text.index("## Layout"):]
    table = table[: table.index("\n\n", table.index("\n|"))]
    listed, layer = {}, None
    for row in table.splitlines():
        if not row.startswith("|"):
            continue
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or all(c and set(c) <= {"-", ":"} for c in cells) or cells[1] == "module":
            continue
        layer = cells[0].split()[0] if cells[0] else layer  # "method (`dftnb/`)"
        for name in re.findall(r"`(\w+)`", cells[1]):
            listed[name] = layer
    return listed


def test_the_layout_table_reader_sees_every_row():
    text = ("## Layout\n\nintro\n\n| layer (folder) | module | concept |\n|---|---|---|\n"
            "| method (`dftnb/`) | `losses`, `objective` | x |\n| | `trainer` | y |\n"
            "| lab (`dftnb/lab/`) | `study` | z |\n\nafter | `not_a_row` | x |\n")
    assert layout_table(text) == {"losses": "method", "objective": "method", "trainer": "method", "study": "lab"}


def test_the_layout_table_lists_every_module_in_its_layer():
    """The layout table of ``docs/design.md`` names each module of the package, in the layer of its folder, and
    nothing else."""
    listed = layout_table(LAYOUT_DOC.read_text())
    want = {m.rsplit(".", 1)[1]: layer for m, layer in layer_of().items()}
    unlisted = {m: layer for m, layer in want.items() if listed.get(m) != layer}
    extra = {m: layer for m, layer in listed.items() if m not in want}
    assert not unlisted and not extra, (
        f"{LAYOUT_DOC.relative_to(REPO)} (section 'Layout') must list every module of dftnb/ in the layer of its "
        "folder (dftnb/: method, dftnb/measure/: measurement, dftnb/lab/: lab) and no module that does not exist. "
        f"Add a row (or a name to a row) for {sorted(unlisted.items()) or 'nothing'}; "
        f"remove {sorted(extra.items()) or 'nothing'}.")


def test_modules_stay_small():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_documentation_references_resolve_inside_the_repository():
    """Every design document named in the package, notebooks, tests, benchmarks and README is a file of the
    repository (a user has nothing else to follow the reference to)."""
    files = [*PACKAGE.rglob("*.py"), *(REPO / "notebooks").glob("*.ipynb"), *(REPO / "tests").glob("*.py"),
             *(REPO / "benchmarks").glob("*.py"), REPO / "README.md"]
    pattern = re.compile(r"(?:[\w.-]+/)*(?:DESIGN|design)[\w-]*\.md|docs/[\w./-]+\.md")
    refs = {(path.name, ref) for path in files for ref in pattern.findall(path.read_text())}
    assert any(ref == "docs/design.md" for _, ref in refs)  # the package does point at its design notes
    missing = {(name, ref) for name, ref in refs if not (REPO / ref).exists()}
    assert not missing
