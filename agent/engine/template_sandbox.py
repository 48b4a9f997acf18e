"""The Jinja sandbox chat templates run in, bounded in time and memory.

A chat template comes with a downloaded repo, so it is code the user did not write. Jinja's own
sandbox stops it from reaching Python internals but not from spending: nested ``range`` loops run
for hours, ``'a' * 3000000000`` allocates 3 GB (at compile time even, when Jinja folds constants in
a branch that never runs). This environment adds, per render:

- a step budget: every loop iteration (recursive loops' included) and every call counts one step;
  past ``MAX_STEPS`` steps, or past ``MAX_SECONDS`` of wall time (checked every few hundred steps),
  the render stops with ``RenderBudgetExceeded``;
- a size bound: no string or list a template builds (``*``, ``+``, ``~``, ``%``, ``str.format``,
  ``replace``, ``join``, ``center``/``ljust``/``rjust``/``zfill``, the ``center``/``indent``/``format``
  filters) may exceed ``MAX_LENGTH`` items, and neither may the output. Operations whose result
  size is known in advance are refused before they allocate;
- no constant folding of the intercepted operators, so compiling allocates nothing the source does
  not already hold.

What a caller may rely on: ``render_bounded`` raises ``RenderBudgetExceeded`` for a spent budget and
lets every other error of the template through for the caller to word; a budget is per thread, so
renders on several threads at once do not share one.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_STEPS = 500_000
"""Loop iterations plus calls in one render: real chat templates take a few per message."""
MAX_SECONDS = 5.0
"""Wall time of one render, checked every ``_CLOCK_EVERY`` steps."""
MAX_LENGTH = 1 << 25
"""Items (characters, elements) in any one string or list a template builds, and in its output
(32 Mi: twice the largest HTTP body the agent accepts)."""
MAX_POWER_BITS = 4096
"""Bits in the result of ``**`` on integers."""
_CLOCK_EVERY = 256
_STEP_FILTER = "_hflocal_counted"
_BIG_NUMBER = re.compile(r"\d{8,}")
"""A width or precision of 8+ digits in a format string: 10^7 characters and more."""


class RenderBudgetExceeded(Exception):
    """The template spent its step, time or size budget; the message says which."""


class _Budget:
    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS

    def tick(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise RenderBudgetExceeded(f"it took more than {MAX_STEPS} loop iterations and calls")
        if self.steps % _CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise RenderBudgetExceeded(f"it ran for more than {MAX_SECONDS:g} s")


_local = threading.local()


def _budget() -> _Budget:
    budget: _Budget | None = getattr(_local, "budget", None)
    if budget is None:  # outside render_bounded (a template compiled and rendered directly): fresh
        budget = _local.budget = _Budget()
    return budget


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, bytes)) and len(value) > MAX_LENGTH:
        raise RenderBudgetExceeded(f"{what} built a value of {len(value)} items (at most {MAX_LENGTH})")
    return value


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_LENGTH:
        raise RenderBudgetExceeded(f"{what} would build a value of {size} items (at most {MAX_LENGTH})")


_NESTED_WIDTH = re.compile(r"%[^a-zA-Z%]*\*|\{[^{}]*\{")
"""A width taken from the arguments: ``%*d``, ``{:{w}}``."""


def _check_format_string(fmt: Any, what: str, args: Any = ()) -> None:
    if not isinstance(fmt, str):
        return
    if _BIG_NUMBER.search(fmt):
        raise RenderBudgetExceeded(f"{what} asks for a field width or precision of 10^7 or more")
    if _NESTED_WIDTH.search(fmt):
        values = args.values() if isinstance(args, dict) else args if isinstance(args, (tuple, list)) else (args,)
        if any(isinstance(v, int) and abs(v) >= 10**7 for v in values):
            raise RenderBudgetExceeded(f"{what} takes a field width of 10^7 or more from its arguments")


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, bytes, range, dict)) else None


def _precheck_binop(op: str, left: Any, right: Any) -> None:
    if op == "*":
        for seq, times in ((left, right), (right, left)):
            size = _sized(seq)
            if size is not None and isinstance(times, int) and not isinstance(seq, (range, dict)):
                _refuse_size(size * max(times, 0), "'*'")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if right * abs(left).bit_length() > MAX_POWER_BITS:
                raise RenderBudgetExceeded(f"'**' would build an integer of more than {MAX_POWER_BITS} bits")
    elif op == "%" and isinstance(left, str):
        _check_format_string(left, "'%'", right)
    elif op == "+":
        a, b = _sized(left), _sized(right)
        if a is not None and b is not None:
            _refuse_size(a + b, "'+'")


def _precheck_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse before it runs a ``str`` method whose result would be too big."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format in a function
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _refuse_size(args[0], f"str.{name}")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        grows = len(args[1]) - len(args[0])
        if grows > 0:
            _refuse_size(len(owner) + grows * (owner.count(args[0]) if args[0] else len(owner) + 1), "str.replace")
    elif name == "join" and args and _sized(args[0]) is not None:
        _refuse_size(len(owner) * max(len(args[0]) - 1, 0), "str.join")
    elif name == "expandtabs":
        width = args[0] if args and isinstance(args[0], int) else 8
        _refuse_size(len(owner) + owner.count("\t") * max(width, 0), "str.expandtabs")
    elif name in ("format", "format_map"):
        given = args[0] if name == "format_map" and args else (*args, *kwargs.values())
        _check_format_string(owner, f"str.{name}", given)


class _Counted:
    """A loop's iterable that spends one step per item; keeps ``len`` for ``loop.length``."""

    def __init__(self, iterable: Any) -> None:
        self._iterable = iterable

    def __len__(self) -> int:
        return len(self._iterable)

    def __iter__(self) -> Iterator[Any]:
        budget = _budget()
        for item in self._iterable:
            budget.tick()
            yield item


