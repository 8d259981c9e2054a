"""Engine metrics: llama.cpp's ``llamacpp:*`` (text recorded from a running engine) and
vLLM's ``vllm:*`` (text constructed from vLLM's documented names, since vLLM cannot run
here) read as one ``EngineMetrics`` with the same meaning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aiscale.engines.metrics import MODEL_SERVER_PROTOCOL, EngineMetrics, parse_engine_metrics
from aiscale.errors import UpstreamUnavailable

DATA = Path(__file__).parent / "data"


def test_llamacpp_metrics_recorded_from_a_running_engine() -> None:
    """Deferred requests are waiting, processing ones running; all prompt tokens are the
    computed ones plus those reused from the cache; this llama.cpp reports no KV use."""
    metrics = parse_engine_metrics((DATA / "llamacpp_metrics.txt").read_text(), "llamacpp")
    assert metrics == EngineMetrics(
        num_waiting=2,
        num_running=4,
        kv_cache_usage=None,
        prompt_tokens_total=55 + 83,
        cached_prompt_tokens_total=83,
        generation_tokens_total=32,
    )
    assert metrics.prefix_cache_hit_rate == pytest.approx(83 / 138)


def test_vllm_metrics_sum_ranks_and_average_kv_use() -> None:
    """Two data-parallel ranks: request gauges and counters add up, KV-cache use is their
    mean, and the prefix-cache hit rate is hits over queried tokens."""
    metrics = parse_engine_metrics((DATA / "vllm_metrics.txt").read_text(), "vllm")
    assert (metrics.num_waiting, metrics.num_running) == (2, 8)
    assert metrics.kv_cache_usage == pytest.approx((0.625 + 0.25) / 2)
    assert metrics.prompt_tokens_total == 20000 and metrics.generation_tokens_total == 6144
    assert metrics.cached_prompt_tokens_total == 12000
    assert metrics.prefix_cache_queries_total == 20000
    assert metrics.prefix_cache_hit_rate == pytest.approx(0.6)
    assert metrics.ttft_seconds_count == 48 and metrics.ttft_seconds_sum == pytest.approx(3.617)


def test_vllm_v0_kv_cache_name_is_read_too() -> None:
    """vLLM v0 called KV-cache use ``gpu_cache_usage_perc``; an engine that has only that
    name still reports it, and one with no prefix-cache counters has no hit rate."""
    text = (
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"
        "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0\n"
        "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n"
    )
    metrics = parse_engine_metrics(text, "vllm")
    assert metrics.kv_cache_usage == 0.5 and metrics.prefix_cache_hit_rate is None


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("this is { not prometheus", "llamacpp", "not Prometheus text"),
        ("# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n",
         "llamacpp", "lack llamacpp:requests_deferred"),
        ((DATA / "llamacpp_metrics.txt").read_text(), "vllm", "lack vllm:num_requests_waiting"),
    ],
    ids=["garbage", "missing-gauge", "wrong-engine"],
)
def test_text_that_is_not_the_engines_metrics_is_refused(
    text: str, kind: str, message: str
) -> None:
    """Garbage, or metrics without the request gauges (another engine's, or the endpoint
    of something else): ``UpstreamUnavailable`` naming what is wrong, never zeros."""
    with pytest.raises(UpstreamUnavailable, match=message):
        parse_engine_metrics(text, kind)


def test_an_engine_kind_without_metrics_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="openai-upstream"):
        parse_engine_metrics("", "openai-upstream")


def test_the_model_server_protocol_mapping_names_fields_and_real_metric_names() -> None:
    """Each protocol metric maps to an ``EngineMetrics`` field; its vLLM name is in the vLLM
    text and its llama.cpp name in the recorded llama.cpp text, except KV-cache use, which
    this llama.cpp does not export."""
    fields = {f.name for f in dataclasses.fields(EngineMetrics)}
    vllm_text = (DATA / "vllm_metrics.txt").read_text()
    llamacpp_text = (DATA / "llamacpp_metrics.txt").read_text()
    assert set(MODEL_SERVER_PROTOCOL) == {
        "TotalQueuedRequests", "TotalRunningRequests", "KVCacheUtilization"
    }
    for name, mapping in MODEL_SERVER_PROTOCOL.items():
        assert mapping["field"] in fields
        assert f"\n{mapping['vllm']}{{" in vllm_text
        assert (f"\n{mapping['llamacpp']} " in llamacpp_text) is (name != "KVCacheUtilization")
