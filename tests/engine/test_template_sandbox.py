"""Hostile chat templates: every one ends in a ``TemplateError`` naming the template, in bounded
steps and memory, and the sandbox still renders what real templates do."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

from agent.engine.chat_template import ChatTemplate
from agent.engine.template_sandbox import MAX_LENGTH, MAX_STEPS
from agent.engine.types import TemplateError

USER = [{"role": "user", "content": "Hi"}]

BUDGET = {
    "nested ranges (10^10 iterations)":
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "a 3 GB string": "{% set x = 'a' * 3000000000 %}{{ x }}",
    "a list of 3e9 items": "{% set x = [0] * 3000000000 %}{{ x | length }}",
    "doubling with ~": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "doubling with +": "{% set ns = namespace(x='ab') %}{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
    "a huge power": "{{ 2 ** 100000000 }}",
    "a huge % width": "{{ '%3000000000d' % 1 }}",
    "a huge format width": "{{ '{:>3000000000}'.format(1) }}",
    "a width from the arguments of %": "{{ '%*d' % (3000000000, 1) }}",
    "a width from the arguments of format": "{{ '{:{w}}'.format(1, w=3000000000) }}",
    "a width from the arguments of the format filter": "{{ '%*d' | format(3000000000, 1) }}",
    "a huge center": "{{ 'a' | center(3000000000) }}",
    "a huge ljust": "{{ 'a'.ljust(3000000000) }}",
    "a huge join": "{{ ('a' * 1000000).join(range(100000)) }}",
    "a huge replace": "{{ ('a' * 1000000).replace('a', 'a' * 1000) }}",
    "a huge output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "a recursive loop kept shallow":
        "{% for x in range(100000) recursive %}{% if loop.depth < 4 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
}
FAILING = {
    "unbounded macro recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    "float overflow": ("{{ 10.0 ** 400 }}", "OverflowError"),
    "an exception message quoting a huge value": ("{{ raise_exception('x' * 10000000) }}", "more characters"),
}


def render(source: str, messages: list[dict[str, Any]] = USER) -> str:
    return ChatTemplate({"default": source}, {}).render(messages)


@pytest.mark.parametrize("source", BUDGET.values(), ids=BUDGET.keys())
def test_a_template_that_spends_too_much_is_stopped_with_its_name(source: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match="chat template 'default' exceeded its render budget") as raised:
            render(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400
    assert peak < 8 * MAX_LENGTH, f"peak {peak >> 20} MiB while rendering"  # 32 Mi characters, a few copies at most


@pytest.mark.parametrize(("source", "said"), FAILING.values(), ids=FAILING.keys())
def test_every_other_failure_is_a_short_template_error(source: str, said: str) -> None:
    with pytest.raises(TemplateError, match=said) as raised:
        render(source)
    assert len(str(raised.value)) < 500


def test_a_huge_constant_in_a_branch_that_never_runs_allocates_nothing_at_compile() -> None:
    tracemalloc.start()
    try:
        template = ChatTemplate({"default": "{% if false %}{% set x = 'a' * 3000000000 %}{% endif %}ok"}, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"compiling took {peak >> 20} MiB"
    assert template.render(USER) == "ok"


def test_real_template_idioms_still_render_within_the_budget() -> None:
    source = (
        "{% for m in messages %}{{ loop.index }}/{{ loop.length }} {{ m.role | upper }}: "
        "{{ m.content | trim }}{{ '-' * 3 }}{{ '%s!' % m.role }}{{ '{}'.format(m.role) | center(9) }}"
        "{% if not loop.last %}|{% endif %}{% endfor %}"
    )
    many = [{"role": "user" if i % 2 else "assistant", "content": f" m{i} "} for i in range(2000)]
    text = render(source, many)
    assert text.startswith("1/2000 ASSISTANT: m0---assistant!assistant|2/2000 USER: m1---user!   user  |")
    assert text.count("|") == 1999
    assert MAX_STEPS > 2000 * 10  # a long chat is far from the step budget


def test_the_budget_is_per_render() -> None:
    template = ChatTemplate({"default": "{% for i in range(500) %}{% for j in range(500) %}{% endfor %}{% endfor %}ok"}, {})
    assert 3 * 500 * 500 > MAX_STEPS > 500 * 501
    for _ in range(3):  # each render under the budget, together over it
        assert template.render(USER) == "ok"


def test_a_huge_or_absurdly_nested_source_is_an_error_not_a_hang() -> None:
    from agent.engine.chat_template import MAX_TEMPLATE_CHARS

    with pytest.raises(TemplateError, match=f"is {MAX_TEMPLATE_CHARS + 1} characters long"):
        render("x" * (MAX_TEMPLATE_CHARS + 1))
    with pytest.raises(TemplateError, match="chat template 'default' does not compile") as raised:
        render("{% if true %}" * 5000 + "x" + "{% endif %}" * 5000)
    assert len(str(raised.value)) < 500
