"""Mutation testing for one module: which small changes to the code do its tests not notice?

    python tools/mutate.py bndl_like/execute/scheduler.py \\
        --tests tests/execute/test_scheduler.py tests/execute/test_scheduler_gaps.py \\
        --sample 150 --seed 1 --equivalent tools/equivalent.json

Each mutant is one change to the source, made by splicing the text of one syntax node (the rest
of the file, its lines and comments stay as they are): a comparison moved across its boundary or
negated (``<`` -> ``<=``, ``==`` -> ``!=``, ``in`` -> ``not in``), an arithmetic or bitwise operator
swapped (``+`` <-> ``-``, ``<<`` <-> ``>>``, ...), ``and`` <-> ``or``, a ``not`` dropped, an int
constant ±1, ``True`` <-> ``False``, a returned value replaced with None, a simple statement
replaced with ``pass``, the condition of an ``if``, ``while`` or conditional expression negated.
Annotations, ``if TYPE_CHECKING:`` blocks, docstrings and string constants are left alone.

The module is never changed where it lives (others may be running tests on it): the package and
the test directories are copied into a temporary directory once, and each mutant is written over
the copy and run there, one at a time (``--jobs N``: N at a time, each in a copy of its own), with
``pytest -x -q -p no:cacheprovider --hypothesis-seed=0`` and the copy first on the path; hypothesis'
example database in the copy is emptied before each run, so no mutant replays the examples that
failed for another. The tests that killed mutants run first, the most recent killer first (mutants
run in source order, and neighbours are often killed by the same test), then the others, quickest
first: a killed mutant fails after a test or two instead of after the whole file. A mutant is
*killed* when the tests fail (or fail to import), *timed out* when they run past ``--timeout``
(counted as killed: an endless loop is noticed), and *survives* when they pass. Mutants listed in
``--equivalent`` (they cannot change behaviour: the reason is recorded) are set aside before
sampling, so a seeded sample is a sample of the mutants that count.

By default each run is a fork of a process that imported pytest and the third-party libraries
once (``--preload``), which saves most of pytest's start-up per mutant; ``--no-fork`` starts a
fresh interpreter per mutant instead (the same results, slower). The mutated module's bytecode
is removed before each run, so a mutant can never run a stale ``.pyc`` of another one; the rest
of the copy keeps its bytecode, so the tests are compiled (and their asserts rewritten) once.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

COMPARE_SWAPS = {
    ast.Lt: [ast.LtE, ast.GtE], ast.LtE: [ast.Lt, ast.Gt], ast.Gt: [ast.GtE, ast.LtE],
    ast.GtE: [ast.Gt, ast.Lt], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
}
BINOP_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
    ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr, ast.BitXor: ast.BitOr,
}
SIMPLE_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Raise, ast.Return,
                     ast.Delete, ast.Assert, ast.Break, ast.Continue)
DEFAULT_PRELOAD = ("pytest", "hypothesis", "numpy", "aiohttp", "sortedcontainers",
                   "cryptography.hazmat.primitives.poly1305", "yaml", "psutil")


@dataclass
class Mutant:
    line: int
    col: int
    mutation: str     # what changed, e.g. "`<` -> `<=`"
    text: str         # the original line, stripped: with col and mutation, what identifies it
    start: int        # byte offsets of the replaced span in the source
    end: int
    replacement: str
    occurrence: int = 1  # which of the mutants with the same key this is, in source order

    @property
    def key(self) -> tuple:
        return (self.text, self.col, self.mutation)

    def label(self, path: str) -> str:
        return f"{path}:{self.line}:{self.col}: {self.mutation}    | {self.text}"


def _op(op) -> str:
    return ast.unparse(ast.Compare(ast.Name("a"), [op], [ast.Name("b")]))[2:-2] if isinstance(
        op, ast.cmpop) else ast.unparse(ast.BinOp(ast.Name("a"), op, ast.Name("b")))[2:-2]


class _Collector(ast.NodeVisitor):
    """Walks a module and lists its mutants (as text splices at byte offsets)."""

    def __init__(self, source: bytes):
        self.source = source
        self.lines = source.split(b"\n")
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line) + 1)
        self.mutants: list[Mutant] = []

    def span(self, node) -> tuple[int, int]:
        return (self.offsets[node.lineno - 1] + node.col_offset,
                self.offsets[node.end_lineno - 1] + node.end_col_offset)

    def add(self, node, mutation: str, new: str, statement: bool = False) -> None:
        start, end = self.span(node)
        extra = node.end_lineno - node.lineno  # keep the line count: later lines keep their numbers
        if statement:
            replacement = "pass" + "\n" * extra
        else:
            replacement = "(" + new + "\n" * extra + ")"
        text = self.lines[node.lineno - 1].decode().strip()
        self.mutants.append(Mutant(node.lineno, node.col_offset, mutation, text, start, end, replacement))

    # -- what is left alone ------------------------------------------------------------------------

    def visit_FunctionDef(self, node) -> None:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring
        for d in node.decorator_list:
            self.visit(d)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        for stmt in body:
            self.visit(stmt)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node) -> None:
        for base in node.bases:
            self.visit(base)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        for stmt in body:
            self.visit(stmt)

    def visit_Module(self, node) -> None:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        for stmt in body:
            if isinstance(stmt, ast.ImportFrom | ast.Import):
                continue
            self.visit(stmt)

    def visit_AnnAssign(self, node) -> None:
        if node.value is not None:
            self._statement(node)
            self.visit(node.value)

    def visit_JoinedStr(self, node) -> None:
        pass  # f-strings: messages

    # -- mutations -----------------------------------------------------------------------------------

    def _statement(self, node) -> None:
        what = self.lines[node.lineno - 1].decode().strip()  # the source's own spelling
        if len(what) > 60:
            what = what[:57] + "..."
        self.add(node, f"delete `{what}`", "", statement=True)

    def generic_visit(self, node) -> None:
        if isinstance(node, SIMPLE_STATEMENTS) and not (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            self._statement(node)
        super().generic_visit(node)

    def visit_Compare(self, node) -> None:
        for i, op in enumerate(node.ops):
            for new in COMPARE_SWAPS.get(type(op), ()):
                ops = list(node.ops)
                ops[i] = new()
                changed = ast.Compare(node.left, ops, node.comparators)
                self.add(node, f"`{_op(op)}` -> `{_op(new())}`", ast.unparse(changed))
        self.generic_visit(node)

    def visit_BinOp(self, node) -> None:
        new = BINOP_SWAPS.get(type(node.op))
        if new is not None:
            changed = ast.BinOp(node.left, new(), node.right)
            self.add(node, f"`{_op(node.op)}` -> `{_op(new())}`", ast.unparse(changed))
        self.generic_visit(node)

    def visit_AugAssign(self, node) -> None:
        new = BINOP_SWAPS.get(type(node.op))
        if new is not None:
            start, end = self.span(node)
            changed = ast.AugAssign(node.target, new(), node.value)
            text = self.lines[node.lineno - 1].decode().strip()
            self.mutants.append(Mutant(node.lineno, node.col_offset,
                                       f"`{_op(node.op)}=` -> `{_op(new())}=`", text, start, end,
                                       ast.unparse(changed) + "\n" * (node.end_lineno - node.lineno)))
        self.generic_visit(node)

    def visit_BoolOp(self, node) -> None:
        new, name = (ast.Or, "or") if isinstance(node.op, ast.And) else (ast.And, "and")
        old = "and" if name == "or" else "or"
        self.add(node, f"`{old}` -> `{name}`", ast.unparse(ast.BoolOp(new(), node.values)))
        self.generic_visit(node)

    def visit_UnaryOp(self, node) -> None:
        if isinstance(node.op, ast.Not):
            self.add(node, "drop `not`", ast.unparse(node.operand))
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self.add(node, "drop unary `-`", ast.unparse(node.operand))
        self.generic_visit(node)

    def visit_Constant(self, node) -> None:
        value = node.value
        if value is True or value is False:
            self.add(node, f"`{value}` -> `{not value}`", repr(not value))
        elif type(value) is int:
            for new in (value + 1, value - 1):
                self.add(node, f"`{value}` -> `{new}`", repr(new))

    def visit_Return(self, node) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self.add(node.value, "return value -> None", "None")
        self.generic_visit(node)

    def _negate(self, node, what: str) -> None:
        self.add(node.test, f"negate the `{what}` condition", f"not ({ast.unparse(node.test)})")

    def visit_If(self, node) -> None:
        if _is_type_checking(node.test):  # imports and aliases for the type checker only
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self._negate(node, "if")
        self.generic_visit(node)

    def visit_While(self, node) -> None:
        self._negate(node, "while")
        self.generic_visit(node)

    def visit_IfExp(self, node) -> None:
        self._negate(node, "... if ... else ...")
        self.generic_visit(node)


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``: a condition false whenever the code runs."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _annotation_free(tree: ast.AST) -> ast.AST:
    """The tree without annotations (types are not behaviour)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
        elif isinstance(node, ast.arg):
            node.annotation = None
        elif isinstance(node, ast.AnnAssign):
            node.annotation = ast.Name("_", ctx=ast.Load())
    return tree


