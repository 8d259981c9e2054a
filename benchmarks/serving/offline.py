"""The physical limit: the bundled minilm called directly in one process (no server).

Uses the very runtime code the replicas run, with the same thread count, on the same
sentences the load generator sends. Prints one JSON object: sentences/s per batch size.
Run by ``benchmarks/serving/run.py``; usable alone:
``python benchmarks/serving/offline.py --seconds 4``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

from aiscale.bench.sentences import SENTENCES
from aiscale.runtimes import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args()
    model = load_model("minilm", "bundled", {"num_threads": args.num_threads})
    model.load()
    texts = itertools.cycle(SENTENCES)
    results: dict[str, float] = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        model.predict([next(texts) for _ in range(batch_size)])  # warm-up
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < args.seconds:
            model.predict([next(texts) for _ in range(batch_size)])
            done += batch_size
        results[str(batch_size)] = done / (time.perf_counter() - started)
    print(json.dumps({"sentences_per_s": results}))


if __name__ == "__main__":
    main()
