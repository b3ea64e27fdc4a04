"""Prices in integer micro-units per million tokens, and the lifeline tier's free monthly block."""

from __future__ import annotations

from collections.abc import Sequence

from aiplus.config import PriceConfig, TierConfig

MICROS_PER_MTOK_DIVISOR = 1_000_000


class Tariff:
    """Cost of a request from ``settings.prices``: the price of the model itself, else the ``*`` price, else 0."""

    def __init__(self, prices: Sequence[PriceConfig], tiers: Sequence[TierConfig] = ()):
        self._prices = {p.model: p for p in prices}
        self._default = self._prices.get("*", PriceConfig())
        self._free = {t.name: t.free_monthly_tokens for t in tiers}

    def price(self, model: str) -> PriceConfig:
        return self._prices.get(model, self._default)

    def cost_micros(self, model: str, tier: str, prompt_tokens: int, completion_tokens: int) -> int:
        """Gross cost of one request, rounded half up to a whole micro-unit (integers only).

        The tier's free monthly block is not applied per request (that needs the month's running total);
        ``net_month_micros`` applies it on the monthly statement.
        """
        price = self.price(model)
        scaled = prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok
        return (scaled + MICROS_PER_MTOK_DIVISOR // 2) // MICROS_PER_MTOK_DIVISOR

    def free_tokens(self, tier: str) -> int:
        return self._free.get(tier, 0)

    def net_month_micros(self, tier: str, month_tokens: int, gross_micros: int) -> int:
        """A month's charge after the free block: the gross cost scaled by the share of tokens beyond it.

        Proportional, so it does not depend on the order of requests or models; floor division, so the
        free block never costs the organization a micro-unit.
        """
        if month_tokens <= 0:
            return 0
        billable = max(0, month_tokens - self.free_tokens(tier))
        return gross_micros * billable // month_tokens
