"""Gateway overhead (issue 6): the fake upstream direct, through aiplus and through LiteLLM proxy, one run.

Starts a fast fake OpenAI upstream, aiplus and LiteLLM proxy (each in its own process, loopback only),
then drives each with the same closed-loop load generator at each concurrency, non-streaming and
streaming, and prints one table: requests/s, latency p50/p99 and what each gateway adds over direct,
time to first token for streams, server CPU seconds per 1,000 requests and peak RSS. ``--rss-check``
adds the RSS-growth check over 100,000 requests through aiplus.

    .venv/bin/python bench/overhead.py --quick            # about a minute, for development
    .venv/bin/python bench/overhead.py --rss-check        # the full run; writes docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import hotpath
import procstat
import report
from targets import BENCH_DIR, REPO, Aiplus, Direct, LiteLLM, Target, install_litellm, litellm_installed

PYTHON = sys.executable
QUICK = {"concurrency": (1, 16, 64), "duration": 1.5, "warmup": 0.5}
FULL = {"concurrency": (1, 16, 64, 256), "duration": 10.0, "warmup": 2.0}
# With --pin: the load generator and the fake upstream share one core, the gateway gets the other.
PIN_CLIENT, PIN_GATEWAY = {0}, {1}
loadgen_cpus: set[int] | None = None
# mode -> (streamed, model). "paced" streams from a second upstream that pauses between chunks, so a
# gateway that buffers a stream shows it in its time to first token.
MODES = {"json": (False, "fake"), "stream": (True, "fake"), "paced": (True, "fake-paced")}


def run_loadgen(
    target: Target,
    *,
    stream: bool,
    concurrency: int,
    duration: float,
    warmup: float,
    max_requests: int,
    model: str = "fake",
) -> dict:
    """One cell: the load generator in its own process, with the target's CPU measured around it."""
    argv = [
        *procstat.pinned(loadgen_cpus),
        PYTHON,
        str(BENCH_DIR / "loadgen.py"),
        "--port",
        str(target.port),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--max-requests",
        str(max_requests),
        "--model",
        model,
    ]
    if stream:
        argv.append("--stream")
    env = dict(os.environ)
    if target.api_key:
        env["BENCH_API_KEY"] = target.api_key
    cpu0 = procstat.cpu_seconds(target.pid)
    out = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=duration + warmup + 180,
    )
    cpu1 = procstat.cpu_seconds(target.pid)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed against {target.name}: {out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    result["server_cpu_s"] = cpu1 - cpu0
    sent = result["sent_total"]
    result["cpu_s_per_1k"] = (cpu1 - cpu0) / sent * 1000 if sent else float("nan")
    return result


def rss_check(target: Target, total: int, batch: int, concurrency: int) -> dict:
    """Send ``total`` non-streaming requests in batches, sampling the server's RSS after each batch."""
    samples = []
    sent = 0
    errors = 0
    while sent < total:
        n = min(batch, total - sent)
        result = run_loadgen(
            target, stream=False, concurrency=concurrency, duration=600, warmup=0, max_requests=n
        )
        sent += result["sent_total"]
        errors += result["errors"]
        samples.append((sent, procstat.rss_mib(target.pid)))
        print(f"  rss-check {target.name}: {sent:>7} requests, RSS {samples[-1][1]:.1f} MiB", flush=True)
    base = samples[0][1]
    growth = (samples[-1][1] - base) / base if base else float("nan")
    return {
        "target": target.name,
        "requests": sent,
        "errors": errors,
        "samples": samples,
        "baseline_mib": base,
        "final_mib": samples[-1][1],
        "growth": growth,
    }


def profile(target: Target, seconds: float, out_dir: Path) -> list[Path]:
    """py-spy samples of ``target`` under load (concurrency 16, JSON then streaming), summarised per mode."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for mode in ("json", "stream"):
        stream, model = MODES[mode]
        raw = out_dir / f"profile-{target.name}-{mode}.txt"
        sampler = hotpath.record(target.pid, seconds, raw)
        run_loadgen(
            target,
            stream=stream,
            model=model,
            concurrency=16,
            duration=seconds,
            warmup=0.3,
            max_requests=10_000_000,
        )
        _, err = sampler.communicate(timeout=seconds + 60)
        if sampler.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        summary = out_dir / f"profile-{target.name}-{mode}.md"
        summary.write_text(f"# py-spy: {target.name}, {mode}, concurrency 16\n\n{hotpath.summarize(raw)}\n")
        written.append(summary)
        print(f"  profile {target.name} {mode}: {summary}", flush=True)
    return written


def machine_description() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({model or platform.processor()}), {mem_gib:.0f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at start {load[0]:.2f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short cells, fewer concurrencies (about a minute)")
    p.add_argument("--targets", default="direct,aiplus,litellm", help="comma-separated subset")
    p.add_argument("--concurrency", help="comma-separated list (default 1,16,64,256; quick 1,16,64)")
    p.add_argument("--duration", type=float, help="measured seconds per cell (default 10; quick 1.5)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds per cell (default 2; quick 0.5)")
    p.add_argument("--max-requests", type=int, default=500_000, help="bound on requests per cell")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument(
        "--paced-delay-ms", type=float, default=2.0, help="pause between chunks of the paced upstream"
    )
    p.add_argument(
        "--rss-check",
        nargs="?",
        type=int,
        const=100_000,
        default=0,
        metavar="N",
        help="also send N requests (default 100000) through aiplus and report RSS growth",
    )
    p.add_argument("--rss-targets", default="aiplus", help="targets for --rss-check")
    p.add_argument(
        "--profile",
        nargs="?",
        type=float,
        const=10.0,
        default=0,
        metavar="SECONDS",
        help="also sample aiplus with py-spy under load (default 10 s per mode) into bench/out/",
    )
    p.add_argument("--profile-targets", default="aiplus", help="targets for --profile")
    p.add_argument("--litellm-venv", default=str(BENCH_DIR / ".venv-litellm"))
    p.add_argument("--litellm-spec", default="litellm[proxy]", help="what pip installs into the LiteLLM venv")
    p.add_argument("--aiplus-cmd", help="command that runs aiplus (default: the aiplus next to this python)")
    p.add_argument("--aiplus-args", default="", help="extra arguments for aiplus serve, e.g. '--workers 2'")
    p.add_argument("--aiplus-key", help="use this key instead of creating an org and key")
    p.add_argument(
        "--pin", action="store_true", help="load generator and upstream on CPU 0, the gateway alone on CPU 1"
    )
    p.add_argument(
        "--write", dest="write", action="store_true", default=None, help="write docs/benchmarks.md"
    )
    p.add_argument("--no-write", dest="write", action="store_false")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--note", action="append", default=[], help="a line for the notes under the table")
    p.add_argument("--json-out", help="also save every measurement as JSON here")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and server logs")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.concurrency = (
        tuple(int(c) for c in args.concurrency.split(",")) if args.concurrency else preset["concurrency"]
    )
    args.duration = args.duration if args.duration is not None else preset["duration"]
    args.warmup = args.warmup if args.warmup is not None else preset["warmup"]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES) or set(args.targets) - {"direct", "aiplus", "litellm"}
    if unknown:
        p.error(f"unknown mode or target: {', '.join(sorted(unknown))}")
    if args.write is None:
        args.write = not args.quick
    return args


def start_gateways(args: argparse.Namespace, workdir: Path, upstreams: dict[str, str]) -> tuple[list, list]:
    """Start aiplus and LiteLLM as asked; a gateway that does not start is noted and left out."""
    gateways: list[Target] = []
    notes: list[str] = []
    for name in args.targets:
        if name == "aiplus":
            command = shlex.split(args.aiplus_cmd) if args.aiplus_cmd else None
            target: Target = Aiplus(
                workdir, upstreams, command, args.aiplus_key, shlex.split(args.aiplus_args)
            )
        elif name == "litellm":
            target = LiteLLM(workdir, upstreams, Path(args.litellm_venv))
        else:
            continue
        target.cpus = PIN_GATEWAY if args.pin else None
        try:
            target.start()
            target.wait_ready()
        except (RuntimeError, OSError, ValueError) as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            notes.append(f"{name} did not start: {lines[0]} {lines[-1] if len(lines) > 1 else ''}".strip())
            print(f"bench: {name} did not start: {exc}", file=sys.stderr, flush=True)
            target.stop()
            continue
        gateways.append(target)
    return gateways, notes


def _ms(value: float | None) -> str:
    return "       – ms" if value is None else f"{value:8.2f} ms"


def measure(
    args: argparse.Namespace, directs: dict[str, Direct], gateways: list[Target], notes: list[str]
) -> dict:
    """Every mode x concurrency x target cell; targets interleave so slow drift hits them alike."""
    results: dict[tuple[str, str, int], dict] = {}
    for mode in args.modes:
        stream, model = MODES[mode]
        for c in args.concurrency:
            cell_targets = ([directs[mode]] if "direct" in args.targets else []) + gateways
            for target in cell_targets:
                if not target.server or not target.server.alive():
                    continue
                upstream = directs[mode]
                before = upstream.stats()
                try:
                    r = run_loadgen(
                        target,
                        stream=stream,
                        model=model,
                        concurrency=c,
                        duration=args.duration,
                        warmup=args.warmup,
                        max_requests=args.max_requests,
                    )
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    notes.append(f"{target.name} {mode} c={c}: the load generator failed: {exc}"[:300])
                    print(f"  {mode:6} c={c:<3} {target.name:8} FAILED: {exc}", flush=True)
                    continue
                if target is not upstream:
                    opened = upstream.stats()["connections"] - before["connections"]
                    r["upstream_conns_per_1k"] = opened / r["sent_total"] * 1000 if r["sent_total"] else None
                results[(target.name, mode, c)] = r
                extra = f" ttft p50 {_ms(r['ttft']['p50_ms'])}" if stream else ""
                print(
                    f"  {mode:6} c={c:<3} {target.name:8} {r['rps']:9.0f} req/s  p50 "
                    f"{_ms(r['latency']['p50_ms'])}  p99 {_ms(r['latency']['p99_ms'])}{extra}"
                    f"  errors {r['errors']}",
                    flush=True,
                )
                if r["errors"]:
                    print(f"    first error: {r['sample_error'][:300]}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    global loadgen_cpus
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/overhead.py", *(sys.argv[1:] if argv is None else argv)])
    started = dt.datetime.now(dt.UTC)
    machine = machine_description()
    workdir = Path(tempfile.mkdtemp(prefix="aiplus-bench-"))
    print(f"bench: {machine}\nbench: workdir {workdir}", flush=True)

    installer = None
    venv = Path(args.litellm_venv)
    if "litellm" in args.targets and not litellm_installed(venv):
        print(
            f"bench: installing {args.litellm_spec} into {venv} (first run only; a few minutes)", flush=True
        )
        installer = install_litellm(venv, args.litellm_spec, workdir / "litellm-install.log")

    loadgen_cpus = PIN_CLIENT if args.pin else None
    direct = Direct(workdir)
    paced = Direct(workdir, args.paced_delay_ms, log_name="fake_upstream_paced.log")
    directs = {"json": direct, "stream": direct, "paced": paced}
    upstreams = {"fake": direct.base_url, "fake-paced": paced.base_url}
    servers: list[Target] = [direct, paced]
    results: dict[tuple[str, str, int], dict] = {}
    peaks: dict[str, float] = {}
    versions: dict[str, str] = {}
    rss: list[dict] = []
    notes: list[str] = []
    try:
        for upstream in (direct, paced):
            upstream.cpus = loadgen_cpus
            upstream.start()
            upstream.wait_ready()
        if installer is not None and installer.wait() != 0:
            raise RuntimeError(f"installing LiteLLM failed; see {workdir / 'litellm-install.log'}")
        gateways, notes = start_gateways(args, workdir, upstreams)
        servers += gateways
        results = measure(args, directs, gateways, notes)
        for target in [direct, *gateways]:
            if target.server and target.server.alive():
                peaks[target.name] = procstat.peak_rss_mib(target.pid)
                versions[target.name] = target.version
        if args.profile:
            for target in gateways:
                if target.name in args.profile_targets.split(",") and target.server and target.server.alive():
                    profile(target, args.profile, BENCH_DIR / "out")
        if args.rss_check:
            for target in gateways:
                if target.name in args.rss_targets.split(",") and target.server and target.server.alive():
                    rss.append(rss_check(target, args.rss_check, max(1000, args.rss_check // 10), 16))
    finally:
        for target in reversed(servers):
            target.stop()
        if installer is not None and installer.poll() is None:
            os.killpg(installer.pid, signal.SIGTERM)

    finished = dt.datetime.now(dt.UTC)
    table = report.table(results, args.targets, args.modes, args.concurrency)
    checks = report.checks(results, rss, args.targets, peaks)
    print(f"\n{table}\n\n{checks}")
    meta = {
        "command": command,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (finished - started).total_seconds() / 60,
        "machine": machine,
        "versions": versions,
        "peaks": peaks,
        "notes": [*notes, *args.note],
        "duration": args.duration,
        "warmup": args.warmup,
        "paced_delay_ms": args.paced_delay_ms,
        "pin": args.pin,
    }
    if args.json_out:
        cells = [{"target": k[0], "mode": k[1], "concurrency": k[2], **v} for k, v in results.items()]
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rss": rss, "results": cells}, indent=2))
    if args.write:
        report.write_section(Path(args.doc), report.section(meta, table, checks, rss))
        print(f"\nbench: wrote {args.doc}")
    if args.keep_workdir:
        print(f"bench: configs and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    for note in notes:
        print(f"bench: NOTE {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
