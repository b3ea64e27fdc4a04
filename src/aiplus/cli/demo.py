"""``aiplus demo seed``: a synthetic region (register, tenant orgs, keys, usage) to try the adoption report with."""

from __future__ import annotations

import argparse
import time
from datetime import date

from aiplus.cli.shell import UserError, add_config_option, command, load_settings, open_database


@command
def demo_seed(args: argparse.Namespace) -> None:
    from aiplus.adoption.demo import demo_month_ends, seed_demo

    if args.orgs < 1 or args.months < 1:
        raise UserError("--orgs and --months must be at least 1", 2)
    settings, engine = load_settings(args), open_database(args)
    started = time.perf_counter()
    first_day = demo_month_ends(args.months)[0].replace(day=1)
    tariff = _adopt_example_tariff(engine, settings, first_day)
    try:
        done = seed_demo(engine, settings, orgs=args.orgs, months=args.months, seed=args.seed)
    except ValueError as exc:  # e.g. a demo region is there already
        raise UserError(str(exc)) from None
    print(
        f"demo region: {done['register']:,} register orgs, {done['tenants']:,} tenant orgs with a key each, "
        f"{done['events']:,} usage events {done['first_month']}..{done['last_month']} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if tariff is not None:
        print(
            f"tariff: the example tariff (version {tariff['id']}) in force from {first_day}; try: aiplus bill"
        )
    vouchers = _seed_vouchers(engine, demo_month_ends(args.months))
    if vouchers is not None:
        print(
            f"vouchers: programmes {' and '.join(vouchers['programmes'])}, {vouchers['vouchers']} vouchers for "
            f"{vouchers['firms']} small firms; try: aiplus vouchers programme show demo-city --month "
            f"{vouchers['month']}   and   aiplus bill claims --programme demo-city --month {vouchers['month']} "
            "--out claim"
        )
    print("next: aiplus adoption report   and   aiplus adoption chart adoption.png")


def _seed_vouchers(engine, month_ends) -> dict | None:
    """Voucher programmes over the demo's last twelve months and a year beyond, and vouchers for small firms."""
    from aiplus.billing.demo import seed_demo_vouchers

    start = month_ends[max(0, len(month_ends) - 12)].replace(day=1)
    last = month_ends[-1]
    until = date(last.year + 1, 12, 31)
    with engine.begin() as conn:
        done = seed_demo_vouchers(conn, start, until)
    return None if done is None else {**done, "month": last.strftime("%Y-%m")}


def _adopt_example_tariff(engine, settings, first_day) -> dict | None:
    """The example tariff, in force before the demo's first event, so that statements are complete; None when
    a tariff is adopted already (the operator's own stays)."""
    from aiplus.billing.versions import adopt_example_tariff, list_tariffs

    with engine.begin() as conn:
        if list_tariffs(conn):
            return None
        return adopt_example_tariff(conn, first_day, [tier.name for tier in settings.tiers])


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthetic data to try aiplus with")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    p = demo_sub.add_parser("seed", help="a synthetic region: register, tenant orgs, keys and usage events")
    p.add_argument("--orgs", type=int, default=5000, help="organizations in the register (default 5000)")
    p.add_argument("--months", type=int, default=24, help="months of usage, ending last month (default 24)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same region")
    add_config_option(p).set_defaults(func=demo_seed)
