"""The serving benchmark of two source trees side by side: `aiscale serve minilm` at one
concurrency, before and after a change, interleaved round by round in one run.

Why: these VMs drift ±20% within an hour, so a refactor's cost is only visible as same-run
ratios. Each round serves the default model from the "before" tree (a checkout of an older
commit, e.g. ``git worktree add /tmp/before <sha>``, imported through ``PYTHONPATH`` so its
replicas run its code too) and from this tree, in alternating order, and drives both with this
tree's ``aiscale bench`` (the client is the same code for both). The offline limit (minilm
called directly, best batch size, the replicas' short OpenMP spin) is measured at the start
and the end of the run.

    .venv/bin/python benchmarks/serving/compare_trees.py --before /tmp/before --rounds 4

Writes ``<out>.json`` and ``<out>.md`` beside this file (``--out``, default ``COMPARE``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.serving.run import AISCALE, bench, run_json, stop  # noqa: E402


def offline_limit(seconds: float) -> float:
    """Best sentences/s over batch sizes of minilm called directly (replicas' spin)."""
    rates = run_json(
        [sys.executable, "benchmarks/serving/offline.py", "--seconds", str(seconds)],
        env={"GOMP_SPINCOUNT": "10000"},
    )["sentences_per_s"]
    return float(max(rates.values()))


def serve(tree: Path | None, data_dir: Path, model: str) -> tuple[subprocess.Popen[str], str]:
    """``aiscale serve <model>`` from ``tree`` (``None``: this one) on a free port."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
    process = subprocess.Popen(
        [*AISCALE, "serve", model, "--name", "bench", "--port", "0", "--data-dir",
         str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tree or ROOT,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            return process, found.group(1)
    stop(process)
    raise RuntimeError(f"aiscale serve from {tree or ROOT} did not start")


def one_run(tree: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        process, url = serve(tree, Path(data_dir), args.model)
        path = "/v1/embeddings" if args.model == "minilm" else "/v2/models/bench/infer"
        try:
            return bench(f"{url}{path}", args.concurrency, args.seconds, args.warmup)
        finally:
            stop(process)


def render(results: dict[str, Any], concurrency: int, seconds: float) -> list[str]:
    """The Markdown of one comparison; the offline limit only where it was measured."""
    offline = results["offline_limits"]
    limit = max(offline)
    has_limit = limit == limit  # NaN (not measured) compares unequal to itself
    rounds, ratios = results["rounds"], results["after_over_before"]
    lines = [
        "# Serving before and after, side by side",
        "",
        f"- machine: {results['machine']}",
        f"- command: `{results['command']}`; date {results['date_utc']} UTC",
        f"- before: {results['before']}; after: this tree",
    ]
    if has_limit:
        lines.append(
            f"- offline limit (minilm direct, best batch, short spin), start / end: "
            f"{offline[0]:.1f} / {offline[1]:.1f} sentences/s"
        )
    extra = " before / limit | after / limit |" if has_limit else ""
    lines += [
        "",
        "| round | before req/s | after req/s | after / before |" + extra,
        "| ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if has_limit else ""),
    ]
    for index, (found, ratio) in enumerate(zip(rounds, ratios, strict=True)):
        b, a = found["before"]["throughput_rps"], found["after"]["throughput_rps"]
        row = f"| {index + 1} | {b:.1f} | {a:.1f} | {ratio:.3f} |"
        if has_limit:
            row += f" {b / limit:.3f} | {a / limit:.3f} |"
        lines.append(row)
    lines += [
        "",
        f"After / before: median **{statistics.median(ratios):.3f}**, range "
        f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} interleaved rounds "
        f"(concurrency {concurrency}, {seconds:g} s each).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, default=None,
                        help="the older source tree (required unless --from-json)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--offline-seconds", type=float, default=4.0)
    parser.add_argument("--model", default="minilm",
                        help="what to serve: minilm (the offline limit is measured), or e.g. "
                        "tests.models:NoOp for the framework's own cost (OIP v2)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the Markdown of a results JSON this script wrote")
    parser.add_argument("--out", default="COMPARE", help="results name: <out>.md, <out>.json")
    args = parser.parse_args()
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        found = re.search(r"--concurrency (\d+)", data["command"])
        secs = re.search(r"--seconds (\S+)", data["command"])
        lines = render(data, int(found.group(1)) if found else 64,
                       float(secs.group(1)) if secs else 10.0)
        args.from_json.with_suffix(".md").write_text("\n".join(lines))
        print("\n".join(lines))
        return
    if args.before is None:
        parser.error("--before is required")
    before_sha = subprocess.run(
        ["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()
    is_minilm = args.model == "minilm"
    offline = [offline_limit(args.offline_seconds) if is_minilm else float("nan")]
    rounds = []
    for index in range(args.rounds):
        order = ("before", "after") if index % 2 == 0 else ("after", "before")
        found: dict[str, Any] = {}
        for label in order:
            found[label] = one_run(args.before if label == "before" else None, args)
            print(f"round {index + 1} {label}: {found[label]['throughput_rps']:.1f} req/s",
                  flush=True)
        rounds.append(found)
    offline.append(offline_limit(args.offline_seconds) if is_minilm else float("nan"))
    ratios = [r["after"]["throughput_rps"] / r["before"]["throughput_rps"] for r in rounds]
    results = {
        "machine": describe_machine(ROOT),
        "command": " ".join(sys.argv),
        "before": f"{args.before} ({before_sha})",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "offline_limits": offline,
        "rounds": rounds,
        "after_over_before": ratios,
    }
    (Path(__file__).parent / f"{args.out}.json").write_text(json.dumps(results, indent=2))
    lines = render(results, args.concurrency, args.seconds)
    (Path(__file__).parent / f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