def collect(source: bytes) -> list[Mutant]:
    """Every mutant of ``source`` that still compiles, in source order."""
    collector = _Collector(source)
    collector.visit(_annotation_free(ast.parse(source)))
    mutants = []
    seen = set()
    for m in sorted(collector.mutants, key=lambda m: (m.start, m.end, m.mutation)):
        if (m.start, m.end, m.replacement) in seen:
            continue
        seen.add((m.start, m.end, m.replacement))
        try:
            compile(apply(source, m), "<mutant>", "exec")
        except SyntaxError:
            continue
        mutants.append(m)
    count: dict[tuple, int] = {}
    for m in mutants:  # identical lines at the same column share a key: number them
        m.occurrence = count[m.key] = count.get(m.key, 0) + 1
    return mutants


def apply(source: bytes, m: Mutant) -> bytes:
    return source[:m.start] + m.replacement.encode() + source[m.end:]


def load_equivalents(path: str | None, relpath: str) -> dict[tuple, str]:
    """``[{"file", "text", "col", "mutation", "reason"}, ...]`` -> {key + (occurrence,): reason} for
    ``relpath``. An entry stands for every mutant with its key, or with ``"occurrence": n`` for the
    n-th of them in source order only (where identical lines differ in meaning)."""
    if not path:
        return {}
    with open(path) as f:
        entries = json.load(f)
    out = {}
    for e in entries:
        if not e.get("reason"):
            raise SystemExit(f"{path}: an equivalent mutant needs a reason: {e}")
        if e["file"] == relpath:
            out[(e["text"], e["col"], e["mutation"], e.get("occurrence"))] = e["reason"]
    return out


