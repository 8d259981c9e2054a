"""Scale-out benchmark for issue 6: the Ray runtime against local replica processes.

Five ``aiscale serve`` servers run side by side on this machine:

* ``local``, ``ray_1node``, ``ray_2node``: the default model (minilm), 2 replicas of 1 torch
  thread each, as local processes, as Ray actors on a one-node Ray cluster, and as Ray actors
  on a two-node cluster of 1 CPU per node (so one replica lands on each node);
* ``noop_local``, ``noop_ray``: ``tests.models:NoOp`` (1 replica), local and on Ray, to show
  the runtime's own cost with no model time around it.

The Ray clusters are ``ray.cluster_utils.Cluster`` instances on this machine.

Per-request overhead (concurrency 1): one client sends single requests to the servers in
turn, rotating the order every time, so every server's n-th request is sent within a few
milliseconds of the others'. The overhead is the median of the paired differences (Ray minus
local), which cancels the shared machine's load drift. Throughput (concurrency 64, one
sentence per request on ``/v1/embeddings``): ``aiscale bench`` closed loop, the three minilm
servers interleaved (order rotated) for ``--rounds`` rounds. Figures compare as ratios within one run.

The two Ray "nodes" share this machine's cores: 2 nodes measure what spreading over nodes
costs, not what a second machine would add.

Writes ``benchmarks/scaleout/results.json`` and ``benchmarks/scaleout/RESULTS.md``.

    .venv/bin/python benchmarks/scaleout/run.py [--rounds 8] [--seconds 4] [--warmup 1] [--pairs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import _version, describe_machine  # noqa: E402
from benchmarks.serving.run import bench, start_aiscale, stop  # noqa: E402

MINILM = ("local", "ray_1node", "ray_2node")
NOOP = ("noop_local", "noop_ray")
EMBED = ("/v1/embeddings", {"model": "minilm", "input": "hello world"})
INFER = (
    "/v2/models/noop/infer",
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
)


def start_clusters() -> dict[str, Any]:
    from ray.cluster_utils import Cluster

    # 3 logical CPUs: minilm's 2 replicas and the no-op's 1.
    one = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    two = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    two.add_node(num_cpus=1)
    one.wait_for_nodes()
    two.wait_for_nodes()
    return {"ray_1node": one, "ray_2node": two, "noop_ray": one}


def serve_args(config: str, clusters: dict[str, Any]) -> list[str]:
    if config in NOOP:
        common = ["tests.models:NoOp", "--name", "noop", "--replicas", "1", "--num-threads", "1"]
    else:
        common = ["minilm", "--replicas", "2", "--num-threads", "1"]
    common.append("--no-capture")
    if config in ("local", "noop_local"):
        return common
    return [*common, "--runtime", "ray", "--ray-address", clusters[config].address, "--cpus", "1"]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def paired_latencies(urls: dict[str, str], num_pairs: int) -> dict[str, list[float]]:
    """Single requests to every server in turn (order rotated each time), in milliseconds."""
    names = list(urls)
    clients = {name: httpx.Client(timeout=60) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        for index in range(num_pairs + 20):  # the first 20 warm connections and caches
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                path, body = INFER if name in NOOP else EMBED
                started = time.perf_counter()
                clients[name].post(f"{urls[name]}{path}", json=body).raise_for_status()
                if index >= 20:
                    samples[name].append((time.perf_counter() - started) * 1000.0)
    finally:
        for client in clients.values():
            client.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    machine = describe_machine(ROOT)
    machine["ray"] = _version("ray")
    results: dict[str, Any] = {
        "machine": machine,
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "load_average_start": os.getloadavg(),
    }
    clusters = start_clusters()
    servers: dict[str, tuple[Any, str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in MINILM}
    load_averages: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cold_start_s = {}
            for config in (*MINILM, *NOOP):
                print(f"starting {config} ...", flush=True)
                process, url, seconds = start_aiscale(
                    serve_args(config, clusters), Path(tmp) / config
                )
                servers[config] = (process, url)
                cold_start_s[config] = seconds
                name = "noop" if config in NOOP else "minilm"
                info = httpx.get(f"{url}/admin/deployments/{name}", timeout=10).json()
                results.setdefault("nodes", {})[config] = info["replicas"]["nodes"]
            results["cold_start_s"] = cold_start_s
            print("concurrency 1, paired ...", flush=True)
            load_averages.append(os.getloadavg()[0])
            latencies = paired_latencies(
                {c: servers[c][1] for c in ("local", "ray_1node", *NOOP)}, args.pairs
            )
            load_averages.append(os.getloadavg()[0])
            for round_index in range(args.rounds):
                # Rotated each round, so no server always runs right after the same one.
                shift = round_index % len(MINILM)
                for config in MINILM[shift:] + MINILM[:shift]:
                    print(f"round {round_index + 1}: {config} c=64", flush=True)
                    load_averages.append(os.getloadavg()[0])
                    url = servers[config][1]
                    runs[config].append(bench(f"{url}{EMBED[0]}", 64, args.seconds, args.warmup))
        finally:
            for process, _ in servers.values():
                stop(process)
            for cluster in {id(c): c for c in clusters.values()}.values():
                cluster.shutdown()
    results["load_average_1min_during"] = {
        "min": min(load_averages),
        "median": median(load_averages),
        "max": max(load_averages),
    }
    results["load_average_end"] = os.getloadavg()
    results["c1_latency_ms"] = {
        name: {"p50": median(values), "p90": statistics.quantiles(values, n=10)[-1]}
        for name, values in latencies.items()
    }
    results["c1_ray_added_ms"] = {
        model: median([ray - local for ray, local in zip(latencies[r], latencies[lc], strict=True)])
        for model, r, lc in (("minilm", "ray_1node", "local"), ("noop", "noop_ray", "noop_local"))
    }
    results["c64_runs"] = runs
    results["c64"] = {
        config: {
            "rps": median([r["throughput_rps"] for r in runs[config]]),
            "p99_ms": median([r["p99_ms"] for r in runs[config]]),
            "errors": sum(r["errors"] for r in runs[config]),
        }
        for config in MINILM
    }
    # Per round, so that each ratio compares runs made within a minute of each other.
    results["ratio_ray_1node_to_local_c64_by_round"] = [
        ray["throughput_rps"] / local["throughput_rps"]
        for ray, local in zip(runs["ray_1node"], runs["local"], strict=True)
    ]
    results["ratio_ray_2node_to_1node_c64_by_round"] = [
        two["throughput_rps"] / one["throughput_rps"]
        for two, one in zip(runs["ray_2node"], runs["ray_1node"], strict=True)
    ]
    out = Path(__file__).parent
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(render(results))
    print((out / "RESULTS.md").read_text())


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    load = results["load_average_1min_during"]
    c1 = results["c1_latency_ms"]
    added = results["c1_ray_added_ms"]
    c64 = results["c64"]
    ratio_local = results["ratio_ray_1node_to_local_c64_by_round"]
    ratio_nodes = results["ratio_ray_2node_to_1node_c64_by_round"]
    cold = results["cold_start_s"]
    lines = [
        "# Scale-out: the Ray runtime against local processes (issue 6)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB, "
        f"{machine['platform']}; Python {machine['python']}, torch {machine['torch']}, "
        f"Ray {machine['ray']}, uvicorn {machine['uvicorn']}; git {machine['git_sha']}; "
        f"{machine['date']}.",
        "",
        f"Command: `{results['command']}`",
        "",
        "The machine was shared with other engineers' tests and benchmarks during the run: "
        f"1-minute load average {load['min']:.1f} to {load['max']:.1f} (median "
        f"{load['median']:.1f}) on 2 cores. Absolute figures are therefore low and noisy; the "
        "comparisons below are ratios or paired differences measured side by side.",
        "",
        "Servers: `aiscale serve minilm --replicas 2 --num-threads 1 --no-capture` (and "
        "`tests.models:NoOp --replicas 1`), the Ray ones with `--runtime ray --ray-address "
        "ADDRESS --cpus 1`; the 2-node cluster has 1 CPU per node, so its two replicas sit on "
        "different nodes.",
        "",
        "## Per-request overhead (concurrency 1)",
        "",
        "One client, single requests sent to the servers in turn (order rotated each time); "
        "the added latency is the median of the paired differences.",
        "",
        "| model | local p50 ms | Ray p50 ms | local p90 ms | Ray p90 ms | Ray added, median of pairs |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| minilm (`/v1/embeddings`, one sentence) | {c1['local']['p50']:.2f} | "
        f"{c1['ray_1node']['p50']:.2f} | {c1['local']['p90']:.2f} | {c1['ray_1node']['p90']:.2f} "
        f"| {added['minilm']:+.2f} ms |",
        f"| no-op (OIP v2) | {c1['noop_local']['p50']:.2f} | {c1['noop_ray']['p50']:.2f} | "
        f"{c1['noop_local']['p90']:.2f} | {c1['noop_ray']['p90']:.2f} | {added['noop']:+.2f} ms |",
        "",
        "## Throughput (concurrency 64, minilm)",
        "",
        "`aiscale bench URL/v1/embeddings --concurrency 64`, the three servers interleaved "
        "(order rotated each round), "
        f"{len(ratio_local)} rounds; medians over rounds.",
        "",
        "| server | replicas on | req/s | p99 ms | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for config in MINILM:
        nodes = results["nodes"][config]
        placed = "this machine" if config == "local" else f"{len(set(nodes))} Ray node(s)"
        row = c64[config]
        lines.append(
            f"| {config} | {placed} | {row['rps']:.1f} | {row['p99_ms']:.0f} | {row['errors']} |"
        )
    lines += [
        "",
        "| round | Ray 1 node / local | Ray 2 nodes / Ray 1 node |",
        "| --- | --- | --- |",
    ]
    for index, (a, b) in enumerate(zip(ratio_local, ratio_nodes, strict=True)):
        lines.append(f"| {index + 1} | {a:.3f} | {b:.3f} |")
    lines += [
        "",
        f"Round to round, the ratios range over {min(ratio_local):.2f}–{max(ratio_local):.2f} "
        f"and {min(ratio_nodes):.2f}–{max(ratio_nodes):.2f}: on this loaded machine, "
        "differences smaller than that spread are noise, not the runtime.",
        "",
        "## Summary",
        "",
        f"- Per-request overhead of the Ray runtime: {added['minilm']:+.2f} ms on minilm "
        f"(p50 {c1['local']['p50']:.2f} → {c1['ray_1node']['p50']:.2f} ms), "
        f"{added['noop']:+.2f} ms on a no-op model.",
        f"- Throughput at concurrency 64: Ray on 1 node {median(ratio_local):.3f}× local "
        f"processes; Ray on 2 nodes {median(ratio_nodes):.3f}× Ray on 1 node "
        f"({c64['local']['rps']:.1f}, {c64['ray_1node']['rps']:.1f} and "
        f"{c64['ray_2node']['rps']:.1f} req/s).",
        f"- Start to serving: minilm local {cold['local']:.1f} s, Ray 1 node "
        f"{cold['ray_1node']:.1f} s, Ray 2 nodes {cold['ray_2node']:.1f} s (2 replicas each).",
        "",
        "Both Ray clusters' nodes are processes on this one machine, sharing its "
        f"{machine['cores']} cores: the 2-node figure shows what spreading replicas over nodes "
        "costs (a batch and its reply are small enough to travel inline in the actor call), not "
        "the capacity a second machine would add.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
