"""The python runtime: a Model subclass by import path, and every way the path can be wrong."""

from __future__ import annotations

import pytest

from aiscale.errors import ModelLoadError
from aiscale.model import Model
from aiscale.runtimes import load_model
from tests.models import Echo, Sum


class RaisingModel(Model):
    """A model whose constructor refuses every config."""

    def __init__(self, config: object = None) -> None:
        raise ValueError("bad config")

    def predict(self, batch: object) -> list[object]:
        return []


def test_import_path_gives_an_instance_built_with_the_config() -> None:
    """``module:Class`` is imported and instantiated with the deployment config."""
    model = load_model("python", "tests.models:Fail", {"error_rate": 0.0, "seed": 3})
    model.load()
    assert model.config == {"error_rate": 0.0, "seed": 3}
    assert model.predict(["a", "b"]) == ["a", "b"]


def test_loaded_class_keeps_its_schema_and_one_output_per_item() -> None:
    """The user's class is returned as it is: its schema, its predict."""
    echo = load_model("python", "tests.models:Echo")
    assert isinstance(echo, Echo)
    assert echo.schema == Echo.schema
    summed = load_model("python", "tests.models:Sum")
    assert isinstance(summed, Sum)
    assert summed.predict([[1, 2], [3.5], []]) == [3.0, 3.5, 0.0]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("tests.models", "not of the form"),
        ("tests.models:", "not of the form"),
        (":Echo", "not of the form"),
        ("tests.no_such_module:Echo", "cannot import module 'tests.no_such_module'"),
        ("tests.models:NoSuchClass", "has no attribute 'NoSuchClass'"),
        ("collections:OrderedDict", "not a subclass of aiscale.model.Model"),
        ("tests.models:_TEXT_IN_TEXT_OUT", "not a subclass of aiscale.model.Model"),
        ("aiscale.model:Model", "does not implement predict"),
    ],
)
def test_bad_import_paths_are_model_load_errors(uri: str, message: str) -> None:
    """A malformed uri, a missing module or attribute, a class that is not a concrete
    Model: each is a ModelLoadError on field ``uri`` that says which."""
    with pytest.raises(ModelLoadError) as caught:
        load_model("python", uri)
    assert caught.value.field == "uri"
    assert message in caught.value.message


def test_a_constructor_that_raises_is_a_model_load_error() -> None:
    """The user's __init__ failing is reported with its type, not as a crash."""
    with pytest.raises(ModelLoadError) as caught:
        load_model("python", "tests.runtimes.test_python_class:RaisingModel")
    assert "ValueError: bad config" in caught.value.message
