"""A plain torch BERT encoder with mean pooling, for sentence-embedding checkpoints.

This is the forward pass of Hugging Face ``BertModel`` (absolute positions, post-norm
layers, exact erf GELU) followed by sentence-transformers' mean pooling and L2
normalisation, written with torch's functional ops on the loaded tensors, so that a
replica pays neither the seconds ``import transformers`` costs nor building and randomly
initialising an ``nn.Module`` only to overwrite it. Weights come from a
``model.safetensors`` with the ``BertModel`` key names (``embeddings.*``,
``encoder.layer.N.*``), optionally prefixed by ``bert.``. Only the minilm runtime imports
this module (inside ``load()``): importing it imports torch. It must never download
anything or read files other than the ones it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, slots=True)
class BertShape:
    """The hyper-parameters of a BERT checkpoint that the forward pass needs."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    num_token_types: int
    layer_norm_eps: float

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> BertShape:
        """Read a Hugging Face ``config.json`` of ``model_type`` ``bert``.

        Raises ``ValueError`` naming the first thing this encoder does not implement.
        """
        if config.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type {config.get('model_type')!r} is not 'bert'")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act {config.get('hidden_act')!r} is not 'gelu'")
        position_type = config.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not 'absolute'")

        def integer(key: str) -> int:
            value = config[key]
            if not isinstance(value, int):
                raise ValueError(f"config field {key!r} is not an integer")
            return value

        eps = config.get("layer_norm_eps", 1e-12)
        if not isinstance(eps, int | float):
            raise ValueError("config field 'layer_norm_eps' is not a number")
        return cls(
            vocab_size=integer("vocab_size"),
            hidden_size=integer("hidden_size"),
            num_layers=integer("num_hidden_layers"),
            num_heads=integer("num_attention_heads"),
            intermediate_size=integer("intermediate_size"),
            max_positions=integer("max_position_embeddings"),
            num_token_types=integer("type_vocab_size") if "type_vocab_size" in config else 2,
            layer_norm_eps=float(eps),
        )


@dataclass(frozen=True, slots=True)
class _Layer:
    """One post-norm transformer layer's weights; query, key and value share one matmul."""

    qkv_weight: Tensor
    qkv_bias: Tensor
    attention_out_weight: Tensor
    attention_out_bias: Tensor
    attention_norm_weight: Tensor
    attention_norm_bias: Tensor
    intermediate_weight: Tensor
    intermediate_bias: Tensor
    output_weight: Tensor
    output_bias: Tensor
    output_norm_weight: Tensor
    output_norm_bias: Tensor


class BertSentenceEncoder:
    """BERT, then mean pooling over the attention mask, then L2 normalisation.

    Holds the checkpoint's tensors as they were loaded and runs them with functional ops:
    there is no ``nn.Module`` to build, so nothing is randomly initialised and then
    overwritten (that, or building on the meta device, costs more than the whole rest of
    loading). Inference only: no dropout, no gradients.
    """

    def __init__(self, shape: BertShape, tensors: Mapping[str, Tensor]) -> None:
        """Take ``BertModel`` weights (key names ``embeddings.*``, ``encoder.layer.N.*``,
        optionally prefixed ``bert.``). Raises ``KeyError`` naming a missing tensor and
        ``ValueError`` naming one whose shape does not fit ``shape``."""
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
        width = shape.hidden_size

        def get(name: str, *expected: int) -> Tensor:
            key = prefix + name
            if key not in tensors:
                raise KeyError(key)
            tensor = tensors[key]
            if tuple(tensor.shape) != expected:
                raise ValueError(f"{key} has shape {tuple(tensor.shape)}, expected {expected}")
            return tensor.float()

        self.shape = shape
        self.word_embeddings = get("embeddings.word_embeddings.weight", shape.vocab_size, width)
        self.position_embeddings = get(
            "embeddings.position_embeddings.weight", shape.max_positions, width
        )
        self.token_type_embedding = get(
            "embeddings.token_type_embeddings.weight", shape.num_token_types, width
        )[0]
        self.embedding_norm_weight = get("embeddings.LayerNorm.weight", width)
        self.embedding_norm_bias = get("embeddings.LayerNorm.bias", width)
        inner = shape.intermediate_size
        self.layers: list[_Layer] = []
        for index in range(shape.num_layers):
            base = f"encoder.layer.{index}."
            parts = ("query", "key", "value")
            self.layers.append(
                _Layer(
                    qkv_weight=torch.cat(
                        [get(f"{base}attention.self.{p}.weight", width, width) for p in parts]
                    ),
                    qkv_bias=torch.cat(
                        [get(f"{base}attention.self.{p}.bias", width) for p in parts]
                    ),
                    attention_out_weight=get(f"{base}attention.output.dense.weight", width, width),
                    attention_out_bias=get(f"{base}attention.output.dense.bias", width),
                    attention_norm_weight=get(f"{base}attention.output.LayerNorm.weight", width),
                    attention_norm_bias=get(f"{base}attention.output.LayerNorm.bias", width),
                    intermediate_weight=get(f"{base}intermediate.dense.weight", inner, width),
                    intermediate_bias=get(f"{base}intermediate.dense.bias", inner),
                    output_weight=get(f"{base}output.dense.weight", width, inner),
                    output_bias=get(f"{base}output.dense.bias", width),
                    output_norm_weight=get(f"{base}output.LayerNorm.weight", width),
                    output_norm_bias=get(f"{base}output.LayerNorm.bias", width),
                )
            )

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``input_ids`` and ``attention_mask`` are (batch, length) int64; returns
        (batch, hidden_size) float32 unit vectors. Token type is 0 everywhere (one
        sentence). Call under ``torch.inference_mode()``."""
        width = self.shape.hidden_size
        eps = self.shape.layer_norm_eps
        num_heads = self.shape.num_heads
        batch, length = input_ids.shape
        hidden = (
            F.embedding(input_ids, self.word_embeddings)
            + self.position_embeddings[:length]
            + self.token_type_embedding
        )
        hidden = F.layer_norm(
            hidden, (width,), self.embedding_norm_weight, self.embedding_norm_bias, eps
        )
        # Boolean mask, True where a key may be attended; broadcast over heads and queries.
        attend = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            # (batch, length, 3, heads, head_width) -> three (batch, heads, length, head_width)
            qkv = F.linear(hidden, layer.qkv_weight, layer.qkv_bias)
            qkv = qkv.view(batch, length, 3, num_heads, width // num_heads)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attend)
            context = context.transpose(1, 2).reshape(batch, length, width)
            attended = F.linear(context, layer.attention_out_weight, layer.attention_out_bias)
            hidden = F.layer_norm(
                attended + hidden,
                (width,),
                layer.attention_norm_weight,
                layer.attention_norm_bias,
                eps,
            )
            inner = F.gelu(F.linear(hidden, layer.intermediate_weight, layer.intermediate_bias))
            hidden = F.layer_norm(
                F.linear(inner, layer.output_weight, layer.output_bias) + hidden,
                (width,),
                layer.output_norm_weight,
                layer.output_norm_bias,
                eps,
            )
        # sentence-transformers' mean pooling: padded positions weigh nothing.
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(summed / counts, p=2.0, dim=1)
