"""The host tools' layout (docs/architecture.md): no import circle among the
`ictl` modules, counting imports inside functions too (a lazy import still
ties two modules together), and the product modules at the top of the
package import nothing from the simulation, measurement or command line."""
import ast
import os

from mphelp import ROOT

TOOLS = os.path.join(ROOT, "tools")
UPPER = ("ictl.cli", "ictl.sim", "ictl.measure")


def modules():
    """{dotted name: path} of every module under tools/ictl."""
    out = {}
    for d, _, files in os.walk(os.path.join(TOOLS, "ictl")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), TOOLS)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, f)
    return out


def import_graph(mods):
    """{module: {ictl modules it imports anywhere in its source}}."""
    graph = {}
    for name, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    sub = base + "." + a.name
                    deps.add(sub if sub in mods else base)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state = {}
    stack = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_the_checker_finds_a_circle():
    # The circle issue 15 found (device -> firmware -> image -> device), as a graph.
    g = {"device": {"firmware"}, "firmware": {"image"}, "image": {"device"}, "pki": set()}
    assert find_cycle(g) == ["device", "firmware", "image", "device"]
    g["image"] = {"pki"}
    assert find_cycle(g) is None


def test_no_import_circle_in_the_host_tools():
    cycle = find_cycle(import_graph(modules()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_product_modules_do_not_import_the_simulation():
    graph = import_graph(modules())
    # The domain modules at the top of ictl, and the fleet service's package.
    product = [n for n in graph if (n.count(".") == 1 or n.startswith("ictl.service."))
               and not n.startswith(UPPER) and n != "ictl.__main__"]
    assert "ictl.image" in product and "ictl.console" in product and "ictl.service.ingest" in product
    bad = sorted("%s -> %s" % (n, d) for n in product for d in graph[n] if d.startswith(UPPER))
    assert not bad, bad


def test_the_simulation_does_not_import_the_command_line_or_measurement():
    graph = import_graph(modules())
    bad = sorted("%s -> %s" % (n, d) for n in graph if n.startswith("ictl.sim")
                 for d in graph[n] if d.startswith(("ictl.cli", "ictl.measure")))
    assert not bad, bad
