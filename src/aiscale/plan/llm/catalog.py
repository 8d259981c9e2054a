"""The LLM rows of the hardware catalog, model shapes, and profiles derived by roofline.

**Accelerators** (``ACCELERATORS``): memory, memory bandwidth and dense bf16 tensor compute
per device, from the vendors' datasheets (cross-checked against the public pages named in
each figure's source), and the instances that hold 1 to 8 of them with their hourly
on-demand price (AWS us-east-1, Linux). Every figure is a ``SourcedFigure`` with its source
and date; ``is_uncertain`` marks estimates and prices known to have moved. Prices were
written from the AWS price pages as known to us (no network here): the June 2025 cut of
P4/P5 prices ("up to 45%") is applied to H100 (p5: $6.88 per GPU-hour, the figure public
comparisons quote after the cut) but not to A100 or H200, for which we found no post-cut
figure; those are the older list prices, marked uncertain. Check the price pages before
buying.

**Models** (``MODELS``): parameters and attention shape from each model's published
``config.json`` (Hugging Face model cards), giving weight bytes and KV bytes per token.

**Roofline** (``roofline_profile``): an *estimated* ``LlmProfile`` for a model on
``tensor_parallel`` devices:

* decode step = weights / (devices x bandwidth x 0.85) + a fixed 1.5 ms of scheduler and
  launch overhead + 2 all-reduces per layer (8 us on NVLink, 25 us on PCIe) when split;
  per sequence 2 x params FLOPs at 60% of peak; per token of context its KV bytes at 85% of
  the bandwidth;
* prefill = 2 x params FLOPs per token at 50% of peak (MFU), plus attention
  (4 x layers x hidden FLOPs per token per token of context);
* KV cache = 90% of device memory (vLLM's ``gpu_memory_utilization``) less weights and
  1 GiB per device of activations, over the KV bytes per token; a configuration whose cache
  cannot hold one full context does not fit (``None``);
* start-up = weights read from a node-local cache at 2 GB/s, plus 30 s of warm-up
  (CUDA graphs, compile), estimates.

Sanity checks against published figures (all third-party, so the profiles stay labelled
estimates): Llama-3.1-8B single stream on one H100 SXM is quoted at ~240 tokens/s
(codesota.com H100 page, 2026); the roofline gives ~140 (conservative: vLLM with
CUDA graphs does better than 85% of bandwidth plus 1.5 ms). Llama-3.3-70B bf16 on 8 x A100
SXM, batch 16, is quoted at 32 ms TBT p50 (evokernel case, vLLM 0.6, 2026); the roofline
gives ~16 ms (optimistic on multi-GPU all-reduce). Pure data and arithmetic; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from aiscale.errors import NotFound
from aiscale.plan.catalog import SourcedFigure
from aiscale.plan.llm.profile import LlmProfile, Provenance, smollm2_cpu_profile

__all__ = [
    "ACCELERATORS",
    "MODELS",
    "Accelerator",
    "Architecture",
    "Instance",
    "ModelShape",
    "architectures",
    "roofline_profile",
]

GIB = 1024**3


def _fig(value: float, source: str, date: str, *, uncertain: bool = False) -> SourcedFigure:
    return SourcedFigure(value=value, source=source, date=date, is_uncertain=uncertain)


@dataclass(frozen=True, slots=True)
class Instance:
    """A cloud instance holding ``devices`` accelerators, at ``price_per_hour`` (USD)."""

    name: str
    devices: int
    price_per_hour: SourcedFigure


@dataclass(frozen=True, slots=True)
class Accelerator:
    """One device kind: memory (GB), bandwidth (GB/s), dense bf16 TFLOPS, its instances."""

    name: str
    memory_gb: SourcedFigure
    bandwidth_gb_s: SourcedFigure
    bf16_tflops: SourcedFigure
    is_nvlink: bool
    instances: tuple[Instance, ...]

    def price_per_device_hour(self, devices: int) -> tuple[float, Instance, bool]:
        """``(price of ``devices`` of them, the instance packed, whether uncertain)``: the
        smallest instance holding them, its price shared by the replicas it packs."""
        for instance in sorted(self.instances, key=lambda i: i.devices):
            if instance.devices >= devices:
                share = instance.price_per_hour.value * devices / instance.devices
                return share, instance, instance.price_per_hour.is_uncertain
        raise NotFound(f"no {self.name} instance holds {devices} devices", field="tensor_parallel")

    @property
    def max_devices(self) -> int:
        return max(i.devices for i in self.instances)


_AWS = "AWS EC2 On-Demand pricing page, us-east-1 Linux"
_NV = "NVIDIA datasheet"

ACCELERATORS: dict[str, Accelerator] = {
    "CPU": Accelerator(
        "CPU",
        _fig(8 * GIB / 1e9, "AWS c6i.xlarge: 8 GiB", "2024-06"),
        _fig(
            20.0, "estimate: 2 Ice Lake cores' share of DDR4-3200 bandwidth", "2024", uncertain=True
        ),
        _fig(
            0.37,
            "estimate: 2 cores x 2.9 GHz x 64 FP32 FLOP/cycle (AVX-512), no bf16 units",
            "2024",
            uncertain=True,
        ),
        False,
        (
            Instance(
                "c6i.xlarge (4 vCPU = 2 cores)", 1, _fig(0.17, _AWS + ", c6i.xlarge", "2024-06")
            ),
        ),
    ),
    "T4": Accelerator(
        "T4",
        _fig(16.0, _NV + " (T4): 16 GB GDDR6", "2018"),
        _fig(320.0, _NV + " (T4): 320 GB/s", "2018"),
        _fig(65.0, _NV + " (T4): 65 TFLOPS FP16 tensor (Turing has no bf16; fp16 used)", "2018"),
        False,
        (
            Instance("g4dn.xlarge", 1, _fig(0.526, _AWS + ", g4dn.xlarge", "2024-06")),
            Instance("g4dn.12xlarge", 4, _fig(3.912, _AWS + ", g4dn.12xlarge", "2024-06")),
            Instance("g4dn.metal", 8, _fig(7.824, _AWS + ", g4dn.metal", "2024-06")),
        ),
    ),
    "L4": Accelerator(
        "L4",
        _fig(24.0, _NV + " (L4): 24 GB GDDR6", "2023"),
        _fig(300.0, _NV + " (L4): 300 GB/s (also store.sourcecode.com spec table)", "2023"),
        _fig(121.0, _NV + " (L4): 242 TFLOPS bf16 with sparsity, so 121 dense", "2023"),
        False,
        (
            Instance("g6.xlarge", 1, _fig(0.8048, _AWS + ", g6.xlarge", "2024-06")),
            Instance("g6.12xlarge", 4, _fig(4.6016, _AWS + ", g6.12xlarge", "2024-06")),
            Instance("g6.48xlarge", 8, _fig(13.3504, _AWS + ", g6.48xlarge", "2024-06")),
        ),
    ),
    "A10G": Accelerator(
        "A10G",
        _fig(24.0, "Baseten, 'NVIDIA A10 vs A10G for ML model inference': 24 GB GDDR6", "2023"),
        _fig(600.0, "Baseten, 'NVIDIA A10 vs A10G': 600 GB/s, as the A10", "2023"),
        _fig(
            70.0,
            "estimate: the A10's 125 TFLOPS bf16 dense lowered; Baseten says the A10G "
            "trades tensor compute for CUDA cores (no datasheet figure published)",
            "2023",
            uncertain=True,
        ),  # fmt: skip
        False,
        (
            Instance("g5.xlarge", 1, _fig(1.006, _AWS + ", g5.xlarge", "2024-06")),
            Instance("g5.12xlarge", 4, _fig(5.672, _AWS + ", g5.12xlarge", "2024-06")),
            Instance("g5.48xlarge", 8, _fig(16.288, _AWS + ", g5.48xlarge", "2024-06")),
        ),
    ),
    "A100-40": Accelerator(
        "A100-40",
        _fig(40.0, _NV + " (A100 SXM4 40GB)", "2020"),
        _fig(1555.0, _NV + " (A100 40GB): 1,555 GB/s (yobitel.com: 1.55 TB/s)", "2020"),
        _fig(312.0, _NV + " (A100): 312 TFLOPS bf16 dense", "2020"),
        True,
        (
            Instance(
                "p4d.24xlarge",
                8,
                _fig(
                    32.7726,
                    _AWS + ", p4d.24xlarge (before the June 2025 cut of up to 45%)",
                    "2024-06",
                    uncertain=True,
                ),
            ),  # fmt: skip
        ),
    ),
    "A100-80": Accelerator(
        "A100-80",
        _fig(80.0, _NV + " (A100 SXM4 80GB)", "2021"),
        _fig(2039.0, _NV + " (A100 80GB SXM): 2,039 GB/s (yobitel.com: 2.0 TB/s)", "2021"),
        _fig(312.0, _NV + " (A100): 312 TFLOPS bf16 dense", "2021"),
        True,
        (
            Instance(
                "p4de.24xlarge",
                8,
                _fig(
                    40.9657,
                    _AWS + ", p4de.24xlarge (before the June 2025 cut)",
                    "2024-06",
                    uncertain=True,
                ),
            ),  # fmt: skip
        ),
    ),
    "H100": Accelerator(
        "H100",
        _fig(80.0, _NV + " (H100 SXM5): 80 GB HBM3", "2022"),
        _fig(3350.0, _NV + " (H100 SXM5): 3.35 TB/s (glennklockwood.com H100 page)", "2022"),
        _fig(989.0, _NV + " (H100 SXM5): 989 TFLOPS bf16 dense (glennklockwood.com)", "2022"),
        True,
        (
            Instance(
                "p5.48xlarge",
                8,
                _fig(
                    55.04,
                    "AWS p5.48xlarge after the June 2025 price "
                    "cut: $6.88 per H100-hour (codesota.com H100 page quoting AWS; usage.ai on "
                    "the cut)",
                    "2025-06",
                    uncertain=True,
                ),
            ),  # fmt: skip
        ),
    ),
    "H200": Accelerator(
        "H200",
        _fig(141.0, _NV + " (H200 SXM): 141 GB HBM3e", "2024"),
        _fig(4800.0, _NV + " (H200 SXM): 4.8 TB/s (saulelectric.com H200 page)", "2024"),
        _fig(989.0, _NV + " (H200): 989 TFLOPS bf16 dense, the H100's compute", "2024"),
        True,
        (
            Instance(
                "p5en.48xlarge",
                8,
                _fig(
                    84.8,
                    _AWS + ", p5en.48xlarge (no post-cut figure found)",
                    "2025-01",
                    uncertain=True,
                ),
            ),  # fmt: skip
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the roofline needs of a model (its ``config.json``)."""

    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    max_context_tokens: int
    bytes_per_param: float
    source: str

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V, every layer, in 16-bit."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


