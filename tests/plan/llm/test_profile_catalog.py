"""LLM profiles round-trip through JSON with units and provenance and refuse malformed files
naming the field; the catalog's figures all carry a source and a date; the roofline refuses a
model that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiscale.errors import ConfigError, NotFound
from aiscale.plan.llm.catalog import ACCELERATORS, MODELS, architectures, roofline_profile
from aiscale.plan.llm.profile import load_llm_profile, save_llm_profile, smollm2_cpu_profile


def test_profile_round_trips_with_units_and_provenance(tmp_path: Path) -> None:
    profile = smollm2_cpu_profile()
    path = tmp_path / "p.json"
    save_llm_profile(profile, path)
    data = json.loads(path.read_text())
    assert data["units"]["step_base_s"].startswith("s")
    assert data["provenance"]["is_estimate"] is True
    assert "issue text" in data["provenance"]["source"]
    assert load_llm_profile(path) == profile


def test_smollm2_default_matches_the_issue_figures() -> None:
    """~34 tokens/s for one stream and ~137 for four running sequences (the issue's figures)."""
    profile = smollm2_cpu_profile()
    assert 1 / profile.step_s(1, 100) == pytest.approx(34, rel=0.06)
    assert 4 / profile.step_s(4, 400) == pytest.approx(137, rel=0.06)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "other"}, "kind"),
        ({"step_base_s": "fast"}, "step_base_s"),
        ({"max_num_seqs": 2.5}, "max_num_seqs"),
        ({"kv_capacity_tokens": 0}, "kv_capacity_tokens"),
        ({"surprise": 1}, "surprise"),
        ({"provenance": {"source": "x"}}, "provenance"),
    ],
)
def test_malformed_profiles_name_the_field(tmp_path: Path, change: dict, field: str) -> None:
    data = smollm2_cpu_profile().to_dict()
    data.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        load_llm_profile(path)
    assert caught.value.field == field


def test_every_catalog_figure_has_a_source_and_a_date() -> None:
    for accel in ACCELERATORS.values():
        figures = [accel.memory_gb, accel.bandwidth_gb_s, accel.bf16_tflops]
        figures += [i.price_per_hour for i in accel.instances]
        for figure in figures:
            assert figure.value > 0 and figure.source and figure.date


def test_roofline_fits_where_memory_allows_and_labels_estimates() -> None:
    assert roofline_profile("llama-3-70b", "H100", 1) is None  # 141 GB of weights
    big = roofline_profile("llama-3-70b", "H100", 4)
    assert big is not None and big.provenance.is_estimate and big.tensor_parallel == 4
    small = roofline_profile("llama-3-8b", "H100", 1)
    assert small is not None
    # Splitting over more devices makes a step faster and the cache larger.
    two = roofline_profile("llama-3-8b", "H100", 2)
    assert two is not None
    assert two.step_s(8, 8000) < small.step_s(8, 8000)
    assert two.kv_capacity_tokens > small.kv_capacity_tokens
    with pytest.raises(NotFound):
        roofline_profile("gpt-9", "H100")
    archs = architectures("llama-3-8b", variants=2)
    assert {a.tensor_parallel for a in archs if a.hardware == "H100"} == {1, 2}
    assert {a.hardware for a in archs} >= {"L4", "H100", "H200"}
    assert "CPU" not in {a.hardware for a in archs}  # 16 GB of weights on an 8 GiB box
    assert set(MODELS) == {"smollm2", "llama-3-8b", "llama-3-70b"}
