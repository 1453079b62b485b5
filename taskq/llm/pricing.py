"""What a model call costs: a small price table in US dollars per million tokens.

The figures are list prices for standard (non-batch, non-cached) input and output tokens; edit
:data:`PRICES` or pass your own table to :func:`cost` for negotiated rates. A model not in the
table costs by its family (``opus``, ``sonnet``, ``haiku``), else :data:`DEFAULT_PRICE`.
"""

from __future__ import annotations

from typing import NamedTuple


class Price(NamedTuple):
    """US dollars per million tokens."""

    input: float
    output: float


PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0),
    "claude-opus-4-1": Price(15.0, 75.0),
    "claude-sonnet-4-6": Price(3.0, 15.0),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-3-5-haiku-latest": Price(0.8, 4.0),
}
FAMILIES: dict[str, Price] = {"opus": Price(5.0, 25.0), "sonnet": Price(3.0, 15.0), "haiku": Price(1.0, 5.0)}
DEFAULT_PRICE = Price(3.0, 15.0)


def price_of(model: str, table: dict[str, Price] | None = None) -> Price:
    """The price of ``model``: exact name, then its name without a date suffix, then its family."""
    table = PRICES if table is None else table
    if model in table:
        return table[model]
    base = model.rsplit("-", 1)[0] if model[-8:].isdigit() else model
    if base in table:
        return table[base]
    for family, price in FAMILIES.items():
        if family in model:
            return price
    return DEFAULT_PRICE


def cost(model: str, input_tokens: int, output_tokens: int, table: dict[str, Price] | None = None) -> float:
    """US dollars for one call, rounded to a millionth of a dollar."""
    price = price_of(model, table)
    return round((input_tokens * price.input + output_tokens * price.output) / 1_000_000, 6)
