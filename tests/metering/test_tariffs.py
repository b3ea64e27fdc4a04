from aiplus.config import DEFAULT_TIERS, PriceConfig
from aiplus.metering.tariffs import Tariff


def test_cost_is_integer_micro_units_rounded_half_up():
    tariff = Tariff(
        [PriceConfig("*", 1_000_000, 2_000_000), PriceConfig("big", 3_000_000, 9_000_000)], DEFAULT_TIERS
    )
    assert tariff.cost_micros("small", "standard", 1000, 500) == 2000  # 1 micro/token in, 2 out
    assert tariff.cost_micros("big", "standard", 1000, 500) == 7500
    cheap = Tariff([PriceConfig("*", 1, 1)])
    assert (
        cheap.cost_micros("m", "standard", 499_999, 0) == 0
        and cheap.cost_micros("m", "standard", 500_000, 0) == 1
    )
    assert isinstance(tariff.cost_micros("big", "batch", 10**9, 10**9), int)
    assert Tariff([]).cost_micros("m", "standard", 10**6, 10**6) == 0


def test_lifeline_free_block_on_the_monthly_statement():
    tariff = Tariff([PriceConfig("*", 1_000_000, 1_000_000)], DEFAULT_TIERS)
    assert tariff.free_tokens("lifeline") == 2_000_000 and tariff.free_tokens("standard") == 0
    assert tariff.net_month_micros("lifeline", 1_500_000, 1_500_000) == 0
    assert tariff.net_month_micros("lifeline", 3_000_000, 3_000_000) == 1_000_000
    assert tariff.net_month_micros("standard", 3_000_000, 3_000_000) == 3_000_000
    assert tariff.net_month_micros("lifeline", 0, 0) == 0