def is_equivalent(m: Mutant, equivalents: dict[tuple, str]) -> bool:
    return (*m.key, None) in equivalents or (*m.key, m.occurrence) in equivalents


# -- running the tests -------------------------------------------------------------------------------


ORDER_ENV = "MUTATE_TEST_ORDER"  # with --no-fork: a JSON file with the node ids to run first
REPORT_ENV = "MUTATE_REPORT"  # where a run writes which test failed first and how long each took


class TestOrder:
    """A pytest plugin for one run: the tests in ``first`` run first, in that order, the others after
    them in the order collected; the first failing test and each test's duration go to ``report``."""

    def __init__(self, first: list[str], report: str):
        self.first = first
        self.report = report
        self.failed: str | None = None
        self.durations: dict[str, float] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        rank = {nodeid: i for i, nodeid in enumerate(self.first)}
        items[:] = sorted(items, key=lambda item: rank.get(item.nodeid, len(rank)))  # stable

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and self.failed is None:
            self.failed = report.nodeid
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        with open(self.report, "w") as f:
            json.dump({"failed": self.failed, "durations": self.durations}, f)


def pytest_configure(config) -> None:
    """With ``-p mutate`` (the --no-fork runs): the TestOrder that the environment describes."""
    if os.environ.get(REPORT_ENV):
        with open(os.environ[ORDER_ENV]) as f:
            first = json.load(f)
        config.pluginmanager.register(TestOrder(first, os.environ[REPORT_ENV]), "mutate-test-order")


