#!/usr/bin/env python3
"""How the sentinel and the store traffic grow with the number of keepers.

A real pgha cluster (3 keepers, 1 sentinel, 1 proxy, real etcd) plus simulated keepers up to N
(3, 10, 30, 100). A simulated keeper copies a real replica's status document (its own uid, address
and boot id) and talks to etcd the way pgha-keeper does when idle: lease keepalive every 0.5 s,
its status put under that lease every 2.5 s (an unchanged status is re-put every
5 x sleep_interval), and a read of the cluster data followed by a watch on it of up to
sleep_interval. The sentinel adds them to the cluster as replicas.

At each N, after a settling period, over a ``--window`` seconds:

* store traffic: etcd's own counters from /metrics (gRPC requests handled, gRPC bytes received and
  sent; the JSON gateway's requests are counted there too), per second and per keeper;
* the leading sentinel's own traffic: it talks to etcd through a counting TCP relay (requests,
  bytes), which shows how often its loop runs;
* decide() time: this process reads the same snapshot the sentinel reads (``Sentinel.snapshot``)
  and times ``decide()`` on it ``--repeat`` times (median, p95), and the snapshot parse too.

Writes bench/results/scale-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import re
import secrets
import socket
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import harness, load, prepare, tmp_dir, write_result  # noqa: E402

from pgha.keeper.main import REREAD_EVERY  # noqa: E402
from pgha.model import KeeperStatus, keys  # noqa: E402
from pgha.sentinel.decide import Memory, decide  # noqa: E402
from pgha.sentinel.main import Sentinel  # noqa: E402
from pgha.store.etcd import EtcdStore  # noqa: E402

SLEEP_INTERVAL = 0.5


class CountingRelay:
    """TCP relay on loopback that counts bytes each way and HTTP requests (client chunks starting with
    a method). One thread per direction per connection; good enough for one sentinel's traffic."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bytes_up = 0
        self.bytes_down = 0
        self.requests = 0
        self.connections = 0
        self._stop = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            self.connections += 1
            threading.Thread(target=self._pipe, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                        if data[:5] in (b"POST ", b"GET /", b"PUT /"):
                            self.requests += 1
                    else:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class SimKeeper:
    """One simulated keeper (see the module docstring for its store traffic)."""

    def __init__(self, endpoints: str, k: Any, template: KeeperStatus, uid: str, port: int) -> None:
        self.store = EtcdStore(endpoints, timeout=3.0)
        self.k = k
        self.status = replace(template, uid=uid, address=f"127.0.0.1:{port}", api_address="",
                              boot_id=secrets.token_hex(8))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._lease_loop, daemon=True),
                        threading.Thread(target=self._cd_loop, daemon=True)]
        self.lease = 0

    def start(self) -> None:
        self.lease = self.store.grant(3)
        self.store.put(self.k.keeper(self.status.uid), replace(self.status, reported_at=time.time()).dumps(),
                       lease=self.lease)
        for t in self.threads:
            t.start()

    def _lease_loop(self) -> None:
        last_put = time.monotonic()
        while not self.stop.wait(SLEEP_INTERVAL):
            try:
                if self.store.keepalive(self.lease) <= 0:
                    self.lease = self.store.grant(3)
                    last_put = 0.0
                if time.monotonic() - last_put >= 5 * SLEEP_INTERVAL:
                    self.store.put(self.k.keeper(self.status.uid),
                                   replace(self.status, reported_at=time.time()).dumps(), lease=self.lease)
                    last_put = time.monotonic()
            except Exception:  # noqa: BLE001 - a store hiccup: try again next round
                pass

    def _cd_loop(self) -> None:
        """Like pgha-keeper's main loop: re-read the cluster data when the watch on it saw a change,
        and at least every REREAD_EVERY loops."""
        changed, rev, loops = True, 0, 0
        while not self.stop.is_set():
            try:
                if changed or loops >= REREAD_EVERY:
                    kv = self.store.get(self.k.clusterdata)
                    rev, loops = (kv.mod_revision if kv else 0), 0
                loops += 1
                changed = self.store.wait(self.k.clusterdata, rev, SLEEP_INTERVAL)
            except Exception:  # noqa: BLE001
                changed = True
                self.stop.wait(SLEEP_INTERVAL)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        try:
            self.store.revoke(self.lease)
        except Exception:  # noqa: BLE001
            pass
        self.store.close()


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+)$")


