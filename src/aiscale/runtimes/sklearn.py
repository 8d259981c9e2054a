"""The ``sklearn`` runtime: a fitted scikit-learn estimator saved with joblib or pickle.

The uri is the path of the file. The schema comes from the estimator: input ``input``,
FP64 of shape ``(n_features_in_,)``; output ``output``, FP64 for a regressor (shape
``(n_outputs_,)`` when it predicts several targets), or for a classifier the label in
the datatype of ``classes_`` (INT64, BOOL, FP64 or BYTES). With ``config["method"] =
"predict_proba"`` the output is FP64 of shape ``(n_classes,)``. A batch becomes one 2-D
array and one call to the estimator.

Loading a pickle runs code from the file: artifacts are trusted like the code that serves
them. scikit-learn and joblib are imported inside ``load()`` only. This module must never
refit or change the estimator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiscale.errors import ConfigError, InvalidInput, ModelLoadError
from aiscale.model import Model, Schema, TensorSpec
from aiscale.runtimes._config import check_keys

_CONFIG_KEYS = frozenset({"method"})
_METHODS = ("predict", "predict_proba")


class SklearnModel(Model):
    """Serves ``estimator.predict`` (or ``predict_proba``) on numeric feature vectors."""

    def __init__(self, uri: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        check_keys(self.config, _CONFIG_KEYS, "sklearn")
        method = self.config.get("method", "predict")
        if method not in _METHODS:
            raise ConfigError(
                f"method must be one of {', '.join(_METHODS)}, not {method!r}",
                field="config.method",
            )
        self.uri = uri
        self.method: str = method
        self._estimator: Any = None
        self._num_features = 0
        self._label_datatype = "FP64"

    def load(self) -> None:
        """Unpickle the estimator and derive the schema; raises ``ModelLoadError``."""
        path = Path(self.uri)
        if not path.is_file():
            raise ModelLoadError(f"estimator file {self.uri!r} does not exist", field="uri")
        import joblib
        from sklearn.base import is_classifier, is_regressor

        try:
            estimator = joblib.load(path)
        except Exception as exc:  # unpickling may raise anything the file's classes raise
            raise ModelLoadError(
                f"cannot unpickle {self.uri!r}: {type(exc).__name__}: {exc}", field="uri"
            ) from exc
        num_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(num_features, int) or not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(
                f"{self.uri!r} holds {type(estimator).__name__}, not a fitted estimator "
                "with n_features_in_ and predict",
                field="uri",
            )
        if self.method == "predict_proba":
            if not is_classifier(estimator) or not hasattr(estimator, "predict_proba"):
                raise ModelLoadError(
                    f"{type(estimator).__name__} has no predict_proba", field="config.method"
                )
            output = TensorSpec("output", "FP64", (len(estimator.classes_),))
        elif is_classifier(estimator):
            self._label_datatype = _label_datatype(estimator.classes_)
            output = TensorSpec("output", self._label_datatype, ())
        elif is_regressor(estimator):
            num_outputs = _num_regression_targets(estimator)
            output = TensorSpec("output", "FP64", (num_outputs,) if num_outputs > 1 else ())
        else:
            # Clusterers and outlier detectors predict integer labels.
            self._label_datatype = "INT64"
            output = TensorSpec("output", "INT64", ())
        self._estimator = estimator
        self._num_features = num_features
        self.schema = Schema(
            inputs=(TensorSpec("input", "FP64", (num_features,)),), outputs=(output,)
        )

    def predict(self, batch: Sequence[Any]) -> Any:
        """One estimator call for the whole batch.

        Returns a numpy array with one row per item (FP64, INT64 or BOOL), or a list of
        ``str`` for BYTES labels. Raises ``InvalidInput`` (field ``input``) when an item is
        not a vector of ``n_features_in_`` numbers.
        """
        import numpy as np

        if self._estimator is None:
            raise ModelLoadError("predict called before load", field="uri")
        if not batch:
            return []  # scikit-learn refuses empty arrays; an empty batch has an empty answer
        try:
            features = np.asarray(batch, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(
                f"each item must be a list of {self._num_features} numbers", field="input"
            ) from exc
        if features.ndim != 2 or features.shape[1] != self._num_features:
            raise InvalidInput(
                f"each item must be a list of {self._num_features} numbers", field="input"
            )
        if self.method == "predict_proba":
            return np.asarray(self._estimator.predict_proba(features), dtype=np.float64)
        result = np.asarray(self._estimator.predict(features))
        if self._label_datatype == "BYTES":
            return [str(label) for label in result]
        if self._label_datatype == "INT64":
            return result.astype(np.int64, copy=False)
        if self._label_datatype == "BOOL":
            return result.astype(np.bool_, copy=False)
        return result.astype(np.float64, copy=False)


def _label_datatype(classes: Any) -> str:
    """OIP datatype of a classifier's labels, from the numpy kind of ``classes_``."""
    import numpy as np

    classes = np.asarray(classes)
    if classes.ndim != 1:
        raise ModelLoadError("multi-output classifiers are not supported", field="uri")
    kind = classes.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"  # str, bytes and object labels travel as text


def _num_regression_targets(estimator: Any) -> int:
    """Targets a regressor predicts: ``n_outputs_`` where the estimator records it (trees,
    ensembles, MLPs), else the rows of a 2-D ``coef_`` (linear models), else one."""
    num_outputs = getattr(estimator, "n_outputs_", None)
    if isinstance(num_outputs, int):
        return num_outputs
    coef_shape: tuple[int, ...] = getattr(getattr(estimator, "coef_", None), "shape", ())
    return int(coef_shape[0]) if len(coef_shape) == 2 else 1