class Killers:
    """Which tests to run first: the one that killed the last mutant (mutants run in source order,
    and neighbours are often killed by the same test), then those that killed earlier ones, most
    recent first, then the rest, quickest first (as timed in the unmutated run)."""

    def __init__(self):
        self.recent: list[str] = []
        self.durations: dict[str, float] = {}

    def killed_by(self, nodeid: str) -> None:
        if nodeid in self.recent:
            self.recent.remove(nodeid)
        self.recent.insert(0, nodeid)

    def order(self) -> list[str]:
        known = set(self.recent)
        return self.recent + sorted((t for t in self.durations if t not in known), key=self.durations.get)


class Run:
    """One pytest run in a copy, started in a process group of its own."""

    def __init__(self, runner: Runner, first: list[str], timeout: float, module: str):
        self.runner = runner
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.report = os.path.join(runner.copy, ".mutate-report.json")
        # the mutated module's bytecode: a mutant of the same size written within the same second
        # as the previous one would otherwise run the previous one's .pyc (the rest of the copy
        # keeps its bytecode: the test modules are compiled and their asserts rewritten once)
        cache = os.path.join(runner.copy, os.path.dirname(module), "__pycache__")
        stem = os.path.splitext(os.path.basename(module))[0] + "."
        pycs = [os.path.join(cache, n) for n in os.listdir(cache) if n.startswith(stem)] \
            if os.path.isdir(cache) else []
        for stale in (self.report, os.path.join(runner.copy, ".hypothesis"), *pycs):
            # no run reads what an earlier one left: hypothesis would replay the examples that
            # failed for the previous mutant first, and the sample's outcomes would depend on its order
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            elif os.path.exists(stale):
                os.remove(stale)
        self.process = runner.spawn(first, self.report)  # a forked pid, or a Popen
        self.pid = self.process if isinstance(self.process, int) else self.process.pid
        self.code: int | None = None

    def poll(self) -> bool:
        """Whether the run ended (exited or timed out, then killed)."""
        if isinstance(self.process, int):
            done_pid, status = os.waitpid(self.pid, os.WNOHANG)
            code = os.waitstatus_to_exitcode(status) if done_pid else None
        else:
            code = self.process.poll()
        if code is not None:
            self.code = code
            self.took = time.monotonic() - self.started
            return True
        if time.monotonic() > self.deadline:
            self.took = time.monotonic() - self.started
            self.kill()
            return True
        return False

    def kill(self) -> None:
        """End the run and whatever it started."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if isinstance(self.process, int):
            os.waitpid(self.pid, 0)
        else:
            self.process.wait()

    def outcome(self) -> dict:
        """What the run reported: the first failing test and the durations (empty if it wrote nothing)."""
        try:
            with open(self.report) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


class Runner:
    """Runs pytest in one copy: forked from a process with the libraries imported, or afresh."""

    def __init__(self, copy: str, tests: list[str], pytest_args: list[str], fork: bool):
        self.copy = copy
        # a fixed hypothesis seed: the same mutant gets the same examples on every run
        self.args = ["-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *pytest_args, *tests]
        self.fork = fork
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [copy, *filter(None, [os.environ.get("PYTHONPATH")])]))

    def run(self, module: str, timeout: float, first: list[str] = ()) -> tuple[int | None, float, dict]:
        """(pytest's exit code or None when timed out, seconds, what the run reported)."""
        run = Run(self, list(first), timeout, module)
        try:
            while not run.poll():
                time.sleep(0.02)
        finally:  # interrupted: the run and whatever it started go
            if run.code is None:
                run.kill()
        return run.code, run.took, run.outcome()

    def spawn(self, first: list[str], report: str) -> int | subprocess.Popen:
        if not self.fork:
            order = os.path.join(self.copy, ".mutate-order.json")
            with open(order, "w") as f:
                json.dump(first, f)
            env = dict(self.env, **{ORDER_ENV: order, REPORT_ENV: report})
            env["PYTHONPATH"] += os.pathsep + os.path.dirname(os.path.abspath(__file__))
            return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "mutate", *self.args],
                                    cwd=self.copy, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        pid = os.fork()
        if pid == 0:  # the child: run pytest in the copy, never return
            try:
                os.setsid()
                os.chdir(self.copy)
                os.environ.clear()
                os.environ.update(self.env)
                sys.path.insert(0, self.copy)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                import pytest
                code = int(pytest.main(self.args, plugins=[TestOrder(first, report)]))
            except BaseException:
                code = 3
            os._exit(code)
        return pid


