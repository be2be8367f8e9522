"""Judge a program's tests outside the program: what the code reward trusts.

A program under test can do anything inside its own process: end it early with ``exit()`` or
``os._exit(0)``, hook ``atexit`` or ``sys.excepthook``, return objects whose ``__eq__`` is always
True, rewrite the harness's functions. So nothing the process says about itself is believed.
Instead the tests' ``assert`` statements are rewritten (here, in the trusted parent) into calls
that only *evaluate the operands* inside the sandbox and send their values back, serialised with
exact type checks (plain ``int``, ``str``, ``list``, ... only; subclasses and other objects are
refused). The comparisons themselves run here, on values rebuilt from those records, so no
object of the program takes part in them.

The expected values of a top-level ``assert`` are kept here when they are literals
(``assert f(2) == 4``: the ``4`` never enters the sandbox), so a program that forges the records
would have to know the answers. Operands that are not literals (a loop variable, ``f(1)`` on both
sides) are evaluated in the sandbox too; a program that read the tests out of its own memory could
forge those records, but not with early exits or lying objects. Success needs every top-level
check reported exactly once, every record passing, and the harness's final record.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass

_CHECK = "__tether_check__"

_OPERATORS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}

_LITERAL = object()  # marks an operand kept here rather than evaluated in the sandbox


@dataclass(frozen=True)
class Condition:
    """One conjunct of an assert: ``operands[0] ops[0] operands[1] ...``, or the truth of one
    operand when there are no ops. An operand is ``(_LITERAL, value)`` or ``(None, k)``: the k-th
    value the sandbox sends for this check."""

    ops: tuple
    operands: tuple[tuple[object, object], ...]
    negate: bool = False


@dataclass(frozen=True)
class Check:
    conditions: tuple[Condition, ...]
    top_level: bool  # must be reported exactly once; nested ones (loops, functions) any times


def build_harness(code: str, tests: str, *, report_fd_name: str = "__report_fd__"
                  ) -> tuple[str, list[Check]]:
    """The program to run in the sandbox for ``code`` + ``tests``, and the checks to judge it by.

    Raises SyntaxError when the tests do not parse (the dataset's fault, not the completion's).
    """
    tree = ast.parse(tests)
    checks: list[Check] = []
    top_level = set(map(id, tree.body))
    rewritten = _AssertRewriter(checks, top_level).visit(tree)
    ast.fix_missing_locations(rewritten)
    program = _HARNESS.format(code=code, tests=ast.unparse(rewritten), check=_CHECK,
                              report_fd=report_fd_name)
    return program, checks


def judge(report: str, checks: list[Check]) -> tuple[bool, str]:
    """(passed, why) from the records the harness sent."""
    seen = [0] * len(checks)
    lines = report.splitlines()
    if not lines or lines[-1] != "['end']":
        return False, "the tests did not run to the end"
    for line in lines[:-1]:
        try:
            # Records are repr()s of lists of str, int and bool: literals, so literal_eval reads
            # them without running anything (and without importing json into the sandbox).
            check_id, sent = ast.literal_eval(line)
            if type(check_id) is not int or not 0 <= check_id < len(checks):
                raise ValueError(f"no check {check_id!r}")
            check = checks[check_id]
            values = [_rebuild(tagged) for tagged in sent]
        except (ValueError, TypeError, IndexError, KeyError, SyntaxError, RecursionError,
                MemoryError) as error:
            return False, f"malformed record {line[:80]!r}: {error}"
        seen[check_id] += 1
        if not all(_holds(condition, values) for condition in check.conditions):
            return False, f"assert number {check_id + 1} failed"
    for check_id, check in enumerate(checks):
        if check.top_level and seen[check_id] != 1:
            return False, f"assert number {check_id + 1} reported {seen[check_id]} times"
    return True, "all asserts passed"


# ---------------------------------------------------------------- rewriting the tests


class _AssertRewriter(ast.NodeTransformer):
    def __init__(self, checks: list[Check], top_level: set[int]):
        self.checks, self.top_level = checks, top_level

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        top = id(node) in self.top_level
        sent: list[ast.expr] = []

        def operand(expr: ast.expr) -> tuple[object, object]:
            if top:
                try:
                    return _LITERAL, ast.literal_eval(expr)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    pass
            sent.append(expr)
            return None, len(sent) - 1

        conditions = []
        for expr in _conjuncts(node.test):
            negate = isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not)
            if negate:
                expr = expr.operand
            if isinstance(expr, ast.Compare) and not _identity_of_objects(expr):
                operands = tuple(operand(e) for e in [expr.left, *expr.comparators])
                ops = tuple(_OPERATORS[type(op)] for op in expr.ops)
            else:
                operands, ops = (operand(expr),), ()
            conditions.append(Condition(ops=ops, operands=operands, negate=negate))
        self.checks.append(Check(conditions=tuple(conditions), top_level=top))
        # __tether_check__(ID, (operand, ...)): evaluated where the assert stood, in its scope.
        call = ast.Call(func=ast.Name(id=_CHECK, ctx=ast.Load()),
                        args=[ast.Constant(len(self.checks) - 1), ast.Tuple(elts=sent, ctx=ast.Load())],
                        keywords=[])
        return ast.copy_location(ast.Expr(call), node)


def _identity_of_objects(compare: ast.Compare) -> bool:
    """``a is b`` between two objects: identity cannot be judged on rebuilt copies, so the
    sandbox evaluates it (``is`` cannot be overridden, and the result must be a plain bool).
    ``x is None`` / ``is True`` / ``is False`` are judged here like the other comparisons."""
    singletons = (None, True, False)
    return any(isinstance(op, (ast.Is, ast.IsNot))
               and not (isinstance(right, ast.Constant) and any(right.value is v for v in singletons))
               for op, right in zip(compare.ops, compare.comparators))


def _conjuncts(test: ast.expr) -> list[ast.expr]:
    """``a and b and c`` → [a, b, c], so an ``and`` inside the sandbox cannot be short-cut."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return [part for value in test.values for part in _conjuncts(value)]
    return [test]


