"""The package's shape: an acyclic import graph, the method never importing orchestration, small modules, and
documentation references that resolve inside the repository."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dftnb"
METHOD = {"targets", "datastore", "losses", "transport", "objective", "trainer", "sampling", "denoise", "metrics"}
ORCHESTRATION = {"experiments", "benchmark", "study", "study_runs"}
MAX_LINES = 700


def import_graph() -> dict[str, set[str]]:
    """``{module: {dftnb modules it imports}}`` from the source (relative and absolute imports, at any depth)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:
                    deps.update(a.name for a in node.names if a.name in modules)
                elif node.module and node.module.startswith("dftnb."):
                    deps.add(node.module.split(".")[1])
                elif node.module == "dftnb":
                    deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dftnb."))
        graph[path.stem] = deps & modules - {"__init__", path.stem}
    return graph


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


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert {"losses", "objective", "experiments", "evals"} <= set(graph)
    assert find_cycle(graph) is None


def test_method_and_measurement_never_import_orchestration():
    graph = import_graph()
    offenders = {m: sorted(graph[m] & ORCHESTRATION) for m in METHOD | {"evals", "sandbox"} if graph[m] & ORCHESTRATION}
    assert not offenders
    assert {"metrics", "targets", "models"} <= graph["experiments"]  # the parser sees their imports
    assert {"evals", "metrics", "stats", "models"} <= graph["benchmark"]


def test_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_documentation_references_resolve_inside_the_repository():
    """Every design document named in the package, notebooks, tests, benchmarks and README is a file of the
    repository (a user has nothing else to follow the reference to)."""
    files = [*PACKAGE.glob("*.py"), *(REPO / "notebooks").glob("*.ipynb"), *(REPO / "tests").glob("*.py"),
             *(REPO / "benchmarks").glob("*.py"), REPO / "README.md"]
    pattern = re.compile(r"(?:[\w.-]+/)*(?:DESIGN|design)[\w-]*\.md|docs/[\w./-]+\.md")
    refs = {(path.name, ref) for path in files for ref in pattern.findall(path.read_text())}
    assert any(ref == "docs/design.md" for _, ref in refs)  # the package does point at its design notes
    missing = {(name, ref) for name, ref in refs if not (REPO / ref).exists()}
    assert not missing
