"""What a run spent: requests, cache hits, retries, tokens, and an estimated cost from a price table.

Prices are USD per million (input, output) tokens, list prices of the live API; the Batch API costs half.
A model is priced by its exact name or else its longest listed prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``);
``--prices '{"my-model": [0.2, 0.6]}'`` adds or overrides entries. Unknown models report tokens and no cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
BATCH_DISCOUNT = 0.5


def price_for(model: str, prices: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """``(input, output)`` USD per 1M tokens, by exact name or longest prefix; ``None`` when unlisted.

    >>> price_for("gpt-4o-mini-2024-07-18", DEFAULT_PRICES)
    (0.15, 0.6)
    >>> price_for("llava-13b", DEFAULT_PRICES) is None
    True
    """
    if model in prices:
        return prices[model]
    prefixes = [name for name in prices if model.startswith(name)]
    return prices[max(prefixes, key=len)] if prefixes else None


@dataclass
class Ledger:
    """Counters of one run (one pod); ``to_dict`` adds the estimated cost."""

    model: str
    run: str
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    requests: int = 0
    batch_requests: int = 0
    cache_hits: int = 0
    """Answers stored by earlier runs, reused instead of paid for (not this run's own, read again)."""
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0

    def record(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> None:
        """Count one paid answer."""
        if batch:
            self.batch_requests += 1
            self.batch_prompt_tokens += prompt_tokens
            self.batch_completion_tokens += completion_tokens
        else:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def estimated_cost_usd(self) -> float | None:
        """Live tokens at list price plus batch tokens at half price; ``None`` for an unpriced model.

        >>> ledger = Ledger("gpt-4o", "r")
        >>> ledger.record(1_000_000, 100_000)
        >>> ledger.estimated_cost_usd()
        3.5
        """
        price = price_for(self.model, self.prices)
        if price is None:
            return None
        live = self.prompt_tokens * price[0] + self.completion_tokens * price[1]
        batch = (self.batch_prompt_tokens * price[0] + self.batch_completion_tokens * price[1]) * BATCH_DISCOUNT
        return round((live + batch) / 1e6, 6)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("prices")
        out["price_per_million"] = price_for(self.model, self.prices)
        out["estimated_cost_usd"] = self.estimated_cost_usd()
        return out
