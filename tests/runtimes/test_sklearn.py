"""The sklearn runtime on small estimators fitted here: schema, outputs equal to the
estimator's own, one output per item, and the error paths."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

from aiscale.errors import InvalidInput, ModelLoadError
from aiscale.model import Schema, TensorSpec
from aiscale.runtimes import load_model

RNG = np.random.default_rng(7)
FEATURES = RNG.normal(size=(60, 3))
TARGET = FEATURES @ np.array([1.5, -2.0, 0.5]) + 0.1 * RNG.normal(size=60)
QUERY = [[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0], [3.0, -1.0, 0.5]]


def _dump(tmp_path: Path, estimator: object, name: str = "model.joblib") -> str:
    path = tmp_path / name
    joblib.dump(estimator, path)
    return str(path)


def test_regressor_predicts_fp64_scalars_equal_to_the_estimator(tmp_path: Path) -> None:
    """A regressor: FP64 (3,) in, FP64 scalar out, same numbers as estimator.predict."""
    estimator = Ridge(alpha=0.5).fit(FEATURES, TARGET)
    model = load_model("sklearn", _dump(tmp_path, estimator))
    model.load()
    assert model.schema == Schema(
        (TensorSpec("input", "FP64", (3,)),), (TensorSpec("output", "FP64", ()),)
    )
    out = model.predict(QUERY)
    assert len(out) == len(QUERY)
    np.testing.assert_allclose(out, estimator.predict(np.array(QUERY)), rtol=0, atol=0)


def test_multi_target_regressor_outputs_one_vector_per_item(tmp_path: Path) -> None:
    """A regressor fitted on two targets declares FP64 of shape (2,)."""
    targets = np.stack([TARGET, -TARGET], axis=1)
    model = load_model("sklearn", _dump(tmp_path, LinearRegression().fit(FEATURES, targets)))
    model.load()
    assert model.schema.outputs == (TensorSpec("output", "FP64", (2,)),)
    out = model.predict(QUERY)
    assert np.asarray(out).shape == (3, 2)


def test_classifier_labels_keep_their_type(tmp_path: Path) -> None:
    """Integer labels are INT64, string labels BYTES (as str); both equal estimator.predict."""
    int_labels = (TARGET > 0).astype(int) + 4  # classes 4 and 5
    ints = LogisticRegression().fit(FEATURES, int_labels)
    names = LogisticRegression().fit(FEATURES, np.where(TARGET > 0, "pos", "neg"))
    int_model = load_model("sklearn", _dump(tmp_path, ints, "ints.joblib"))
    name_model = load_model("sklearn", _dump(tmp_path, names, "names.pkl"))
    int_model.load()
    name_model.load()
    assert int_model.schema.outputs == (TensorSpec("output", "INT64", ()),)
    assert name_model.schema.outputs == (TensorSpec("output", "BYTES", ()),)
    assert list(int_model.predict(QUERY)) == list(ints.predict(np.array(QUERY)))
    labels = name_model.predict(QUERY)
    assert labels == [str(x) for x in names.predict(np.array(QUERY))]
    assert all(isinstance(label, str) for label in labels)


def test_predict_proba_gives_one_probability_row_per_item(tmp_path: Path) -> None:
    """method=predict_proba: FP64 of shape (n_classes,), equal to the estimator's."""
    labels = np.digitize(TARGET, [-1.0, 1.0])  # three classes
    estimator = LogisticRegression().fit(FEATURES, labels)
    model = load_model("sklearn", _dump(tmp_path, estimator), {"method": "predict_proba"})
    model.load()
    assert model.schema.outputs == (TensorSpec("output", "FP64", (3,)),)
    out = model.predict(QUERY)
    np.testing.assert_allclose(out, estimator.predict_proba(np.array(QUERY)))
    assert model.predict([]) == []


def test_predict_proba_on_a_regressor_is_refused_at_load(tmp_path: Path) -> None:
    """Asking a regressor for probabilities fails at load, naming config.method."""
    model = load_model(
        "sklearn", _dump(tmp_path, Ridge().fit(FEATURES, TARGET)), {"method": "predict_proba"}
    )
    with pytest.raises(ModelLoadError) as caught:
        model.load()
    assert caught.value.field == "config.method"


@pytest.mark.parametrize("batch", [[[1.0, 2.0]], [[1.0, 2.0, 3.0], [1.0]], [["a", "b", "c"]]])
def test_items_of_the_wrong_shape_are_invalid_input(tmp_path: Path, batch: list[object]) -> None:
    """Items that are not vectors of n_features numbers are refused on field ``input``."""
    model = load_model("sklearn", _dump(tmp_path, Ridge().fit(FEATURES, TARGET)))
    model.load()
    with pytest.raises(InvalidInput) as caught:
        model.predict(batch)
    assert caught.value.field == "input"


def test_missing_file_and_non_estimator_are_model_load_errors(tmp_path: Path) -> None:
    """A missing file, a file that is not a pickle, and a pickle of something that is not
    a fitted estimator each fail load() with ModelLoadError on field ``uri``."""
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"not a pickle at all")
    unfitted = _dump(tmp_path, Ridge(), "unfitted.joblib")
    for uri in [
        str(tmp_path / "missing.joblib"),
        str(garbage),
        _dump(tmp_path, {"a": 1}),
        unfitted,
    ]:
        model = load_model("sklearn", uri)
        with pytest.raises(ModelLoadError) as caught:
            model.load()
        assert caught.value.field == "uri"
