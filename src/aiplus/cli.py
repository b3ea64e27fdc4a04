"""The ``aiplus`` command: a thin shell over the library (the admin API calls the same service functions)."""

from __future__ import annotations

import argparse
import sys

from aiplus.config import ConfigError, load_settings


def _serve(args: argparse.Namespace) -> int:
    from aiplus.server import run

    models = []
    for path in args.model or []:
        models.append({"id": _model_id_from_path(path), "engine": "llamacpp", "path": path})
    settings = load_settings(args.config, host=args.host, port=args.port, workers=args.workers)
    if models:
        from dataclasses import replace

        from aiplus.config import ModelConfig

        settings = replace(settings, models=tuple(ModelConfig(**m) for m in models))
    return run(settings)


def _model_id_from_path(path: str) -> str:
    from pathlib import Path

    return Path(path).stem.lower()


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument("--config", help="path to aiplus.toml (default: $AIPLUS_CONFIG)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument("--model", action="append", metavar="PATH.gguf", help="serve this GGUF file (repeatable)")
    p.set_defaults(func=_serve)


def _open_db(args: argparse.Namespace):
    """Settings from ``--config`` and the database they name, migrated: what every admin command starts with."""
    from aiplus.storage.db import create_engine, migrate

    settings = load_settings(args.config)
    engine = create_engine(settings.db_url)
    migrate(engine)
    return settings, engine


# Each room adds its own commands below; keep each block in its own function.
def _add_tenancy_commands(sub: argparse._SubParsersAction) -> None:
    """orgs, keys, usage (issue 3): the same service functions the admin API calls, printed as tables."""
    from datetime import UTC, datetime

    def table(title: str, columns: list[str], rows: list[list]) -> None:
        from rich.console import Console
        from rich.table import Table

        out = Table(title=title)
        for column in columns:
            out.add_column(column, overflow="fold")
        for row in rows:
            out.add_row(*("" if v is None else str(v) for v in row))
        Console(width=None if sys.stdout.isatty() else 200).print(out)  # piped: no wrapping of ids

    def when(value) -> str | None:
        return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")

    def money(micros: int) -> str:
        sign = "-" if micros < 0 else ""
        return f"{sign}{abs(micros) // 1_000_000}.{abs(micros) % 1_000_000:06d}"

    def service(fn):
        """Run a command; tenancy failures print as one line and exit 1."""

        def run(args):
            from aiplus.tenancy.errors import TenancyError

            try:
                return fn(args)
            except TenancyError as exc:
                print(f"aiplus: {exc.message}", file=sys.stderr)
                return 1

        return run

    @service
    def orgs_add(args):
        from aiplus.tenancy.orgs import create_org

        settings, engine = _open_db(args)
        with engine.begin() as conn:
            org = create_org(
                conn,
                name=args.name,
                sector=args.sector,
                tier=args.tier,
                region=args.region,
                employees=args.employees,
                org_id=args.id,
                tiers=settings.tiers,
            )
        print(f"created organization {org['id']} ({org['sector']}, tier {org['tier']})")
        print(f"next: aiplus keys create {org['id']}")

    @service
    def orgs_list(args):
        from aiplus.tenancy.orgs import list_orgs

        _settings, engine = _open_db(args)
        with engine.connect() as conn:
            found = list_orgs(conn, sector=args.sector, tier=args.tier)
        rows = [
            [
                o["id"],
                o["name"],
                o["sector"],
                o["region"],
                o["employees"],
                o["size_class"],
                o["tier"],
                when(o["created_at"]),
            ]
            for o in found
        ]
        table(
            "organizations", ["id", "name", "sector", "region", "employees", "size", "tier", "created"], rows
        )

    @service
    def orgs_show(args):
        from aiplus.metering.usage import query_usage, totals
        from aiplus.tenancy.keys import list_keys
        from aiplus.tenancy.orgs import require_org

        settings, engine = _open_db(args)
        with engine.connect() as conn:
            org = require_org(conn, args.id)
            keys = list_keys(conn, args.id)
            month = datetime.now(UTC).date().replace(day=1)
            used = totals(query_usage(conn, org_id=args.id, start=month, group_by="month"))
        tier = settings.tier(org["tier"]) if org["tier"] in {t.name for t in settings.tiers} else None
        quota = tier.monthly_token_quota if tier else None
        rows = [[k, v] for k, v in org.items() if k != "created_at"] + [
            ["created", when(org["created_at"])],
            ["tokens this month", f"{used['total_tokens']}" + (f" of {quota}" if quota else "")],
            ["cost this month", money(used["cost_micros"])],
        ]
        table(f"organization {org['id']}", ["field", "value"], rows)
        list_key_rows(keys, f"API keys of {org['id']}")

    @service
    def orgs_update(args):
        from aiplus.tenancy.orgs import update_org

        settings, engine = _open_db(args)
        with engine.begin() as conn:
            org = update_org(
                conn,
                args.id,
                tier=args.tier,
                name=args.name,
                region=args.region,
                employees=args.employees,
                tiers=settings.tiers,
            )
        print(f"organization {org['id']}: tier {org['tier']}, {org['sector']}, {org['size_class'] or '-'}")

    def list_key_rows(keys, title):
        rows = [
            [
                k["id"],
                k["org_id"],
                k["prefix"] + "…",
                k["name"],
                ",".join(k["models"]) if k["models"] else "all",
                when(k["created_at"]),
                when(k["expires_at"]),
                when(k["revoked_at"]),
            ]
            for k in keys
        ]
        table(title, ["id", "org", "key", "name", "models", "created", "expires", "revoked"], rows)

    @service
    def keys_create(args):
        from aiplus.tenancy.keys import create_key
        from aiplus.tenancy.secrets import server_secret

        settings, engine = _open_db(args)
        expires = datetime.fromisoformat(args.expires) if args.expires else None
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        with engine.begin() as conn:
            secret = server_secret(conn, settings.secret)
            row, key = create_key(
                conn, secret, args.org, name=args.name, expires_at=expires, models=args.model
            )
        print(f"created {row['id']} for {row['org_id']}. The key is shown only now; store it safely:")
        print(key)

    @service
    def keys_list(args):
        from aiplus.tenancy.keys import list_keys
        from aiplus.tenancy.orgs import require_org

        _settings, engine = _open_db(args)
        with engine.connect() as conn:
            if args.org:
                require_org(conn, args.org)
            keys = list_keys(conn, args.org)
        list_key_rows(keys, "API keys")

    @service
    def keys_revoke(args):
        from aiplus.tenancy.keys import revoke_key

        settings, engine = _open_db(args)
        with engine.begin() as conn:
            key, _digest = revoke_key(conn, args.key_id)
        if settings.redis_url:  # servers sharing Redis reject the key on their next request
            import redis

            from aiplus.storage.redis import key_prefix

            try:
                with redis.Redis.from_url(settings.redis_url, socket_timeout=2) as client:
                    client.incr(f"{key_prefix()}auth:version")
                    client.publish(f"{key_prefix()}auth:changed", "changed")
            except redis.RedisError as exc:
                print(
                    f"aiplus: Redis unreachable ({exc}); servers see the revocation within a second by polling",
                    file=sys.stderr,
                )
        print(f"revoked {key['id']} ({key['prefix']}…) of {key['org_id']} at {when(key['revoked_at'])}")

    @service
    def usage(args):
        from aiplus.metering.usage import parse_day, query_usage, totals

        _settings, engine = _open_db(args)
        try:
            start, end = parse_day(args.since, "--since"), parse_day(args.until, "--until")
        except ValueError as exc:
            print(f"aiplus: {exc}", file=sys.stderr)
            return 2
        with engine.connect() as conn:
            rows = query_usage(
                conn,
                org_id=args.org,
                model=args.model,
                sector=args.sector,
                tier=args.tier,
                start=start,
                end=end,
                group_by=args.by,
            )
        columns = [args.by, "org", "model", "requests", "failed", "tools", "prompt", "completion", "cost"]
        body = [
            [
                r["period"],
                r["org_id"],
                r["model"],
                r["requests"],
                r["failed_requests"],
                r["tool_requests"],
                r["prompt_tokens"],
                r["completion_tokens"],
                money(r["cost_micros"]),
            ]
            for r in rows
        ]
        t = totals(rows)
        body.append(
            [
                "total",
                "",
                "",
                t["requests"],
                t["failed_requests"],
                t["tool_requests"],
                t["prompt_tokens"],
                t["completion_tokens"],
                money(t["cost_micros"]),
            ]
        )
        table("usage (from the daily rollups, UTC)", columns, body)

    from aiplus.config import SECTORS

    def common(p):
        p.add_argument("--config", help="path to aiplus.toml (default: $AIPLUS_CONFIG)")
        return p

    orgs = sub.add_parser("orgs", help="organizations: add, list, show, update")
    orgs_sub = orgs.add_subparsers(dest="orgs_command", required=True)
    p = common(orgs_sub.add_parser("add", help="create an organization"))
    p.add_argument("name")
    p.add_argument("--sector", required=True, choices=SECTORS)
    p.add_argument("--tier", default="standard", help="lifeline, standard, batch or a tier from the config")
    p.add_argument("--region", default="")
    p.add_argument("--employees", type=int, help="head count (sets the size class)")
    p.add_argument("--id", help="org id (default: a slug of the name)")
    p.set_defaults(func=orgs_add)
    p = common(orgs_sub.add_parser("list", help="list organizations"))
    p.add_argument("--sector", choices=SECTORS)
    p.add_argument("--tier")
    p.set_defaults(func=orgs_list)
    p = common(orgs_sub.add_parser("show", help="an organization, its keys and this month's usage"))
    p.add_argument("id")
    p.set_defaults(func=orgs_show)
    p = common(orgs_sub.add_parser("update", help="change tier, name, region or head count"))
    p.add_argument("id")
    p.add_argument("--tier")
    p.add_argument("--name")
    p.add_argument("--region")
    p.add_argument("--employees", type=int)
    p.set_defaults(func=orgs_update)

    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = common(keys_sub.add_parser("create", help="create a key (printed once)"))
    p.add_argument("org", help="org id")
    p.add_argument("--name", default="")
    p.add_argument("--expires", help="ISO 8601 date or time (UTC if no offset)")
    p.add_argument("--model", action="append", help="allow only this model (repeatable; default: all)")
    p.set_defaults(func=keys_create)
    p = common(keys_sub.add_parser("list", help="list keys (never their values)"))
    p.add_argument("org", nargs="?", help="only this org's keys")
    p.set_defaults(func=keys_list)
    p = common(keys_sub.add_parser("revoke", help="revoke a key (servers reject it at once with Redis)"))
    p.add_argument("key_id")
    p.set_defaults(func=keys_revoke)

    p = common(sub.add_parser("usage", help="usage by day or month, from the ledger's daily rollups"))
    p.add_argument("--org")
    p.add_argument("--model")
    p.add_argument("--sector", choices=SECTORS)
    p.add_argument("--tier")
    p.add_argument("--since", help="first day, inclusive (YYYY-MM-DD, UTC)")
    p.add_argument("--until", help="last day, inclusive")
    p.add_argument("--by", choices=("day", "month"), default="day")
    p.set_defaults(func=usage)


def _add_adoption_commands(sub: argparse._SubParsersAction) -> None:
    """registry, adoption, demo (issue 5): thin shells over aiplus.adoption (the admin API uses the same report)."""

    def rejected(fn):
        """Run a command; a rejected CSV or a bad argument prints its reasons and exits 1."""

        def run(args):
            from aiplus.adoption.register import ImportRejected

            try:
                return fn(args)
            except ImportRejected as exc:
                print(f"aiplus: {exc}", file=sys.stderr)
                return 1
            except ValueError as exc:
                print(f"aiplus: {exc}", file=sys.stderr)
                return 1

        return run

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="path to aiplus.toml (default: $AIPLUS_CONFIG)")

    @rejected
    def registry_import(args):
        from aiplus.adoption.register import import_register, registered_tenants

        _settings, engine = _open_db(args)
        with engine.begin() as conn:
            result = import_register(conn, args.file)
            matched = registered_tenants(conn)
        print(f"register: {result.rows} row(s) read, {result.inserted} added, {result.updated} updated")
        print(f"{matched} tenant organization(s) are in the register (matched by id)")

    @rejected
    def registry_observations(args):
        from aiplus.adoption.register import import_observations

        _settings, engine = _open_db(args)
        with engine.begin() as conn:
            result = import_observations(conn, args.file)
        print(f"observations: {result.rows} row(s) read, {result.inserted} added, {result.updated} replaced")

    def report_of(args):
        from datetime import date

        from aiplus.adoption.report import build_report

        settings, engine = _open_db(args)
        as_of = date.fromisoformat(args.as_of) if args.as_of else None
        with engine.connect() as conn:
            report = build_report(conn, settings.adoption, by=args.by, as_of=as_of, fit_on=args.fit_on)
        if not report.total.latest.orgs:
            print(
                "aiplus: the register is empty, so there is no denominator: "
                "aiplus registry import FILE.csv, or aiplus demo seed to try it",
                file=sys.stderr,
            )
        return report

    @rejected
    def adoption_report(args):
        import json

        from rich.console import Console

        from aiplus.adoption.report import to_csv, to_rich_table

        report = report_of(args)
        if args.format == "json":
            print(json.dumps(report.as_dict(band=args.band), indent=2, default=str))
        elif args.format == "csv":
            sys.stdout.write(to_csv(report))
        else:
            Console(width=None if sys.stdout.isatty() else 240).print(to_rich_table(report))

    @rejected
    def adoption_chart(args):
        from aiplus.adoption.charts import write_chart

        path = write_chart(report_of(args), args.out)
        print(f"chart written to {path}")

    @rejected
    def adoption_refresh(args):
        from aiplus.adoption import snapshots
        from aiplus.adoption.penetration import Definition
        from aiplus.adoption.report import refresh_snapshots

        settings, engine = _open_db(args)
        with engine.connect() as conn:
            if not snapshots.available(conn):
                print("window-sum tables not present: every report measures all months live from the rollups")
                return 0
            stored = refresh_snapshots(conn, Definition.from_config(settings.adoption), rebuild=args.rebuild)
        print(f"stored the window sums of {stored} settled month(s)")

    @rejected
    def demo_seed(args):
        import time

        from aiplus.adoption.demo import seed_demo

        settings, engine = _open_db(args)
        started = time.perf_counter()
        done = seed_demo(engine, settings, orgs=args.orgs, months=args.months, seed=args.seed)
        print(
            f"demo region: {done['register']:,} register orgs, {done['tenants']:,} tenant orgs with a key each, "
            f"{done['events']:,} usage events {done['first_month']}..{done['last_month']} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        print("next: aiplus adoption report   and   aiplus adoption chart adoption.png")

    registry = sub.add_parser("registry", help="the register of organizations in scope (the denominator)")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    p = registry_sub.add_parser("import", help="import FILE.csv with columns id,name,sector,region,employees")
    p.add_argument("file", metavar="FILE.csv")
    config_option(p)
    p.set_defaults(func=registry_import)
    p = registry_sub.add_parser(
        "observations",
        help="import external penetration figures: FILE.csv with sector,date,penetration,source",
    )
    p.add_argument("file", metavar="FILE.csv")
    config_option(p)
    p.set_defaults(func=registry_observations)

    adoption = sub.add_parser("adoption", help="AI adoption: penetration, forecasts and target status")
    adoption_sub = adoption.add_subparsers(dest="adoption_command", required=True)
    for name, func, text in (
        ("report", adoption_report, "penetration by sector, region or size with forecasts and target status"),
        ("chart", adoption_chart, "penetration curves, forecast bands and targets as PNG or SVG"),
    ):
        p = adoption_sub.add_parser(name, help=text)
        if name == "chart":
            p.add_argument("out", metavar="OUT.png|OUT.svg")
        p.add_argument("--by", choices=("sector", "region", "size"), default="sector")
        p.add_argument(
            "--as-of", metavar="YYYY-MM-DD", help="measure up to the last complete month at this date"
        )
        p.add_argument(
            "--fit-on",
            choices=("ledger", "observations", "both"),
            default="ledger",
            help="series the forecasts are fitted on (default: the ledger's monthly penetration)",
        )
        if name == "report":
            p.add_argument("--format", choices=("table", "json", "csv"), default="table")
            p.add_argument(
                "--no-band", dest="band", action="store_false", help="JSON: leave out the monthly band"
            )
        config_option(p)
        p.set_defaults(func=func)

    p = adoption_sub.add_parser(
        "refresh", help="store the window sums of settled months (if the tables exist)"
    )
    p.add_argument("--rebuild", action="store_true", help="sum every settled month again (after late events)")
    config_option(p)
    p.set_defaults(func=adoption_refresh)

    demo = sub.add_parser("demo", help="synthetic data to try aiplus with")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    p = demo_sub.add_parser("seed", help="a synthetic region: register, tenant orgs, keys and usage events")
    p.add_argument("--orgs", type=int, default=5000, help="organizations in the register (default 5000)")
    p.add_argument("--months", type=int, default=24, help="months of usage, ending last month (default 24)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same region")
    config_option(p)
    p.set_defaults(func=demo_seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiplus", description="Open-weight AI as a public utility.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_tenancy_commands(sub)
    _add_adoption_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"aiplus: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
