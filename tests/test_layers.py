"""The package's imports point down its layers (data -> model -> training -> jobs) and form no
cycle, counting every import statement, also those inside functions."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "twotower"

# Known edges that break a rule and are being removed: (importer, imported). Empty when the
# layering holds; an edge listed here that no longer exists fails the test, so the list
# cannot go stale.
KNOWN_VIOLATIONS: set = set()


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, known: dict) -> set:
  """twotower.* modules that ``name`` imports anywhere in its file."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:   # relative: from the importer's package
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      # ``from pkg import sub`` imports the submodule pkg.sub; otherwise pkg itself.
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
    else:
      continue
    out.update(t for t in targets if t.startswith("twotower.") and t in known)
  out.discard(name)
  return out


def graph() -> dict:
  known = modules()
  return {name: imports_of(name, path, known) for name, path in known.items()}


def in_layer(name: str, layer: str) -> bool:
  return name == f"twotower.{layer}" or name.startswith(f"twotower.{layer}.")


def violations(edges: dict) -> set:
  """(importer, imported) pairs that point up a layer."""
  rules = [  # (importer layer, layers it must not import)
      ("data", ("model", "training", "jobs", "workdir", "cli")),
      ("model", ("training", "jobs", "workdir", "cli")),
      ("training", ("jobs", "cli")),
  ]
  out = set()
  for importer, imported in ((a, b) for a, targets in edges.items() for b in targets):
    for layer, forbidden in rules:
      if in_layer(importer, layer) and any(in_layer(imported, f) for f in forbidden):
        out.add((importer, imported))
    # The array libraries (everything but the jobs, the CLI and the pipeline) never
    # import the jobs layer.
    if in_layer(imported, "jobs") and not any(
        in_layer(importer, top) for top in ("jobs", "cli", "pipeline")):
      out.add((importer, imported))
  return out


def cycles(edges: dict) -> list:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
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
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_the_checker_sees_function_level_imports_and_cycles():
  edges = graph()
  assert "twotower.jobs.index" in edges["twotower.cli.index"]   # imported inside main()
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert violations({"twotower.model.x": {"twotower.training.y"}}) == {
      ("twotower.model.x", "twotower.training.y")}


def test_no_import_cycle():
  edges = graph()
  for importer, imported in KNOWN_VIOLATIONS:
    edges[importer].discard(imported)
  assert cycles(edges) == []


def test_imports_point_down_the_layers():
  found = violations(graph())
  assert found - KNOWN_VIOLATIONS == set(), "imports that point up a layer"
  assert KNOWN_VIOLATIONS - found == set(), "fixed: remove them from KNOWN_VIOLATIONS"