MODELS: dict[str, ModelShape] = {
    "smollm2": ModelShape(
        "smollm2", 134.5e6, 30, 576, 3, 64, 8192, 2.0,
        "HuggingFaceTB/SmolLM2-135M-Instruct config.json (30 layers, hidden 576, 3 KV heads "
        "of 64); bf16 on GPUs",
    ),
    "llama-3-8b": ModelShape(
        "llama-3-8b", 8.03e9, 32, 4096, 8, 128, 8192, 2.0,
        "meta-llama/Meta-Llama-3-8B config.json (32 layers, hidden 4096, 8 KV heads of 128, "
        "8K context); bf16",
    ),
    "llama-3-70b": ModelShape(
        "llama-3-70b", 70.6e9, 80, 8192, 8, 128, 8192, 2.0,
        "meta-llama/Meta-Llama-3-70B config.json (80 layers, hidden 8192, 8 KV heads of 128, "
        "8K context); bf16",
    ),
}  # fmt: skip

#: Roofline efficiencies and overheads (module docstring); estimates.
BANDWIDTH_EFFICIENCY = 0.85
DECODE_COMPUTE_EFFICIENCY = 0.6
PREFILL_MFU = 0.5
STEP_OVERHEAD_S = 0.0015
ALLREDUCE_S = {True: 8e-6, False: 25e-6}
MEMORY_UTILIZATION = 0.9
ACTIVATION_RESERVE_BYTES = 1 * GIB
LOAD_BYTES_PER_S = 2e9
WARMUP_S = 30.0


