"""Schemathesis hooks for tests/serving/test_schema.py: non-finite numbers in bodies.

JSON Schema generators draw finite numbers only, and JSON libraries refuse to write
others. For cases that are already negative (data the schema refuses), this draws
whether to put ``NaN``, ``Infinity``, ``-Infinity`` or ``1e400`` (infinity once read)
in place of numbers in the body, which is then sent as that JSON text. Positive cases
stay as drawn, so that they stay schema-valid.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import strategies as st

_NON_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
_MARK = "\x00non-finite-{}\x00"


def _numbers_marked(value: Any, draw: st.DrawFn, tokens: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_marked(v, draw, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_marked(v, draw, tokens) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and draw(st.booleans()):
        tokens.append(draw(_NON_FINITE))
        return _MARK.format(len(tokens) - 1)
    return value


@schemathesis.hook
def flatmap_case(ctx: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    if meta is None or meta.generation.mode.is_positive or not isinstance(case.body, dict | list):
        return st.just(case)

    @st.composite
    def with_non_finite_numbers(draw: st.DrawFn) -> Any:
        tokens: list[str] = []
        marked = _numbers_marked(case.body, draw, tokens)
        if tokens:
            text = json.dumps(marked)
            for i, token in enumerate(tokens):
                text = text.replace(json.dumps(_MARK.format(i)), token)
            case.body = text.encode()  # sent as it is
        return case

    return with_non_finite_numbers()
