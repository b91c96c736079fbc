"""The bench's one table: each figure, its reference from the same run, the ratio,
the issue's target and whether it is met."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from collections.abc import Mapping

from bench.cases import COST_BEFORE, Result

Row = tuple[str, str, str, str, str, str]


def machine() -> str:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return f"{model}, {os.cpu_count()} cores, {total_kb / 1024 / 1024:.0f} GB RAM, " \
           f"{platform.system()} {platform.release()}"


def _ratio(value: float, reference: float, at_least: float | None = None,
           at_most: float | None = None) -> tuple[str, str]:
    ratio = value / reference if reference else float("nan")
    met = (at_least is None or ratio >= at_least) and (at_most is None or ratio <= at_most)
    return f"{ratio:.2f}", "met" if met else "MISSED"


def rows(results: Mapping[str, Result], args: argparse.Namespace) -> list[Row]:
    out: list[Row] = []
    ceiling, naive = results.get("ceiling"), results.get("naive")
    shop, latency = results.get("shop"), results.get("shop_latency")
    cost = results.get("cost")
    if cost:
        calls = cost.figures.get("provider_calls", float("nan"))
        out.append(("6 provider calls per happy-path order", f"{calls:.0f}",
                    f"{COST_BEFORE['provider_calls']} (before)", "", "== 2",
                    "met" if calls == 2 else "MISSED"))
        if "declined_calls" in cost.figures:
            out.append(("  per declined / 3-D Secure order",
                        f"{cost.figures['declined_calls']:.0f} / "
                        f"{cost.figures['three_ds_calls']:.0f}", "", "", "", ""))
        for kind in ("statements", "commits", "publishes"):
            value = cost.figures.get(kind, float("nan"))
            out.append((f"6 {kind} per order", f"{value:.0f}",
                        f"{COST_BEFORE[kind]} (before)", f"{value / COST_BEFORE[kind]:.2f}",
                        "", ""))
    if ceiling and ceiling.rate:
        out.append(("1 ceiling: bare chain of 5 no-op tasks", f"{ceiling.rate:.1f} orders/s",
                    "", "", "", ""))
    if naive and naive.rate:
        out.append(("2 seed-style process_order, HTTP in", f"{naive.rate:.1f} orders/s",
                    "", "", "", ""))
    if shop and shop.rate:
        out.append(("3 shop at 0 ms, HTTP in to confirmed+mailed+shipped",
                    f"{shop.rate:.1f} orders/s", "", "", "", ""))
        for label, ref, target in (("3 / 1 (shop / bare chain)", ceiling, 0.5),
                                   ("3 / 2", naive, None)):
            if ref and ref.rate:
                ratio, met = _ratio(shop.rate, ref.rate, at_least=target)
                out.append((f"  {label}", "", f"{ref.rate:.1f}", ratio,
                            f">= {target}" if target else "", met if target else ""))
    split = results.get("shop_split")
    threads = getattr(args, "sized_threads", args.payment_threads)
    if split and split.rate:
        out.append((f"4' case 4's processes at 0 ms (payments: {threads} threads)",
                    f"{split.rate:.1f} orders/s", "", "", "", ""))
    if latency and latency.rate:
        out.append((f"4 shop, provider {args.payment_latency_ms} ms, payments on "
                    f"{threads} threads", f"{latency.rate:.1f} orders/s", "", "", "", ""))
        if split and split.rate:
            ratio, met = _ratio(latency.rate, split.rate, at_least=0.8)
            out.append((f"  4 / 4' ({args.payment_latency_ms} ms / 0 ms, same processes)", "",
                        f"{split.rate:.1f}", ratio, ">= 0.8", met))
        if shop and shop.rate:
            ratio, _ = _ratio(latency.rate, shop.rate)
            out.append(("  4 / 3 (other processes)", "", f"{shop.rate:.1f}", ratio, "", ""))
    burst = results.get("burst")
    if burst and burst.rate:
        f = burst.figures
        ratio, met = _ratio(burst.rate, f["ceiling"], at_least=0.9)
        once = f["confirmed_once"] == f["orders"] == f["confirmed"]
        limits = ("Stripe live limits" if (f["account_rps"], f["endpoint_rps"]) == (100, 25)
                  else f"limits {f['account_rps']:g}/s, {f['endpoint_rps']:g}/s per endpoint")
        out.append((f"8 burst of {f['orders']:,.0f} orders, {limits}, "
                    f"{args.payment_latency_ms} ms, {f['threads']:.0f} threads",
                    f"{burst.rate:.1f} orders/s", f"{f['ceiling']:.0f} (ceiling)", ratio,
                    ">= 0.9", met))
        if split and split.rate:  # the same processes with no provider wait and no limit
            ratio, _ = _ratio(burst.rate, split.rate)
            out.append(("  burst / 4' (what the processes carry at 0 ms, unlimited)", "",
                        f"{split.rate:.1f}", ratio, "", ""))
        out.append(("  429s from the provider", f"{f['limited']:.0f}", "", "", "== 0",
                    "met" if f["limited"] == 0 else "MISSED"))
        out.append(("  orders confirmed, each captured once", f"{f['confirmed_once']:,.0f}",
                    f"{f['orders']:,.0f} placed", "", "all", "met" if once else "MISSED"))
        out.append(("  time to confirmed, p50 / p99", f"{f['p50']:.1f} / {f['p99']:.1f} s",
                    "", "", "report", ""))
        out.append(("  checkout while it drains, p50 / p99",
                    f"{f['post_p50']:.0f} / {f['post_p99']:.0f} ms",
                    f"{f['accept_rate']:.0f} orders/s accepted", "", "", ""))
    api = results.get("checkout_api")
    if api:
        f = api.figures
        ratio, met = _ratio(f["orders_rate"], f["bare_rate"], at_least=0.8)
        out.append((f"5 POST /v1/orders, {args.connections} connections",
                    f"{f['orders_rate']:.0f} req/s", f"{f['bare_rate']:.0f} req/s (bare insert)",
                    ratio, ">= 0.8", met))
        out.append(("  p50 / p99 latency, orders", f"{f['orders_p50']:.0f} / "
                    f"{f['orders_p99']:.0f} ms", f"{f['bare_p50']:.0f} / {f['bare_p99']:.0f} ms",
                    "", "report p99", ""))
        if f["orders_errors"] or f["bare_errors"]:
            out.append(("  non-202 or socket errors", f"{f['orders_errors']:.0f}",
                        f"{f['bare_errors']:.0f}", "", "", ""))
    memory = results.get("memory")
    if memory:
        f = memory.figures
        for name in ("worker", "relay", "api"):
            first, last = f[f"{name}_first"], f[f"{name}_last"]
            target = name != "api"
            growth = last / first - 1
            out.append((f"7 {name} RSS after {f['last_orders']:,.0f} orders",
                        f"{last:.0f} MB", f"{first:.0f} MB after {f['first_orders']:,.0f}",
                        f"{growth:+.1%}", "< +10%" if target else "",
                        ("met" if growth < 0.10 else "MISSED") if target else ""))
    return out


def render(results: Mapping[str, Result], args: argparse.Namespace, *, machine: str,
           python: str, elapsed: float) -> str:
    header: Row = ("case", "figure", "reference (same run)", "ratio", "target", "")
    table = [header, *rows(results, args)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"{machine}; Python {python}; {args.orders:,} orders, worker concurrency "
             f"{args.concurrency} ({args.pool}), {args.clients} clients; {elapsed:.0f} s", ""]
    for n, row in enumerate(table):
        lines.append(" | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f"{r.name}: {r.note}" for r in results.values() if r.note]
    return "\n".join(lines + notes)