def roofline_profile(
    model: str | ModelShape, hardware: str, tensor_parallel: int = 1
) -> LlmProfile | None:
    """An estimated profile (module docstring), or ``None`` when the model does not fit.

    ``smollm2`` on ``CPU`` is the issue-text profile (``smollm2_cpu_profile``), not a
    roofline. Raises ``NotFound`` for an unknown model or hardware.
    """
    shape = MODELS.get(model) if isinstance(model, str) else model
    if shape is None:
        raise NotFound(f"model {model!r} is not in the catalog", field="model")
    accel = ACCELERATORS.get(hardware)
    if accel is None:
        raise NotFound(f"hardware {hardware!r} is not in the LLM catalog", field="hardware")
    if hardware == "CPU" and shape.name == "smollm2" and tensor_parallel == 1:
        return smollm2_cpu_profile()
    if tensor_parallel > accel.max_devices:
        return None
    tp = tensor_parallel
    memory = accel.memory_gb.value * 1e9
    bandwidth = accel.bandwidth_gb_s.value * 1e9 * BANDWIDTH_EFFICIENCY
    flops = accel.bf16_tflops.value * 1e12
    usable = tp * (memory * MEMORY_UTILIZATION - ACTIVATION_RESERVE_BYTES) - shape.weight_bytes
    kv_tokens = math.floor(usable / shape.kv_bytes_per_token) if usable > 0 else 0
    if kv_tokens < shape.max_context_tokens:
        return None
    allreduce = 2 * shape.layers * ALLREDUCE_S[accel.is_nvlink] if tp > 1 else 0.0
    is_big = accel.bf16_tflops.value >= 300
    return LlmProfile(
        model=shape.name,
        hardware=hardware,
        tensor_parallel=tp,
        step_base_s=shape.weight_bytes / (tp * bandwidth) + STEP_OVERHEAD_S + allreduce,
        decode_per_seq_s=2 * shape.params / (tp * flops * DECODE_COMPUTE_EFFICIENCY),
        decode_per_context_token_s=shape.kv_bytes_per_token / (tp * bandwidth),
        prefill_per_token_s=2 * shape.params / (tp * flops * PREFILL_MFU),
        prefill_per_token_context_s=4 * shape.layers * shape.hidden / (tp * flops * PREFILL_MFU),
        kv_capacity_tokens=kv_tokens,
        max_num_seqs=256,
        max_batched_tokens=8192 if is_big else 2048,
        max_context_tokens=shape.max_context_tokens,
        weight_load_s=shape.weight_bytes / LOAD_BYTES_PER_S,
        warmup_s=WARMUP_S,
        gateway_overhead_s=0.001,
        memory_bytes=int(shape.weight_bytes),
        provenance=Provenance(
            source=f"roofline from the catalog's {hardware} figures and {shape.source}",
            date="2025",
            is_estimate=True,
            notes="estimate: efficiencies and overheads in aiscale.plan.llm.catalog; "
            "vLLM defaults max_num_seqs=256, max_num_batched_tokens 8192 (2048 on small GPUs)",
        ),
    )


