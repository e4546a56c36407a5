#!/usr/bin/env python3
"""Per-kernel table of an Nsight Compute run, for the GPU check's summary.

    scripts/ncu_table.py NCU.csv [--top N] [--title TEXT]

NCU.csv is what `ncu --csv --print-units base --section SpeedOfLight --section LaunchStats
--section Occupancy --log-file NCU.csv APP` writes (the "details" page: one row per launch, section
and metric). Launches are grouped by kernel name; the table lists the N kernels with the largest
total duration: launches, total and mean duration, share of all profiled time, and the launch-
weighted means of SM throughput, memory throughput and DRAM throughput (percent of the card's
peak), registers per thread and achieved occupancy.

Under ncu every launch runs alone with flushed caches and clocks locked to base, so durations are
longer than in a normal run: read them as shares and ceilings, not as step times.
"""

import argparse
import csv
import sys
from collections import OrderedDict

# The details-page metric names (stable across Nsight Compute versions) of each column.
DURATION = "Duration"
SM = "Compute (SM) Throughput"
MEMORY = "Memory Throughput"
DRAM = "DRAM Throughput"
REGISTERS = "Registers Per Thread"
OCCUPANCY = "Achieved Occupancy"

TO_NS = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}


def number(text):
    """A metric value as ncu prints it ("1,234.5", "n/a"), or None."""
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def launches(path):
    """Launch id -> (kernel name, {metric: (unit, value)}) in the order of the file."""
    with open(path, newline="", errors="replace") as f:
        # ncu's own messages (==PROF==, ==WARNING==) and the application's output share the file.
        rows = [line for line in f if line.startswith('"')]
    found = OrderedDict()
    for r in csv.DictReader(rows):
        if "Kernel Name" not in r or "Metric Name" not in r:
            continue
        _, metrics = found.setdefault(r.get("ID", ""), (r["Kernel Name"], {}))
        metrics[r["Metric Name"]] = (r.get("Metric Unit", ""), number(r.get("Metric Value", "")))
    return found


def duration_ns(metrics):
    unit, value = metrics.get(DURATION, ("", None))
    if value is None or unit not in TO_NS:
        return None
    return value * TO_NS[unit]


def table(path, top, title):
    by_kernel = OrderedDict()
    for name, metrics in launches(path).values():
        by_kernel.setdefault(name, []).append(metrics)
    if not by_kernel:
        return None
    total_ns = sum(duration_ns(m) or 0.0 for ms in by_kernel.values() for m in ms)

    def mean(ms, metric):
        values = [m[metric][1] for m in ms if metric in m and m[metric][1] is not None]
        return sum(values) / len(values) if values else None

    rows = []
    for name, ms in by_kernel.items():
        kernel_ns = sum(duration_ns(m) or 0.0 for m in ms)
        rows.append((kernel_ns, name, ms))
    rows.sort(key=lambda r: (-r[0], r[1]))
    launch_count = sum(len(ms) for ms in by_kernel.values())

    def fmt(v, digits=1):
        return "" if v is None else f"{v:.{digits}f}"

    out = [f"## {title}", ""]
    out.append(
        f"{launch_count} launches of {len(by_kernel)} kernels, {total_ns / 1e6:.3f} ms in all under ncu (caches "
        "flushed and clocks at base before every launch: shares and ceilings, not step times). SM, memory and "
        "DRAM: percent of the card's peak; occupancy: achieved warps over the most the SM holds, percent."
    )
    out.append("")
    out.append("| kernel | launches | total ms | mean us | share % | SM % | memory % | DRAM % | registers | occupancy % |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kernel_ns, name, ms in rows[:top]:
        share = 100.0 * kernel_ns / total_ns if total_ns else None
        out.append(
            f"| {name} | {len(ms)} | {kernel_ns / 1e6:.3f} | {kernel_ns / 1e3 / len(ms):.1f} | {fmt(share)} | "
            f"{fmt(mean(ms, SM))} | {fmt(mean(ms, MEMORY))} | {fmt(mean(ms, DRAM))} | {fmt(mean(ms, REGISTERS), 0)} | "
            f"{fmt(mean(ms, OCCUPANCY))} |"
        )
    if len(rows) > top:
        rest_ns = sum(r[0] for r in rows[top:])
        rest_share = 100.0 * rest_ns / total_ns if total_ns else None
        rest_launches = sum(len(r[2]) for r in rows[top:])
        out.append(
            f"| {len(rows) - top} other kernels | {rest_launches} | {rest_ns / 1e6:.3f} | | {fmt(rest_share)} "
            "| | | | | |"
        )
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--title", default="Nsight Compute: kernels of one training step")
    args = parser.parse_args()
    try:
        text = table(args.csv, max(args.top, 1), args.title)
    except OSError as e:
        print(f"ncu_table: cannot read {args.csv}: {e}", file=sys.stderr)
        return 1
    if text is None:
        print(f"ncu_table: {args.csv} holds no kernel metrics", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
