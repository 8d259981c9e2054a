"""What an engine says about itself: its Prometheus ``/metrics`` text as one ``EngineMetrics``.

Two dialects: llama.cpp's server (``llamacpp:*``) and vLLM's OpenAI server (``vllm:*``). The
values mean the same whatever the engine, and follow the Gateway API Inference Extension's
model-server protocol where it defines one (``MODEL_SERVER_PROTOCOL``): the router reads
queued and running requests and KV-cache use, the monitor and dashboard the token counters
and the prefix-cache hit rate. Pure: text in, a value out; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from aiscale.errors import UpstreamUnavailable

__all__ = ["MODEL_SERVER_PROTOCOL", "EngineMetrics", "parse_engine_metrics"]


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """One scrape of one engine replica. Counters are cumulative since the engine started
    (a consumer takes differences between scrapes); ``None``: the engine does not say."""

    #: Requests accepted but not yet decoding (protocol: TotalQueuedRequests).
    num_waiting: int
    #: Requests decoding now (protocol: TotalRunningRequests).
    num_running: int
    #: Share of the KV cache in use, 0..1 (protocol: KVCacheUtilization).
    kv_cache_usage: float | None
    #: Prompt tokens of all requests, those served from the prefix cache included.
    prompt_tokens_total: float
    #: Prompt tokens served from the prefix cache instead of being computed.
    cached_prompt_tokens_total: float | None
    #: Tokens generated.
    generation_tokens_total: float
    #: Prompt tokens looked up in the prefix cache (vLLM); ``None``: all prompt tokens are.
    prefix_cache_queries_total: float | None = None
    #: Sum and count of the engine's own time-to-first-token histogram (vLLM), seconds.
    ttft_seconds_sum: float | None = None
    ttft_seconds_count: float | None = None

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        """Cached prompt tokens over the prompt tokens looked up, since the engine started
        (0..1); ``None`` before the first prompt or when the engine does not say."""
        queries = self.prefix_cache_queries_total
        if queries is None:
            queries = self.prompt_tokens_total
        if self.cached_prompt_tokens_total is None or queries <= 0:
            return None
        return min(1.0, self.cached_prompt_tokens_total / queries)


#: The Gateway API Inference Extension's model-server protocol metrics
#: (gateway-api-inference-extension, docs/proposals/003-model-server-protocol), each with the
#: ``EngineMetrics`` field that carries it and the engine metric it is read from. llama.cpp
#: builds older than 2025 also exported ``llamacpp:kv_cache_usage_ratio``; this one does not,
#: so its KV-cache use is ``None``. ``LoraRequestInfo`` and ``CacheInfo`` (block size, GPU
#: blocks) have no counterpart in aiscale yet.
MODEL_SERVER_PROTOCOL: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "TotalQueuedRequests": MappingProxyType({
        "field": "num_waiting",
        "vllm": "vllm:num_requests_waiting",
        "llamacpp": "llamacpp:requests_deferred",
    }),
    "TotalRunningRequests": MappingProxyType({
        "field": "num_running",
        "vllm": "vllm:num_requests_running",
        "llamacpp": "llamacpp:requests_processing",
    }),
    "KVCacheUtilization": MappingProxyType({
        "field": "kv_cache_usage",
        "vllm": "vllm:kv_cache_usage_perc",
        "llamacpp": "llamacpp:kv_cache_usage_ratio",
    }),
})  # fmt: skip


def parse_engine_metrics(text: str, kind: str) -> EngineMetrics:
    """Parse an engine's ``/metrics`` text. ``kind`` is ``llamacpp`` or ``vllm``.

    Samples with labels (vLLM labels by ``model_name`` and ``engine``) are summed, except
    KV-cache use, which is averaged over the engine's data-parallel ranks. Raises
    ``UpstreamUnavailable`` when the text is not Prometheus text or lacks the request gauges
    (an engine that is not what its kind says, or a metrics endpoint turned off).
    """
    samples = _samples(text)
    if kind == "llamacpp":
        return _llamacpp(samples)
    if kind == "vllm":
        return _vllm(samples)
    raise ValueError(f"no metrics dialect for engine kind {kind!r}")


@dataclass(frozen=True, slots=True)
class _Sample:
    total: float
    count: int


def _samples(text: str) -> dict[str, _Sample]:
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] += float(sample.value)
                counts[sample.name] += 1
    except ValueError as exc:
        raise UpstreamUnavailable(f"engine metrics are not Prometheus text: {exc}") from None
    return {name: _Sample(totals[name], counts[name]) for name in totals}


def _required(samples: Mapping[str, _Sample], *names: str) -> None:
    missing = [name for name in names if name not in samples]
    if missing:
        raise UpstreamUnavailable(f"engine metrics lack {', '.join(missing)}")


def _value(samples: Mapping[str, _Sample], name: str) -> float | None:
    sample = samples.get(name)
    return None if sample is None else sample.total


def _mean(samples: Mapping[str, _Sample], name: str) -> float | None:
    sample = samples.get(name)
    return None if sample is None or sample.count == 0 else sample.total / sample.count


def _llamacpp(samples: Mapping[str, _Sample]) -> EngineMetrics:
    _required(samples, "llamacpp:requests_processing", "llamacpp:requests_deferred")
    # llama.cpp counts prompt tokens it computed ("excluding cached tokens") and those it
    # reused from a slot's cache apart; all prompt tokens are the two together.
    computed = _value(samples, "llamacpp:prompt_tokens_total") or 0.0
    cached = _value(samples, "llamacpp:prompt_tokens_cached_total")
    return EngineMetrics(
        num_waiting=int(_value(samples, "llamacpp:requests_deferred") or 0),
        num_running=int(_value(samples, "llamacpp:requests_processing") or 0),
        kv_cache_usage=_mean(samples, "llamacpp:kv_cache_usage_ratio"),
        prompt_tokens_total=computed + (cached or 0.0),
        cached_prompt_tokens_total=cached,
        generation_tokens_total=_value(samples, "llamacpp:tokens_predicted_total") or 0.0,
    )


def _vllm(samples: Mapping[str, _Sample]) -> EngineMetrics:
    _required(samples, "vllm:num_requests_waiting", "vllm:num_requests_running")
    # vLLM v1 names it kv_cache_usage_perc; v0 (and v1 with hidden metrics shown)
    # gpu_cache_usage_perc. Both are fractions 0..1 despite the name.
    usage = _mean(samples, "vllm:kv_cache_usage_perc")
    if usage is None:
        usage = _mean(samples, "vllm:gpu_cache_usage_perc")
    return EngineMetrics(
        num_waiting=int(_value(samples, "vllm:num_requests_waiting") or 0),
        num_running=int(_value(samples, "vllm:num_requests_running") or 0),
        kv_cache_usage=usage,
        prompt_tokens_total=_value(samples, "vllm:prompt_tokens_total") or 0.0,
        # Prefix-cache hits are counted in tokens (queries: prompt tokens looked up).
        cached_prompt_tokens_total=_value(samples, "vllm:prefix_cache_hits_total"),
        generation_tokens_total=_value(samples, "vllm:generation_tokens_total") or 0.0,
        prefix_cache_queries_total=_value(samples, "vllm:prefix_cache_queries_total"),
        ttft_seconds_sum=_value(samples, "vllm:time_to_first_token_seconds_sum"),
        ttft_seconds_count=_value(samples, "vllm:time_to_first_token_seconds_count"),
    )
