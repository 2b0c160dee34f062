"""The shape of a ranksearch checkout: size, long functions, import graph, Optuna internals, settings walk, CLI.

Usage::

    python benchmarks/structure.py --root /work/before [--out results.md] [--append] [--no-trace] [--python PY]

Run the same script on the checkout before and after a restructuring and compare the two reports. It uses the
standard library only (the settings walk runs in a subprocess with the checkout's own Python). Nothing relies on
the package's internal module names: everything is found by walking ``<root>/ranksearch/**/*.py``. Each section is
computed on its own; a failing section prints ``section failed: <error>`` and the rest still runs.

Definitions (the figures quoted from the report mean exactly this):

Module
    Every ``*.py`` file under ``<root>/ranksearch`` (recursively, ``__pycache__`` skipped). Its name is the dotted
    path relative to ``<root>`` without ``.py``; ``pkg/__init__.py`` is named ``pkg`` (``ranksearch``,
    ``ranksearch.core``). Its *package* is the first path component below ``ranksearch/`` for files in a
    subfolder (``core``, ``study``, ``zoo``); files directly in ``ranksearch/`` (``__init__.py`` included) belong
    to the package ``<top>``.

1. Modules
    Lines = number of lines of the file (``str.splitlines``, as ``wc -l`` for a file ending in a newline).
    Reported: the module count (and per package), the 8 largest by lines, how many have more than 450 lines.

2. Functions
    Every ``def``/``async def`` at any depth (methods, nested functions). Its qualified name is Python's
    ``__qualname__`` (``Class.method``, ``outer.<locals>.inner``). Lines = ``end_lineno - lineno + 1`` of the
    ``def`` node (from the ``def`` line, decorators not counted, to the last line of the body). Lambdas are not
    functions here. Reported: the 10 longest.
    Parameter count: for every module-level (top-level, not a method) function named ``search``, ``run_worker``,
    ``config_for`` or ``search_points`` in any module: positional-only + positional-or-keyword + keyword-only
    parameters; ``*args``/``**kwargs`` are not counted, nor a first parameter named ``self``.

3. Import graph (static, ast)
    Nodes: all modules. Edges: runtime import statements anywhere in a module (module level, inside functions,
    classes, ``try``, ``if``) whose target is ``ranksearch`` or below, relative imports resolved against the
    importing module's package. ``import a.b.c`` -> the module ``a.b.c`` (or its longest existing prefix);
    ``from a.b import x`` -> ``a.b.x`` when that is a module, otherwise ``a.b``. Self-edges are dropped. Importing
    ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__`` at runtime; those implicit parent edges are NOT added.
    Import statements inside the body of ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``) are not runtime
    imports: they are counted separately and excluded from the graph (their ``else:`` branch counts). Lazy
    re-exports through PEP 562 ``__getattr__`` (a mapping of names to module strings, ``importlib.import_module``)
    are not import statements and are not edges; modules defining a module-level ``__getattr__`` are listed.
    Floor: a module importing no ranksearch module is floor 1; otherwise 1 + the highest floor among what it
    imports, computed on the graph of strongly connected components (a cycle shares one floor). "Floors" = the
    highest floor = the number of modules on the longest import chain (cycles condensed).
    Cycles: strongly connected components (Tarjan) with more than one module.
    Package cycles: the same on the graph whose nodes are packages (see Module) and whose edges are module edges
    between different packages (listed with the number of module edges behind each package edge). A module
    directly in ``ranksearch/`` (other than ``__init__``) is a node of its own, ``<top>.name``: the top level
    holds both the base (``errors``, ``_io``) and the faces (``_api``, ``cli`` in the old layout), so lumping them
    would make every layer look circular.

4. Optuna private attributes
    Per module, attribute accesses (``ast.Attribute`` nodes) whose attribute is ``_storage``, ``_study_id`` or
    ``_trial_id`` (``study._storage.get_trial(...)``, ``trial._trial_id``), except where the object is a dotted
    name starting with ``ranksearch`` (a module path such as ``ranksearch._storage``). Import statements never
    count (``from ranksearch import _storage``, ``from ._storage import x`` are not attribute accesses). This is
    the regexes ``\\._storage\\b(?!\\w)``, ``\\._study_id\\b``, ``\\._trial_id\\b`` restricted to code. The
    column "regex" is the plain regex count on the raw text as a cross-check (comments and docstrings included;
    lines starting with ``from``/``import`` and matches preceded by a dotted name starting with ``ranksearch``
    excluded). Reported: the per-module counts, totals, and the modules with any (ast) access whose file is
    not named ``_storage.py``.

5. Settings walk (dynamic; ``--no-trace`` skips it)
    A subprocess runs ``ranksearch.cli.main(["search", "--space", "tiny-digits", "--ratio", "0.3", "--trials",
    "3", "--out", <tmp>/out, "--no-progress", "-q"])`` with the checkout's Python (``<root>/.venv/bin/python``
    unless ``--python``), env ``RANKSEARCH_SPACES=<root>/tests/data``, ``RANKSEARCH_CACHE=<fresh tmp dir>``,
    ``PYTHONPATH=<root>/tests:<root>``, ``OMP_NUM_THREADS=1``, under ``sys.setprofile`` (and
    ``threading.setprofile``); the exit code must be 0. Only Python frames whose code file lies under
    ``<root>/ranksearch`` are watched (C calls ignored). A *settings object* is any object with
    ``type(obj).__name__ == "SearchSettings"``. Comprehension frames (``<genexpr>``, ``<listcomp>``,
    ``<setcomp>``, ``<dictcomp>``) are never callees and are skipped when looking for the caller (``f_back`` is
    followed past them); lambdas and nested functions are callees of their own file's module.
    At each ``call`` event the callee *receives* the settings under a *binding name* when one of its declared
    parameters (``co_varnames[:co_argcount + co_kwonlyargcount]`` looked up in ``f_locals``) is a settings object
    (name = the parameter name), or when its ``self`` parameter has an instance attribute (``__dict__`` or
    ``__slots__``) holding one (name = ``self.<attr>``). Caller = the module and ``co_qualname`` of the first
    non-comprehension ``f_back`` frame, or ``<outside>`` when that frame is not under ``<root>/ranksearch``.
    At each ``return`` event whose value is a settings object, the settings *climb back* from callee to caller.
    (Generator yields/resumes are return/call events too.)
    rooms   = distinct modules in which some function received the settings (argument or self attribute).
    moves   = distinct (caller function -> callee function) edges, caller and callee in different ranksearch
              modules (``<outside>`` callers excluded), along which the settings were passed as an argument.
    climbs back = distinct (callee function -> caller function) edges, different ranksearch modules
              (``<outside>`` excluded), along which a settings object was returned.
    names   = distinct binding names (parameter names and ``self.<attr>``); bindings = distinct
              (module, function, name) triples.
    rooms and moves are also given without the settings' own methods (where the settings is bound as ``self``).
    Diagnostics (not part of the figures): modules whose functions ran at all; modules where a frame held the
    settings in any local variable at its return; settings passed inside ``*args``/``**kwargs``; ranksearch
    modules that were loaded from outside ``<root>`` (e.g. through an editable install of another checkout).
    The run fails if ``ranksearch.cli`` itself does not load from ``<root>``.
    Also static: "modules that name SearchSettings" = modules whose ast has a ``Name``/``Attribute``/import alias
    (or ``class``) spelled ``SearchSettings`` (string annotations not counted; ``TYPE_CHECKING`` imports counted).

6. CLI options
    ``<python> -m ranksearch.cli search --help`` (fallback ``-c`` calling ``main(['search', '--help'])``), same
    env plus ``COLUMNS=200``. Option entry lines match ``^\\s{2}(-\\w|--[\\w-]+)``; options = distinct strings
    ``--[a-z0-9-]+`` or ``-[a-zA-Z]`` in the option part of those lines (before the help text). Groups = lines
    starting at column 0 and ending with ``:``, except ``usage:`` (argparse's ``options:`` and
    ``positional arguments:`` included). Fails if ``ranksearch.cli`` does not load from ``<root>``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ranksearch"
TOP = "<top>"
OUTSIDE = "<outside>"
BIG_MODULE_LINES = 450
PARAM_FUNCTIONS = ("search", "run_worker", "config_for", "search_points")
PRIVATE_ATTRS = ("_storage", "_study_id", "_trial_id")
PRIVATE_REGEXES = {"_storage": r"\._storage\b(?!\w)", "_study_id": r"\._study_id\b", "_trial_id": r"\._trial_id\b"}
SEARCH_ARGV = ["search", "--space", "tiny-digits", "--ratio", "0.3", "--trials", "3", "--no-progress", "-q"]
OPTION_LINE = re.compile(r"^\s{2}(-\w|--[\w-]+)")
OPTION_TOKEN = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


# ----------------------------------------------------------------------------------------------- discovery

@dataclass
class Module:
    name: str          # dotted, e.g. ranksearch.study._objective; a package __init__ is the package name
    rel: str           # path relative to root, e.g. ranksearch/study/_objective.py
    source: str
    tree: ast.Module

    @property
    def lines(self) -> int:
        return len(self.source.splitlines())

    @property
    def is_init(self) -> bool:
        return self.rel.endswith("__init__.py")

    @property
    def package(self) -> str:
        parts = self.rel.split("/")
        return parts[1] if len(parts) > 2 else TOP

    @property
    def node(self) -> str:
        """Its node in the package graph: its package, or for a file directly in ``ranksearch/`` the module
        itself (the top level holds both the base, such as ``errors``, and the faces, such as ``cli``)."""
        return self.package if self.package != TOP or self.is_init else f"{TOP}.{Path(self.rel).stem}"


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root)
        source = path.read_text(encoding="utf-8")
        modules[module_name(rel)] = Module(module_name(rel), rel.as_posix(), source, ast.parse(source, str(path)))
    if not modules:
        raise SystemExit(f"no {PACKAGE}/**/*.py under {root}")
    return modules


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# ----------------------------------------------------------------------------------------------- 1. modules

def section_modules(modules: dict[str, Module]) -> list[str]:
    by_size = sorted(modules.values(), key=lambda m: (-m.lines, m.rel))
    big = [m for m in by_size if m.lines > BIG_MODULE_LINES]
    per_package: dict[str, int] = {}
    for m in by_size:
        per_package[m.package] = per_package.get(m.package, 0) + 1
    out = [f"- modules: **{len(modules)}**, lines in all: {sum(m.lines for m in by_size)}",
           "- modules per package: " + ", ".join(f"{p}: {n}" for p, n in sorted(per_package.items())),
           f"- over {BIG_MODULE_LINES} lines: **{len(big)}** ({', '.join(m.rel for m in big) or 'none'})", ""]
    return out + table(["module", "lines"], [[m.rel, m.lines] for m in by_size[:8]])


# ----------------------------------------------------------------------------------------------- 2. functions

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def iter_functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, FunctionNode]]:
    """(qualname, node) for every def at any depth, qualnames as Python's ``__qualname__``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = prefix + child.name
            yield qualname, child
            yield from iter_functions(child, qualname + ".<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from iter_functions(child, prefix + child.name + ".")
        else:
            yield from iter_functions(child, prefix)


def param_count(fn: FunctionNode) -> int:
    params = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    if params and params[0].arg == "self":
        params = params[1:]
    return len(params)


def section_functions(modules: dict[str, Module]) -> list[str]:
    found = [(fn.end_lineno - fn.lineno + 1, qualname, m.name)  # type: ignore[operator]
             for m in modules.values() for qualname, fn in iter_functions(m.tree)]
    found.sort(key=lambda t: (-t[0], t[2], t[1]))
    out = [f"- functions/methods (all depths): {len(found)}; over 100 lines: {sum(1 for f in found if f[0] > 100)}", ""]
    out += table(["function", "module", "lines"], [[f"`{q}`", m, n] for n, q, m in found[:10]])
    rows = [[f"`{fn.name}`", m.name, param_count(fn), fn.lineno]
            for m in modules.values() for fn in m.tree.body
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in PARAM_FUNCTIONS]
    rows.sort(key=lambda r: (PARAM_FUNCTIONS.index(str(r[0]).strip("`")), str(r[1])))
    missing = [name for name in PARAM_FUNCTIONS if not any(r[0] == f"`{name}`" for r in rows)]
    out += ["", "Parameters of public top-level functions (no *args/**kwargs, no self):", ""]
    out += table(["function", "module", "params", "line"], rows)
    if missing:
        out.append(f"\n- not defined at top level anywhere: {', '.join(missing)}")
    return out


# ----------------------------------------------------------------------------------------------- 3. imports

def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def iter_imports(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement at any depth, with whether it sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_checking
        elif isinstance(child, ast.If) and is_type_checking(child.test):
            for stmt in child.body:
                yield from iter_imports(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from iter_imports(ast.Module(body=[stmt], type_ignores=[]), type_checking)
        else:
            yield from iter_imports(child, type_checking)


def existing_prefix(name: str, modules: dict[str, Module]) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def import_targets(stmt: ast.Import | ast.ImportFrom, module: Module, modules: dict[str, Module]) -> set[str]:
    """The ranksearch modules an import statement names (see the docstring for the rule)."""
    targets: set[str] = set()
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                if (target := existing_prefix(alias.name, modules)) is not None:
                    targets.add(target)
        return targets
    if stmt.level:
        package = module.name if module.is_init else module.name.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{stmt.module}" if stmt.module else package
    else:
        base = stmt.module or ""
    if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
        return targets
    for alias in stmt.names:
        if f"{base}.{alias.name}" in modules:
            targets.add(f"{base}.{alias.name}")
        elif (target := existing_prefix(base, modules)) is not None:
            targets.add(target)
    return targets


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """Floor of each node: 1 + the highest floor it imports, on the condensation (a cycle shares a floor)."""
    component_of = {v: i for i, comp in enumerate(strongly_connected(graph)) for v in comp}
    members: dict[int, list[str]] = {}
    for v, c in component_of.items():
        members.setdefault(c, []).append(v)
    floor_of: dict[int, int] = {}
    for c in sorted(members):  # Tarjan emits components in reverse topological order: dependencies first
        below = {component_of[w] for v in members[c] for w in graph[v]} - {c}
        floor_of[c] = 1 + max((floor_of[b] for b in below), default=0)
    return {v: floor_of[c] for v, c in component_of.items()}


def import_graph(modules: dict[str, Module]) -> tuple[dict[str, set[str]], int, int]:
    """(graph, runtime import statements to ranksearch, TYPE_CHECKING import statements to ranksearch)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    runtime = type_only = 0
    for m in modules.values():
        for stmt, under_type_checking in iter_imports(m.tree):
            targets = import_targets(stmt, m, modules)
            if not targets:
                continue
            if under_type_checking:
                type_only += 1
                continue
            runtime += 1
            graph[m.name] |= targets - {m.name}
    return graph, runtime, type_only


def longest_chain(graph: dict[str, set[str]], floor: dict[str, int]) -> list[list[str]]:
    """One import chain with a strongly connected component on every floor (top first)."""
    component_of = {v: comp for comp in strongly_connected(graph) for v in comp}
    chain = [component_of[max(sorted(graph), key=lambda v: floor[v])]]
    while floor[chain[-1][0]] > 1:
        below = sorted({w for v in chain[-1] for w in graph[v] if floor[w] == floor[v] - 1})
        chain.append(component_of[below[0]])
    return chain


def section_imports(modules: dict[str, Module]) -> list[str]:
    graph, runtime, type_only = import_graph(modules)
    floor = floors(graph)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    packages: dict[str, set[str]] = {modules[v].node: set() for v in graph}
    for v, targets in graph.items():
        packages[modules[v].node] |= {modules[w].node for w in targets} - {modules[v].node}
    package_cycles = [c for c in strongly_connected(packages) if len(c) > 1]
    lazy = [m.name for m in modules.values() if any(isinstance(s, ast.FunctionDef) and s.name == "__getattr__"
                                                   for s in m.tree.body)]
    short = lambda v: v.removeprefix(PACKAGE + ".") if v != PACKAGE else v  # noqa: E731
    out = [f"- modules: {len(graph)}; edges: {sum(len(t) for t in graph.values())}; runtime import statements of "
           f"ranksearch modules: {runtime}; under `if TYPE_CHECKING:` (excluded): **{type_only}**",
           f"- floors (longest import chain, cycles condensed): **{max(floor.values())}**; "
           f"e.g. {' -> '.join('{' + ', '.join(map(short, c)) + '}' if len(c) > 1 else short(c[0]) for c in longest_chain(graph, floor))}",
           "- modules per floor: " + ", ".join(f"{f}: {sum(1 for v in floor.values() if v == f)}"
                                               for f in range(1, max(floor.values()) + 1)),
           f"- module cycles (SCCs > 1 module): **{len(cycles)}**"]
    out += [f"  - {len(c)} modules: {', '.join(short(v) for v in c)}" for c in cycles]
    out.append(f"- packages: {', '.join(sorted(packages))}; package cycles: **{len(package_cycles)}**")
    out += [f"  - {', '.join(c)}" for c in package_cycles]
    for c in package_cycles:
        crossing: dict[tuple[str, str], int] = {}  # package edge -> number of module edges behind it
        for v in graph:
            for w in graph[v]:
                a, b = modules[v].node, modules[w].node
                if a != b and a in c and b in c:
                    crossing[a, b] = crossing.get((a, b), 0) + 1
        out.append("    - package edges (module edges): " + "; ".join(f"{a} -> {b} ({n})"
                                                                 for (a, b), n in sorted(crossing.items())))
    out.append(f"- modules with a PEP 562 `__getattr__` (lazy re-exports, not edges): {', '.join(lazy) or 'none'}")
    return out


# ----------------------------------------------------------------------------------------------- 4. optuna internals

def dotted(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def private_ast_counts(m: Module) -> dict[str, int]:
    counts = dict.fromkeys(PRIVATE_ATTRS, 0)
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Attribute) and node.attr in counts:
            if not dotted(node.value).split(".")[0] == PACKAGE:
                counts[node.attr] += 1
    return counts


def private_regex_count(m: Module) -> int:
    total = 0
    for line in m.source.splitlines():
        if line.lstrip().startswith(("from ", "import ")):
            continue
        for pattern in PRIVATE_REGEXES.values():
            for match in re.finditer(pattern, line):
                chain = re.search(r"[\w.]*$", line[:match.start()])
                if not (chain and chain.group().startswith(PACKAGE)):
                    total += 1
    return total


def section_private(modules: dict[str, Module]) -> list[str]:
    rows, totals, regex_total, offenders = [], dict.fromkeys(PRIVATE_ATTRS, 0), 0, []
    for m in modules.values():
        counts, regex = private_ast_counts(m), private_regex_count(m)
        if not any(counts.values()) and not regex:
            continue
        rows.append([m.name, *counts.values(), sum(counts.values()), regex])
        for k, v in counts.items():
            totals[k] += v
        regex_total += regex
        if any(counts.values()) and Path(m.rel).name != "_storage.py":
            offenders.append(m.name)
    rows.append(["**total**", *totals.values(), f"**{sum(totals.values())}**", regex_total])
    out = table(["module", *(f"`.{a}`" for a in PRIVATE_ATTRS), "all (ast)", "regex"], rows)
    out += ["", f"- modules other than `_storage.py` with any: **{len(offenders)}** ({', '.join(offenders) or 'none'})"]
    return out


# ----------------------------------------------------------------------------------------------- 5. settings walk

TRACER = r'''
import json, os, sys, threading
root, out_json, argv = os.path.realpath(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
pkg_dir = os.path.join(root, "ranksearch") + os.sep
COMPREHENSIONS = {"<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"}
OUTSIDE = "<outside>"
_modules = {}

def module_of(filename):
    """Dotted module of a code file under <root>/ranksearch, else ''."""
    name = _modules.get(filename)
    if name is None:
        path = os.path.realpath(filename) if filename and not filename.startswith("<") else ""
        name = ""
        if path.startswith(pkg_dir) and path.endswith(".py"):
            name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            name = name[:-len(".__init__")] if name.endswith(".__init__") else name
        _modules[filename] = name
    return name

def is_settings(obj):
    return type(obj).__name__ == "SearchSettings"

def caller_of(frame):
    f = frame.f_back
    while f is not None and f.f_code.co_name in COMPREHENSIONS:
        f = f.f_back
    module = module_of(f.f_code.co_filename) if f is not None else ""
    return (module, f.f_code.co_qualname) if module else (OUTSIDE, OUTSIDE)

def instance_attrs(obj):
    attrs = dict(getattr(obj, "__dict__", None) or {})
    for klass in type(obj).__mro__:
        for slot in getattr(klass, "__slots__", ()) if isinstance(getattr(klass, "__slots__", ()), (tuple, list)) else ():
            try:
                attrs.setdefault(slot, object.__getattribute__(obj, slot))
            except AttributeError:
                pass
    return attrs

receipts, climbs, packed, present, ran, errors = set(), set(), set(), set(), set(), []
VARARGS, VARKEYWORDS = 0x04, 0x08

def profiler(frame, event, arg):
    if event != "call" and event != "return":
        return
    code = frame.f_code
    module = module_of(code.co_filename)
    if not module or code.co_name in COMPREHENSIONS:
        return
    try:
        if event == "return":
            if is_settings(arg):
                climbs.add((module, code.co_qualname, *caller_of(frame)))
            if any(is_settings(v) for v in frame.f_locals.values()):  # diagnostic: held in any local
                present.add((module, code.co_qualname))
            return
        ran.add(module)
        n = code.co_argcount + code.co_kwonlyargcount
        local = frame.f_locals
        extra = n  # diagnostic: settings inside *args / **kwargs (not bindings by the definition)
        for flag, unpack in ((VARARGS, lambda v: v), (VARKEYWORDS, lambda v: v.values())):
            if code.co_flags & flag:
                name = code.co_varnames[extra]
                extra += 1
                if any(is_settings(v) for v in unpack(local.get(name) or ())):
                    packed.add((module, code.co_qualname, name))
        if not n:
            return
        for name in code.co_varnames[:n]:
            value = local.get(name)
            if is_settings(value):
                receipts.add((*caller_of(frame), module, code.co_qualname, name, "arg"))
            if name == "self" and value is not None:
                for attr, v in instance_attrs(value).items():
                    if is_settings(v):
                        receipts.add((*caller_of(frame), module, code.co_qualname, "self." + attr, "self"))
    except Exception as e:  # never break the traced program
        if len(errors) < 5:
            errors.append(f"{module}.{code.co_qualname}: {e!r}")

import ranksearch, ranksearch.cli
if not os.path.realpath(ranksearch.cli.__file__).startswith(pkg_dir):
    sys.exit(f"ranksearch.cli comes from {ranksearch.cli.__file__}, not from {pkg_dir}")
start = __import__("time").perf_counter()
sys.setprofile(profiler)
threading.setprofile(profiler)
try:
    code = ranksearch.cli.main(argv)
finally:
    sys.setprofile(None)
    threading.setprofile(None)
strays = sorted(name for name, m in list(sys.modules.items()) if name.split(".")[0] == "ranksearch"
                and getattr(m, "__file__", None) and not os.path.realpath(m.__file__).startswith(pkg_dir))
with open(out_json, "w") as f:
    json.dump({"exit": code, "seconds": __import__("time").perf_counter() - start, "package": ranksearch.__file__,
               "receipts": sorted(receipts), "climbs": sorted(climbs), "packed": sorted(packed),
               "present": sorted(present), "ran": sorted(ran), "strays": strays, "errors": errors}, f)
'''


def run_env(root: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANKSEARCH_SPACES=str(root / "tests" / "data"), RANKSEARCH_CACHE=str(cache),
               PYTHONPATH=f"{root / 'tests'}{os.pathsep}{root}", OMP_NUM_THREADS="1")
    return env


def names_settings(m: Module) -> int:
    n = 0
    for node in ast.walk(m.tree):
        if isinstance(node, ast.Name) and node.id == "SearchSettings" or \
           isinstance(node, ast.Attribute) and node.attr == "SearchSettings" or \
           isinstance(node, ast.alias) and "SearchSettings" in (node.name, node.asname) or \
           isinstance(node, ast.ClassDef) and node.name == "SearchSettings":
            n += 1
    return n


def static_settings(modules: dict[str, Module]) -> list[str]:
    named = [(m.name, n) for m in modules.values() if (n := names_settings(m))]
    return [f"- modules that name SearchSettings (static, ast): **{len(named)}**: "
            + ", ".join(f"{name} ({n})" for name, n in named)]


def section_settings(root: Path, python: str, modules: dict[str, Module], timeout: float) -> list[str]:
    out = static_settings(modules)
    with tempfile.TemporaryDirectory(prefix="structure-") as tmp:
        work = Path(tmp)
        (work / "cache").mkdir()
        (work / "tracer.py").write_text(TRACER)
        argv = [*SEARCH_ARGV[:-2], "--out", str(work / "out"), *SEARCH_ARGV[-2:]]
        start = time.perf_counter()
        proc = subprocess.run([python, str(work / "tracer.py"), str(root), str(work / "walk.json"), json.dumps(argv)],
                              env=run_env(root, work / "cache"), cwd=tmp, capture_output=True, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not (work / "walk.json").exists():
            raise RuntimeError(f"tracer exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
        walk = json.loads((work / "walk.json").read_text())
    if walk["exit"] != 0:
        raise RuntimeError(f"ranksearch.cli.main returned {walk['exit']}")
    receipts = [tuple(r) for r in walk["receipts"]]  # caller_mod, caller_fn, callee_mod, callee_fn, name, kind
    climbs = [tuple(c) for c in walk["climbs"]]      # callee_mod, callee_fn, caller_mod, caller_fn
    rooms = sorted({r[2] for r in receipts})
    moves = sorted({(r[0], r[1], r[2], r[3]) for r in receipts
                    if r[5] == "arg" and r[0] != OUTSIDE and r[0] != r[2]})
    not_own = {(r[0], r[1], r[2], r[3]) for r in receipts if r[5] == "arg" and r[4] != "self"}
    rooms_not_own = sorted({r[2] for r in receipts if r[4] != "self"})
    backs = sorted({c for c in climbs if c[2] != OUTSIDE and c[0] != c[2]})
    names = sorted({r[4] for r in receipts})
    bindings = {(r[2], r[3], r[4]) for r in receipts}
    out += [f"- traced run: `ranksearch.cli.main({argv[:7]} ...)` exit {walk['exit']}, "
            f"{walk['seconds']:.0f} s traced ({wall:.0f} s with start-up), package {walk['package']}; "
            f"modules whose functions ran: {len(walk['ran'])}",
            f"- rooms (modules where a function received the settings): **{len(rooms)}** "
            f"({len(rooms_not_own)} not counting the settings' own methods, where it is `self`)",
            f"- moves (cross-module caller -> callee edges passing it as an argument): **{len(moves)}** "
            f"({len(not_own & set(moves))} not counting calls of the settings' own methods)",
            f"- climbs back (cross-module callee -> caller edges returning it): **{len(backs)}**",
            f"- names: **{len(names)}** ({', '.join(f'`{n}`' for n in names)}); "
            f"(module, function, name) bindings: **{len(bindings)}**"]
    present = sorted({p[0] for p in walk["present"]})
    out.append(f"- diagnostic, not a figure above: modules with a function holding the settings in any local at return: "
               f"{len(present)} ({', '.join(present)}); settings inside *args/**kwargs: "
               + (", ".join(f"{m}:`{f}` {n}" for m, f, n in walk["packed"]) or "none"))
    if walk["strays"]:
        out.append(f"- note: ranksearch modules loaded from outside the root (not traced): {', '.join(walk['strays'])}")
    if walk["errors"]:
        out.append(f"- tracer errors (first {len(walk['errors'])}): {'; '.join(walk['errors'])}")
    rows = []
    for room in rooms:
        here = {(b[1], b[2]) for b in bindings if b[0] == room}
        rows.append([room, len({f for f, _ in here}), len(here), ", ".join(sorted({n for _, n in here}))])
    out += [""] + table(["module", "functions", "bindings", "names"], rows)
    out += ["", "Moves (caller -> callee):", ""]
    out += [f"- {a}:`{b}` -> {c}:`{d}`" for a, b, c, d in moves]
    out += ["", "Climbs back (callee -> caller):", ""]
    out += [f"- {a}:`{b}` -> {c}:`{d}`" for a, b, c, d in backs] or ["- none"]
    return out


# ----------------------------------------------------------------------------------------------- 6. CLI

def help_text(root: Path, python: str) -> str:
    with tempfile.TemporaryDirectory(prefix="structure-") as tmp:
        env = run_env(root, Path(tmp)) | {"COLUMNS": "200"}
        proc = subprocess.run([python, "-m", f"{PACKAGE}.cli", "search", "--help"], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or "usage:" not in proc.stdout:
            code = f"import {PACKAGE}.cli as c\ntry:\n    c.main(['search', '--help'])\nexcept SystemExit:\n    pass\n"
            proc = subprocess.run([python, "-c", code], env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    if "usage:" not in proc.stdout:
        raise RuntimeError(f"no help text: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def check_cli_origin(root: Path, python: str) -> str:
    """The file ``ranksearch.cli`` loads from with this env; it must lie under the root (an editable install of
    another checkout would otherwise answer for submodules the root lacks)."""
    with tempfile.TemporaryDirectory(prefix="structure-") as tmp:
        proc = subprocess.run([python, "-c", f"import {PACKAGE}.cli as c; print(c.__file__)"], env=run_env(root, Path(tmp)),
                              cwd=tmp, capture_output=True, text=True, timeout=300)
    where = proc.stdout.strip()
    if proc.returncode != 0 or not os.path.realpath(where).startswith(str(root / PACKAGE) + os.sep):
        raise RuntimeError(f"{PACKAGE}.cli does not load from {root}: {where or proc.stderr.strip()[-800:]}")
    return where


def section_cli(root: Path, python: str) -> list[str]:
    check_cli_origin(root, python)
    text = help_text(root, python)
    options: set[str] = set()
    entries = 0
    for line in text.splitlines():
        if OPTION_LINE.match(line):
            entries += 1
            head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]  # the option part, before the help column
            options |= set(OPTION_TOKEN.findall(head))
    groups = [line[:-1] for line in text.splitlines()
              if line.endswith(":") and line[:1].strip() and not line.startswith("usage:")]
    return [f"- `search --help`: **{len(options)}** distinct option strings in {entries} option entries",
            f"- argument groups: **{len(groups)}** ({', '.join(groups)})"]


# ----------------------------------------------------------------------------------------------- main

def git_head(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cs"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def guarded(title: str, build: Callable[[], list[str]]) -> list[str]:
    start = time.perf_counter()
    try:
        body = build()
    except Exception as e:  # one failing section must not hide the others
        body = [f"section failed: {type(e).__name__}: {e}"]
        print(traceback.format_exc(), file=sys.stderr)
    print(f"[structure] {title}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return [f"## {title}", "", *body, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="checkout holding ranksearch/ and tests/")
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--append", action="store_true", help="append to --out instead of overwriting it")
    parser.add_argument("--no-trace", action="store_true", help="skip the settings walk (section 5)")
    parser.add_argument("--python", help="Python of the checkout (default <root>/.venv/bin/python)")
    parser.add_argument("--trace-timeout", type=float, default=900, help="seconds for the traced search")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    python = args.python or str(root / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    modules = discover(root)
    lines = [f"# Structure of `{root}` ({git_head(root)})", "",
             f"python for runs: `{python}`; {time.strftime('%Y-%m-%d %H:%M')}", ""]
    lines += guarded("1. Modules", lambda: section_modules(modules))
    lines += guarded("2. Functions", lambda: section_functions(modules))
    lines += guarded("3. Import graph", lambda: section_imports(modules))
    lines += guarded("4. Optuna private attributes", lambda: section_private(modules))
    if args.no_trace:
        lines += guarded("5. Settings walk", lambda: static_settings(modules) + ["- dynamic walk skipped (--no-trace)"])
    else:
        lines += guarded("5. Settings walk", lambda: section_settings(root, python, modules, args.trace_timeout))
    lines += guarded("6. CLI options", lambda: section_cli(root, python))
    report = "\n".join(lines)
    print(report)
    if args.out:
        with args.out.open("a" if args.append else "w", encoding="utf-8") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