def etcd_counters(endpoint: str) -> dict[str, float]:
    """Sum of etcd's gRPC request and byte counters."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {"grpc_requests": 0.0, "grpc_received_bytes": 0.0, "grpc_sent_bytes": 0.0}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        name, value = m.group(1), float(m.group(3))
        if name == "grpc_server_handled_total":
            out["grpc_requests"] += value
        elif name == "etcd_network_client_grpc_received_bytes_total":
            out["grpc_received_bytes"] += value
        elif name == "etcd_network_client_grpc_sent_bytes_total":
            out["grpc_sent_bytes"] += value
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keepers", default="3,10,30,100")
    p.add_argument("--window", type=float, default=20.0, help="seconds of traffic counted at each size")
    p.add_argument("--settle", type=float, default=8.0, help="seconds to wait after adding keepers")
    p.add_argument("--repeat", type=int, default=200, help="decide() calls timed at each size")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    if not prepare():
        return 2
    sizes = [int(x) for x in args.keepers.split(",")]
    base = tmp_dir("pgha-bench-scale-")
    cluster = harness.PghaCluster(base / "c", keepers=3, sentinels=1, proxies=1)
    relay = CountingRelay(("127.0.0.1", cluster.etcd.client_ports[0]))
    sentinel = cluster.sentinels["sentinel0"]
    sentinel.argv = [f"http://127.0.0.1:{relay.port}" if a == cluster.etcd.endpoints else a for a in sentinel.argv]
    sims: list[SimKeeper] = []
    rows: list[dict[str, Any]] = []
    load_before = load()
    try:
        cluster.start()
        st = cluster.wait_for(lambda s: s["cluster"]["phase"] == "normal" and bool(s["cluster"]["primary"])
                              and len(s["keepers"]) == 3 and all(k["healthy"] for k in s["keepers"]),
                              timeout=180, what="a healthy 3-keeper cluster")
        primary = st["cluster"]["primary"]
        k = keys(harness.STORE_PREFIX, cluster.cluster_name)
        reader = EtcdStore(cluster.etcd.endpoints, timeout=5.0)
        replica = next(u for u in cluster.keepers if u != primary)
        template = KeeperStatus.loads(reader.get(k.keeper(replica)).value)
        probe_sentinel = Sentinel(reader, harness.STORE_PREFIX, cluster.cluster_name, "benchreader")
        for n in sizes:
            while 3 + len(sims) < n:
                s = SimKeeper(cluster.etcd.endpoints, k, template, f"sim{len(sims):03d}", harness.free_port())
                s.start()
                sims.append(s)
            time.sleep(args.settle)
            e0, r0, t0 = etcd_counters(cluster.etcd.endpoint_list[0]), relay.counters(), time.monotonic()
            time.sleep(args.window)
            e1, r1, t1 = etcd_counters(cluster.etcd.endpoint_list[0]), relay.counters(), time.monotonic()
            dt = t1 - t0
            # decide() on the snapshot the sentinel reads
            parse_times = []
            for _ in range(20):
                a = time.perf_counter()
                snap, _, _ = probe_sentinel.snapshot()
                parse_times.append(time.perf_counter() - a)
            assert snap is not None
            memory = Memory()
            decide(snap, memory)
            times = []
            for _ in range(args.repeat):
                a = time.perf_counter()
                decide(snap, memory)
                times.append(time.perf_counter() - a)
            times.sort()
            cd_keepers = len(snap.cd.keepers) if snap.cd is not None else 0
            # decide() ran the whole steady-state path (not an early return before initialization)
            steady = snap.spec is not None and snap.cd is not None and snap.cd.phase == "normal" \
                and snap.cd.primary is not None
            row = {
                "keepers": n, "keepers_in_snapshot": len(snap.keepers), "keepers_in_clusterdata": cd_keepers,
                "decide_on_steady_state": steady,
                "window_s": round(dt, 2),
                "etcd_requests_per_s": round((e1["grpc_requests"] - e0["grpc_requests"]) / dt, 1),
                "etcd_bytes_in_per_s": round((e1["grpc_received_bytes"] - e0["grpc_received_bytes"]) / dt),
                "etcd_bytes_out_per_s": round((e1["grpc_sent_bytes"] - e0["grpc_sent_bytes"]) / dt),
                "sentinel_requests_per_s": round((r1["requests"] - r0["requests"]) / dt, 1),
                "sentinel_bytes_up_per_s": round((r1["bytes_up"] - r0["bytes_up"]) / dt),
                "sentinel_bytes_down_per_s": round((r1["bytes_down"] - r0["bytes_down"]) / dt),
                "decide_median_ms": round(statistics.median(times) * 1000, 3),
                "decide_p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 3),
                "snapshot_read_parse_median_ms": round(statistics.median(parse_times) * 1000, 2),
                "loadavg_1": load()["loadavg_1_5_15"][:1],
            }
            row["etcd_requests_per_s_per_keeper"] = round(row["etcd_requests_per_s"] / n, 2)
            row["etcd_bytes_per_s_per_keeper"] = round((row["etcd_bytes_in_per_s"] + row["etcd_bytes_out_per_s"]) / n)
            rows.append(row)
            print(f"N={n:<4} etcd {row['etcd_requests_per_s']:7.1f} req/s ({row['etcd_requests_per_s_per_keeper']:5.2f}"
                  f"/keeper), {(row['etcd_bytes_in_per_s'] + row['etcd_bytes_out_per_s']) / 1024:8.1f} KiB/s; "
                  f"sentinel {row['sentinel_requests_per_s']:5.1f} req/s "
                  f"{row['sentinel_bytes_down_per_s'] / 1024:8.1f} KiB/s down; decide {row['decide_median_ms']:.3f} ms "
                  f"(p95 {row['decide_p95_ms']:.3f}); snapshot {row['snapshot_read_parse_median_ms']:.1f} ms; "
                  f"in cd {cd_keepers}", flush=True)
        reader.close()
        cluster.check_logs()
    finally:
        for s in sims:
            s.stop.set()
        for s in sims:
            s.close()
        cluster.stop()
        relay.close()
        harness.remove_tree(base)
    write_result("scale", {"load_before": load_before, "load_after": load(), "window_s": args.window,
                           "simulated_keeper": "keepalive every 0.5s, status put every 2.5s, cd get+watch(0.5s)",
                           "rows": rows}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
