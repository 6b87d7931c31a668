#!/usr/bin/env python3
"""PNG plots for docs/benchmarks.md from result files (matplotlib, a bench-only dependency).

Usage: bench/plots.py RESULT.json [RESULT.json ...] [--out docs/img]
Each file is either a combined ``bench/results/<timestamp>.json`` (from run_all.py) or one
benchmark's own file (failover-*, proxy-cost-*, scale-*, bringup-*). A plot is drawn for each kind
of result found; with several proxy-cost files (e.g. before and after a change) they are drawn
side by side, labelled with their ``label``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent



def _save(fig: Any, out: Path, filename: str) -> Path:
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

def _docs(paths: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in paths:
        doc = json.loads(Path(p).read_text())
        if doc.get("benchmark") == "all":
            for r in doc["results"].values():
                out.append((r["file"], r["data"]))
        else:
            out.append((Path(p).name, doc))
    return out


def failover(name: str, doc: dict[str, Any], out: Path) -> Path:
    summary = doc["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("crash", "switchover")):
        keys = [k for k in summary if k.endswith("/" + kind)]
        labels = [k.rsplit("/", 1)[0] for k in keys]
        med = [summary[k]["median_unavailability_s"] for k in keys]
        worst = [summary[k]["worst_unavailability_s"] for k in keys]
        x = range(len(keys))
        ax.bar([i - 0.2 for i in x], med, 0.4, label="median")
        ax.bar([i + 0.2 for i in x], worst, 0.4, label="worst")
        ax.set_xticks(list(x), labels, rotation=15)
        ax.set_ylabel("write unavailability (s)")
        ax.set_title(f"{kind} ({summary[keys[0]]['drills'] if keys else 0} drills each)")
        for i, v in enumerate(med):
            ax.annotate(f"{v:.1f}", (i - 0.2, v), ha="center", va="bottom", fontsize=8)
        ax.legend()
    fig.suptitle(f"Write unavailability seen by a client writing every 20 ms ({name})", fontsize=9)
    return _save(fig, out, "failover.png")


def proxy(items: list[tuple[str, dict[str, Any]]], out: Path) -> Path:
    """pgha-proxy TPS relative to HAProxy's in the same run, per cell; one bar per file and pgha path."""
    cells = [(w, n) for w in ("select", "tpcb") for n in (1, 8, 32)]
    series: list[tuple[str, list[float]]] = []
    for name, doc in items:
        rows = {(r["workload"], r["clients"]): r for r in doc["ratios"]}
        for path in ("pgha-proxy-asyncio", "pgha-proxy", "pgha-proxy-x2"):
            key = f"{path}/haproxy"
            if not any(key in r for r in rows.values()):
                continue
            what = {"pgha-proxy-asyncio": "1 worker, asyncio loop", "pgha-proxy": "1 worker",
                    "pgha-proxy-x2": "2 workers, the role's default"}[path]
            label = f"{path} ({what}) — {doc['label']} [{name}]" if doc.get("label") else f"{path} ({what}) [{name}]"
            series.append((label, [rows.get(c, {}).get(key, float("nan")) for c in cells]))
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series):
        ax.bar([j + i * width for j in range(len(cells))], vals, width, label=label[:110])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(0.9, color="red", lw=0.8, ls="--", label="target on select-only, 8 clients: 0.9")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))],
                  [f"{'select-only' if w == 'select' else 'TPC-B-like'}\n{n} clients" for w, n in cells])
    ax.set_ylabel("pgha-proxy TPS / HAProxy TPS (same run)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    ax.set_title("Proxy throughput relative to HAProxy (pgbench, 2 cores, shared machine)", fontsize=9)
    fig.tight_layout()
    path = out / "proxy-cost.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def scale(name: str, doc: dict[str, Any], out: Path) -> Path:
    rows = doc["rows"]
    n = [r["keepers"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(n, [r["etcd_requests_per_s"] for r in rows], "o-", label="etcd requests/s (all clients)")
    axes[0].plot(n, [r["sentinel_requests_per_s"] for r in rows], "s-", label="leading sentinel requests/s")
    axes[0].plot(n, [r["etcd_requests_per_s_per_keeper"] for r in rows], "^-", label="etcd requests/s per keeper")
    axes[0].set_xlabel("keepers")
    axes[0].set_ylabel("requests per second")
    axes[0].legend(fontsize=7)
    axes[1].plot(n, [(r["etcd_bytes_in_per_s"] + r["etcd_bytes_out_per_s"]) / 1024 for r in rows], "o-",
                 label="etcd KiB/s (all clients)")
    axes[1].plot(n, [(r["sentinel_bytes_up_per_s"] + r["sentinel_bytes_down_per_s"]) / 1024 for r in rows], "s-",
                 label="leading sentinel KiB/s")
    axes[1].plot(n, [r["etcd_bytes_per_s_per_keeper"] / 1024 for r in rows], "^-", label="etcd KiB/s per keeper")
    axes[1].set_xlabel("keepers")
    axes[1].set_ylabel("KiB per second")
    axes[1].legend(fontsize=7)
    axes[2].plot(n, [r["decide_median_ms"] for r in rows], "o-", label="decide() median")
    axes[2].plot(n, [r["decide_p95_ms"] for r in rows], "s--", label="decide() p95")
    axes[2].plot(n, [r["snapshot_read_parse_median_ms"] for r in rows], "^-", label="snapshot read+parse")
    axes[2].set_xlabel("keepers")
    axes[2].set_ylabel("ms (log scale)")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Scale: store traffic and sentinel decision time ({name})", fontsize=9)
    return _save(fig, out, "scale.png")


def bringup(name: str, doc: dict[str, Any], out: Path) -> Path:
    summary = {k: v for k, v in doc["summary"].items() if v.get("median_s") is not None}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(summary)
    ax.bar(labels, [summary[k]["median_s"] for k in labels], label="median")
    ax.scatter(labels, [summary[k]["worst_s"] for k in labels], color="black", marker="_", s=400, label="worst")
    ax.set_ylabel("seconds to a healthy 3-member cluster")
    ax.legend(fontsize=7)
    ax.set_title(f"Bring-up ({name})", fontsize=9)
    return _save(fig, out, "bringup.png")


def partition(name: str, doc: dict[str, Any], out: Path) -> Path:
    """Write unavailability (median bar, worst mark) and the worst overlap of the two primaries per
    partition kind and mode (bench/partition.py)."""
    summary = {k: v for k, v in doc["summary"].items() if v.get("rto_median_s") is not None}
    labels = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].bar(labels, [summary[k]["rto_median_s"] for k in labels], label="median")
    axes[0].scatter(labels, [summary[k]["rto_worst_s"] for k in labels], color="black", marker="_", s=300,
                    label="worst")
    axes[0].set_ylabel("write unavailability (s), majority-side client")
    axes[0].legend(fontsize=7)
    ov = [(k, summary[k]["overlap_worst_s"]) for k in labels if summary[k].get("overlap_worst_s") is not None]
    axes[1].bar([k for k, _ in ov], [v for _, v in ov], color=["#55a868" if v < 0 else "#c44e52" for _, v in ov])
    axes[1].axhline(0, color="black", linewidth=0.8)
    axes[1].set_ylabel("worst overlap (s): old primary's last ack - new one's first")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
    fig.suptitle(f"Partition drills on three hosts ({name})", fontsize=9)
    return _save(fig, out, "partition.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+")
    p.add_argument("--out", default=str(HERE.parent / "docs" / "img"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = _docs(args.files)
    proxies = [(n, d) for n, d in docs if d.get("benchmark") == "proxy-cost"]
    made = []
    for name, doc in docs:
        kind = doc.get("benchmark")
        if kind == "failover" and "systems" in doc:
            made.append(failover(name, doc, out))
        elif kind == "scale":
            made.append(scale(name, doc, out))
        elif kind == "bringup":
            made.append(bringup(name, doc, out))
        elif kind == "partition" and doc.get("summary"):
            made.append(partition(name, doc, out))
    if proxies:
        made.append(proxy(proxies, out))
    for m in made:
        print(f"plot: {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
