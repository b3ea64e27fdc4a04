"""Billing: what usage costs and who pays. Tariff versions, statements, closing, the regulator's balance and
simulations, read from metering's time-of-use rollup (never raw events). Money is integer micro-units."""