@dataclass(frozen=True, slots=True)
class Architecture:
    """One way to serve a model: a profile, what a replica costs, and whether that is sure."""

    hardware: str
    tensor_parallel: int
    instance: str
    price_per_replica_hour: float
    is_price_uncertain: bool
    profile: LlmProfile

    @property
    def label(self) -> str:
        return (
            self.hardware
            if self.tensor_parallel == 1
            else f"{self.hardware} x{self.tensor_parallel}"
        )


def architectures(
    model: str,
    *,
    hardware: tuple[str, ...] | None = None,
    profile: LlmProfile | None = None,
    variants: int = 1,
) -> list[Architecture]:
    """Every catalog hardware the model fits, at its smallest tensor-parallel degree and,
    with ``variants=2``, twice that (when an instance holds it): faster steps for twice the
    devices. ``profile`` replaces the derived one on its own hardware (a measured one)."""
    out: list[Architecture] = []
    for name in hardware or tuple(ACCELERATORS):
        accel = ACCELERATORS.get(name)
        if accel is None:
            raise NotFound(f"hardware {name!r} is not in the LLM catalog", field="hardware")
        found = 0
        for tp in (1, 2, 4, 8):
            if found == variants or tp > accel.max_devices:
                break
            derived = roofline_profile(model, name, tp)
            if derived is None:
                continue
            if profile is not None and profile.hardware == name and profile.tensor_parallel == tp:
                derived = replace(profile)
            price, instance, uncertain = accel.price_per_device_hour(tp)
            out.append(Architecture(name, tp, instance.name, price, uncertain, derived))
            found += 1
            if name == "CPU":
                break
    return out