def _copy_tree(root: str, dest: str, names: list[str]) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "*.egg-info", ".pytest_cache")
    for name in names:
        src = os.path.join(root, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
        elif os.path.exists(src):
            shutil.copy2(src, os.path.join(dest, name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the module to mutate, relative to the project root")
    parser.add_argument("--tests", nargs="+", required=True, help="test files or directories (pytest args)")
    parser.add_argument("--sample", type=int, default=0, help="run a seeded sample of N mutants (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--equivalent", help="JSON list of mutants set aside as equivalent, with reasons")
    parser.add_argument("--timeout", type=float, default=0,
                        help="seconds per mutant (default: 3x the unmutated run, at least 20)")
    parser.add_argument("--pytest-args", default="", help="more pytest options, one string")
    parser.add_argument("--no-fork", dest="fork", action="store_false",
                        help="a fresh interpreter per mutant instead of a fork")
    parser.add_argument("--preload", default=",".join(DEFAULT_PRELOAD),
                        help="modules the fork server imports once (not the project's own)")
    parser.add_argument("--match", action="append", default=[],
                        help="only the mutants whose label contains this text (repeatable; before sampling)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="mutants run at a time, each in a copy of its own (default 1)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--root", default=os.getcwd(), help="the project root (default: here)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the copy is removed and the run ended

    root = os.path.abspath(args.root)
    relpath = os.path.relpath(os.path.abspath(os.path.join(root, args.file)), root)
    with open(os.path.join(root, relpath), "rb") as f:
        source = f.read()
    mutants = collect(source)
    equivalents = load_equivalents(args.equivalent, relpath)
    if args.match:
        mutants = [m for m in mutants if any(text in m.label(relpath) for text in args.match)]
    set_aside = [m for m in mutants if is_equivalent(m, equivalents)]
    pool = [m for m in mutants if not is_equivalent(m, equivalents)]
    unmatched = {e for e in equivalents if e[3] is None} - {(*m.key, None) for m in mutants}
    unmatched |= {e for e in equivalents if e[3] is not None} - {(*m.key, m.occurrence) for m in mutants}
    for key in sorted(unmatched) if not args.match else ():
        print(f"warning: an equivalent mutant no longer exists: {key}", file=sys.stderr)
    if args.list:
        for m in mutants:
            print(("(equivalent) " if is_equivalent(m, equivalents) else "") + m.label(relpath))
        return 0
    chosen = pool
    if args.sample and args.sample < len(pool):
        chosen = sorted(random.Random(args.seed).sample(pool, args.sample), key=lambda m: m.start)

    top = sorted({relpath.split(os.sep)[0], *(t.split(os.sep)[0] for t in args.tests)})
    extra = [n for n in ("pyproject.toml", "setup.cfg", "pytest.ini", "tox.ini", "conftest.py")
             if os.path.exists(os.path.join(root, n))]
    results = {"file": relpath, "mutants": len(mutants), "equivalent": len(set_aside),
               "sampled": len(chosen), "seed": args.seed, "killed": 0, "timed_out": 0,
               "survived": 0, "survivors": []}
    if args.fork:
        for name in filter(None, args.preload.split(",")):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        # what is imported now is never collected: the runs' collections (pytest forces a few at
        # its end) skip it, and the forked children do not copy the pages it lies on
        gc.collect()
        gc.freeze()
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        runners = []
        for job in range(max(1, args.jobs)):
            copy = os.path.join(tmp, str(job))
            os.mkdir(copy)
            _copy_tree(root, copy, top + extra)
            runners.append(Runner(copy, args.tests, shlex.split(args.pytest_args), args.fork))
        code, baseline, report = runners[0].run(relpath, args.timeout or 600)
        if code != 0:
            print(f"the tests fail without any mutation (exit code {code}): fix them first", file=sys.stderr)
            return 2
        killers = Killers()
        killers.durations = report.get("durations", {})
        timeout = args.timeout or max(20.0, 3 * baseline)
        print(f"{relpath}: {len(mutants)} mutants, {len(set_aside)} set aside as equivalent, "
              f"running {len(chosen)} (seed {args.seed}, {len(runners)} at a time); unmutated run "
              f"{baseline:.1f}s, timeout {timeout:.0f}s", file=sys.stderr)
        waiting = list(enumerate(chosen, 1))[::-1]
        running: dict[int, tuple[int, Mutant, Run]] = {}  # runner index -> the mutant it runs
        try:
            while waiting or running:
                for r, runner in enumerate(runners):
                    if r not in running and waiting:
                        i, m = waiting.pop()
                        with open(os.path.join(runner.copy, relpath), "wb") as f:
                            f.write(apply(source, m))
                        running[r] = (i, m, Run(runner, killers.order(), timeout, relpath))
                time.sleep(0.02)
                for r, (i, m, run) in list(running.items()):
                    if not run.poll():
                        continue
                    del running[r]
                    failed = run.outcome().get("failed")
                    if run.code is None:
                        outcome = "timed_out"
                    elif run.code:  # failed, or could not even import (4): the unmutated run passed
                        outcome = "killed"
                        if failed:
                            killers.killed_by(failed)
                    else:
                        outcome = "survived"
                        results["survivors"].append(dict(asdict(m), label=m.label(relpath)))
                    results[outcome] += 1
                    by = f"  (by {failed})" if failed and outcome == "killed" else ""
                    print(f"[{i}/{len(chosen)}] {outcome:9} {run.took:5.1f}s  {m.label(relpath)}{by}",
                          file=sys.stderr)
        finally:  # interrupted: the runs and whatever they started go
            for _, _, run in running.values():
                run.kill()
    results["survivors"].sort(key=lambda s: s["start"])
    counted = results["sampled"]
    results["score"] = round((results["killed"] + results["timed_out"]) / counted, 4) if counted else None
    if args.json:
        for s in results["survivors"]:
            for k in ("start", "end", "replacement"):
                s.pop(k)
        print(json.dumps(results, indent=2))
    else:
        print(f"\n{relpath}: {results['killed']} killed, {results['timed_out']} timed out, "
              f"{results['survived']} survived of {counted} sampled "
              f"({results['mutants']} mutants, {results['equivalent']} set aside as equivalent): "
              f"{100 * (results['score'] or 0):.1f} % killed")
        for s in results["survivors"]:
            print("  survived:", s["label"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