def _counted(iterable: Any) -> Any:
    return _Counted(iterable)


def _wrap_filter(func: Any, name: str, sized_args: tuple[int, ...] = (), format_arg: bool = False) -> Any:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if format_arg:
            _check_format_string(value, f"the {name} filter", (*args, *kwargs.values()))
        for index in sized_args:
            if index < len(args) and isinstance(args[index], int) and not isinstance(args[index], bool):
                _refuse_size(args[index] * (max(1, str(value).count("\n") + 1) if name == "indent" else 1),
                             f"the {name} filter")
            elif index < len(args) and isinstance(args[index], str) and name == "indent":
                _refuse_size(len(args[index]) * (str(value).count("\n") + 1), "the indent filter")
        return _check_size(func(value, *args, **kwargs), f"the {name} filter")

    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """``~`` (string concatenation) goes through a size check, like the intercepted operators."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Hugging Face's chat-template sandbox with a per-render budget (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters[_STEP_FILTER] = _counted
        self.filters["center"] = _wrap_filter(self.filters["center"], "center", sized_args=(0,))
        self.filters["indent"] = _wrap_filter(self.filters["indent"], "indent", sized_args=(0,))
        self.filters["format"] = _wrap_filter(self.filters["format"], "format", format_arg=True)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _STEP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any) -> Any:
        _budget().tick()
        _precheck_binop(operator_, left, right)
        return _check_size(self.binop_table[operator_](left, right), f"'{operator_}'")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        if isinstance(__obj, LoopContext) and args:  # ``loop(children)`` in a recursive loop: count those too
            args = (_Counted(args[0]), *args[1:])
        _precheck_call(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call")

    @staticmethod
    def checked_concat(value: Any) -> Any:
        return _check_size(value, "'~'")



def render_bounded(template: jinja2.Template, context: dict[str, Any]) -> str:
    """Render with a fresh budget on this thread; the output is bounded too."""
    previous = getattr(_local, "budget", None)
    _local.budget = _Budget()
    try:
        pieces: list[str] = []
        total = 0
        for piece in template.generate(**context):
            total += len(piece)
            if total > MAX_LENGTH:
                raise RenderBudgetExceeded(f"its output passed {MAX_LENGTH} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _local.budget = previous