# ---------------------------------------------------------------- judging the records


def _rebuild(tagged: list) -> object:
    """A plain value from its tagged form (the inverse of the harness's ``_tagged``)."""
    kind, *rest = tagged
    if kind == "none":
        return None
    if kind == "bool":
        return _exact(rest[0], bool)
    if kind == "int":
        return int(_exact(rest[0], str), 16)
    if kind == "float":
        return float.fromhex(_exact(rest[0], str))
    if kind == "complex":
        return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
    if kind == "str":
        return _exact(rest[0], str)
    if kind == "bytes":
        return bytes.fromhex(_exact(rest[0], str))
    if kind in ("list", "tuple", "set", "frozenset"):
        items = [_rebuild(item) for item in _exact(rest[0], list)]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
    if kind == "dict":
        return {_rebuild(key): _rebuild(value) for key, value in _exact(rest[0], list)}
    raise ValueError(f"unknown kind {kind!r}")


def _exact(value: object, kind: type) -> object:
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _holds(condition: Condition, sent: list) -> bool:
    values = [value if source is _LITERAL else sent[value] for source, value in condition.operands]
    try:
        if not condition.ops:
            result = bool(values[0])
        else:
            result = all(op(a, b) for op, a, b in zip(condition.ops, values, values[1:]))
    except Exception:  # e.g. "<" between str and int: the assert would have raised
        return False
    return result != condition.negate


# The program run in the sandbox. The solution and the tests run in one namespace, as if they
# were one file; the harness's helpers are bound before the solution runs.
_HARNESS = '''\
import builtins as _builtins
from posix import write as _write  # built in; importing os would cost the run a few ms


def _make_check(report_fd, write=_write, repr=repr, type=type, TypeError=TypeError):
    plain_containers = {{list: "list", tuple: "tuple", set: "set", frozenset: "frozenset"}}

    def tagged(value, depth):
        kind = type(value)
        if depth > 40:  # the parent's parser allows 200 nested brackets, two per level
            raise TypeError("a value nested more than 40 deep")
        if value is None:
            return ["none"]
        if kind is bool:
            return ["bool", value]
        if kind is int:
            return ["int", format(value, "x")]
        if kind is float:
            return ["float", value.hex()]
        if kind is complex:
            return ["complex", value.real.hex(), value.imag.hex()]
        if kind is str:
            return ["str", value]
        if kind is bytes:
            return ["bytes", value.hex()]
        if kind in plain_containers:
            return [plain_containers[kind], [tagged(item, depth + 1) for item in value]]
        if kind is dict:
            return ["dict", [[tagged(k, depth + 1), tagged(v, depth + 1)] for k, v in value.items()]]
        raise TypeError(f"the tests compared a {{kind.__name__}}: only plain values (None, bool, "
                        "int, float, complex, str, bytes, list, tuple, set, frozenset, dict) count")

    def send(record):
        data = (repr(record) + "\\n").encode("utf-8", "surrogatepass")
        while data:
            data = data[write(report_fd, data):]

    def check(check_id, operands):
        send([check_id, [tagged(value, 0) for value in operands]])

    return check, send


{check}, _send = _make_check({report_fd})
del _make_check
_namespace = {{"__name__": "__main__", "__builtins__": _builtins, "{check}": {check}}}
exec(compile({code!r}, "solution.py", "exec"), _namespace)
exec(compile({tests!r}, "tests.py", "exec"), _namespace)
_send(["end"])
'''
