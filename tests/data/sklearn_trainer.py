"""A real retraining command for the loop tests: fits a logistic regression on an exported
dataset (``train.parquet``: features ``input_0``, ``input_1``; the feedback ``label`` where
there is one, else the served ``output``) and saves it with joblib.

    python -m tests.data.sklearn_trainer DATASET_DIR OUTPUT_PATH [--fail]

``--fail`` exits with status 2 after printing a reason, as a broken trainer would.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    dataset, output = Path(argv[0]), Path(argv[1])
    if "--fail" in argv:
        print("trainer: the labels are inconsistent, refusing to train", file=sys.stderr)
        return 2
    import joblib
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    rows = pq.read_table(dataset / "train.parquet").to_pylist()
    features = np.array([[r["input_0"], r["input_1"]] for r in rows], dtype=np.float64)
    labels = np.array(
        [int(r["label"]) if r.get("label") is not None else int(r["output"]) for r in rows]
    )
    model = LogisticRegression().fit(features, labels)
    joblib.dump(model, output)
    print(f"trainer: fitted on {len(rows)} examples, accuracy {model.score(features, labels):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
