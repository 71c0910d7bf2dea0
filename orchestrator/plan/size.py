"""How big is the model, without loading weights: from a Hugging Face config.json (analytic
counts per family), else from spec.model.parameters (the shape then guessed, and the plan says why
there was no config). Torch-free; config.json is found by plan/model_config.py (a local path, the
Hugging Face cache, or the Hub where asked) and its numbers are checked before any formula uses them.

Families: Llama-style decoders (llama, mistral, mixtral-free qwen2/qwen3, gemma: grouped-query
attention, gated MLP, RMSNorm), GPT-2, GPT-NeoX, BERT, T5 and BART-style encoder-decoders
(bart, blenderbot, marian...). Embeddings tied to the LM head are counted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.plan.model_config import FoundConfig, ModelConfigError, find


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int  # transformer blocks (encoder + decoder)
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    largest_layer_params: int  # the biggest unit FSDP/ZeRO-3 gathers at once (a block, or the embedding)
    method: str  # how the numbers were found, for the user
    encoder_layers: int = 0  # encoder-decoder models: how many of `layers` read the source sequence
    gated_mlp: bool = False  # SwiGLU/GeGLU: three projections, three ffn-wide tensors kept for backward
    eager_attention: bool = False  # the config asks for eager attention: the s x s scores are kept
    source: str = "spec.model.parameters"  # where the shape came from: the config.json read, or the spec's count
    note: str | None = None  # what the plan should say about it (no config.json found, and why)


def _eager(cfg: dict[str, Any]) -> bool:
    """transformers uses SDPA (no s x s scores kept) unless the config pins eager attention."""
    return _get(cfg, "attn_implementation", "_attn_implementation") == "eager"


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def _decoder(cfg: dict[str, Any], family: str) -> ModelShape:
    h = _get(cfg, "hidden_size", "n_embd", "d_model")
    layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(cfg, "num_attention_heads", "n_head")
    kv = _get(cfg, "num_key_value_heads", default=heads)
    head_dim = _get(cfg, "head_dim", default=h // heads)
    vocab = _get(cfg, "vocab_size")
    tied = bool(_get(cfg, "tie_word_embeddings", default=family in ("gpt2",)))
    if family == "llama":  # q, k, v, o (GQA) + gate/up/down + 2 RMSNorm
        ffn = _get(cfg, "intermediate_size")
        attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
        if cfg.get("attention_bias"):
            attn += heads * head_dim + 2 * kv * head_dim
        block = attn + 3 * h * ffn + 2 * h
        final_norm = h
        positions = 0
    elif family == "gpt2":  # c_attn (3h x h + bias), c_proj, 4h MLP, 2 LayerNorm (w + b)
        ffn = _get(cfg, "n_inner", default=None) or 4 * h
        block = (3 * h * h + 3 * h) + (h * h + h) + (2 * h * ffn + ffn + h) + 4 * h
        final_norm = 2 * h
        positions = _get(cfg, "n_positions", "max_position_embeddings") * h
    else:  # gpt_neox: fused qkv with bias, dense, 4h MLP with bias, 2 LayerNorm; untied embed_out
        ffn = _get(cfg, "intermediate_size", default=4 * h)
        block = (3 * h * h + 3 * h) + (h * h + h) + (2 * h * ffn + ffn + h) + 4 * h
        final_norm = 2 * h
        positions = 0
    embed = vocab * h
    params = embed * (1 if tied else 2) + layers * block + final_norm + positions
    return ModelShape(params, layers, h, heads, kv, ffn, vocab, max(block, embed), f"config.json ({family})",
                      gated_mlp=family == "llama", eager_attention=_eager(cfg))


def _bert(cfg: dict[str, Any]) -> ModelShape:
    h, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    ffn, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    block = 4 * (h * h + h) + (2 * h * ffn + ffn + h) + 4 * h
    embed = (vocab + cfg.get("max_position_embeddings", 512) + cfg.get("type_vocab_size", 2)) * h + 2 * h
    pooler = h * h + h
    return ModelShape(embed + layers * block + pooler, layers, h, heads, heads, ffn, vocab, max(block, vocab * h),
                      "config.json (bert)")


def _t5(cfg: dict[str, Any]) -> ModelShape:
    h, ffn, heads = cfg["d_model"], cfg["d_ff"], cfg["num_heads"]
    inner = heads * cfg.get("d_kv", h // heads)
    enc, dec = cfg["num_layers"], cfg.get("num_decoder_layers") or cfg["num_layers"]
    gated = str(cfg.get("feed_forward_proj", "relu")).startswith("gated")
    mlp = (3 if gated else 2) * h * ffn
    enc_block = 4 * h * inner + mlp + 2 * h
    dec_block = 8 * h * inner + mlp + 3 * h
    vocab = cfg["vocab_size"]
    tied = cfg.get("tie_word_embeddings", True)
    relative_bias = 2 * cfg.get("relative_attention_num_buckets", 32) * heads  # first block of each stack
    params = vocab * h * (1 if tied else 2) + enc * enc_block + dec * dec_block + 2 * h + relative_bias
    return ModelShape(params, enc + dec, h, heads, heads, ffn, vocab, max(dec_block, vocab * h), "config.json (t5)",
                      encoder_layers=enc, gated_mlp=gated, eager_attention=_eager(cfg))


def _bart(cfg: dict[str, Any], family: str) -> ModelShape:
    h, ffn = cfg["d_model"], cfg.get("decoder_ffn_dim") or cfg["encoder_ffn_dim"]
    heads = cfg["decoder_attention_heads"]
    enc, dec = cfg["encoder_layers"], cfg["decoder_layers"]
    vocab = cfg["vocab_size"]
    attn = 4 * (h * h + h)
    mlp = 2 * h * ffn + ffn + h
    enc_block = attn + mlp + 4 * h
    dec_block = 2 * attn + mlp + 6 * h
    offset = 2 if family in ("bart", "mbart") else 0  # BART's learned positions start at 2
    positions = 2 * (cfg.get("max_position_embeddings", 1024) + offset) * h
    norms = 4 * h  # layernorm_embedding / final layer norms, encoder and decoder
    params = vocab * h + enc * enc_block + dec * dec_block + positions + norms  # shared, tied embeddings
    return ModelShape(params, enc + dec, h, heads, heads, ffn, vocab, max(dec_block, vocab * h),
                      f"config.json ({family})", encoder_layers=enc, eager_attention=_eager(cfg))


# The numbers a formula reads, each a positive integer at most this (far above any real model; a typo or a
# hostile file otherwise yields a plan for 10^30 parameters, or a crash deep in a formula).
DIMENSIONS = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "d_ff", "encoder_ffn_dim",
                     "decoder_ffn_dim", "head_dim", "d_kv"), 1 << 20),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers",
                     "decoder_layers", "num_attention_heads", "n_head", "num_heads", "decoder_attention_heads",
                     "num_key_value_heads", "type_vocab_size", "relative_attention_num_buckets"), 1 << 16),
    "vocab_size": 1 << 24,
    **dict.fromkeys(("n_positions", "max_position_embeddings"), 1 << 26),
}
MAX_PARAMS = 10**15


def check_config(cfg: dict[str, Any]) -> None:
    """Refuse what no formula should read: a dimension that is not a positive integer in range."""
    for key, limit in DIMENSIONS.items():
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise ModelConfigError(f"config.json: {key} = {str(value)[:40]} is not a positive integer "
                                   f"up to {limit}")
        cfg[key] = value


LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "phi3", "internlm2", "yi"}
BART_LIKE = {"bart", "blenderbot", "blenderbot-small", "marian", "mbart", "pegasus"}


def from_config(cfg: dict[str, Any]) -> ModelShape:
    """The analytic count for a known family; ValueError for an unknown one, ModelConfigError for a
    config whose numbers cannot be used."""
    cfg = dict(cfg)
    check_config(cfg)
    try:
        shape = _family(cfg)
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        name = exc.args[0] if isinstance(exc, KeyError) else exc
        raise ModelConfigError(f"config.json ({cfg.get('model_type')}): missing or unusable field {name}") from None
    if not 0 < shape.params <= MAX_PARAMS:
        raise ModelConfigError(f"config.json: these dimensions give {shape.params:.3g} parameters, not a real model")
    return shape


def _family(cfg: dict[str, Any]) -> ModelShape:
    kind = str(cfg.get("model_type", "")).lower()
    if kind in LLAMA_LIKE:
        return _decoder(cfg, "llama")
    if kind == "gpt2":
        return _decoder(cfg, "gpt2")
    if kind == "gpt_neox":
        return _decoder(cfg, "gpt_neox")
    if kind in ("bert", "roberta"):
        return _bert(cfg)
    if kind in ("t5", "mt5", "umt5"):
        return _t5(cfg)
    if kind in BART_LIKE:
        return _bart(cfg, kind)
    raise ValueError(f"no analytic parameter count for model_type {kind!r}; set spec.model.parameters")


def from_parameters(params: float, note: str = "spec.model.parameters") -> ModelShape:
    """Only a count: guess a Llama-like shape with that count (hidden / layers = 128, as in Llama-2 7B)."""
    p = int(params)
    hidden = max(64, int(round((p * 128 / 12) ** (1 / 3) / 64)) * 64)
    layers = max(1, round(hidden / 128))
    ffn = int(hidden * 8 / 3 / 64 + 1) * 64
    vocab = 32000
    heads = max(1, hidden // 128)
    block = max(1, (p - 2 * vocab * hidden) // layers)
    return ModelShape(p, layers, hidden, heads, heads, ffn, vocab, max(block, vocab * hidden),
                      f"{note}; shape guessed (hidden {hidden}, {layers} layers)", gated_mlp=True)


def model_shape(name_or_path: str, parameters: float | None, hub: bool = False) -> ModelShape:
    """config.json where one is found (plan/model_config.py: a local path, the Hugging Face cache, the
    Hub when `hub`), counted analytically, or on the meta device for other families where the training
    extra is installed; else the spec's count, with a note saying why there was no config."""
    lookup = find(name_or_path, hub=hub)
    found = lookup.found
    if found is not None:
        try:  # the config is the truth; the plan notes a spec count that disagrees
            return replace(from_config(found.data), source=found.source)
        except ModelConfigError:
            raise
        except ValueError:
            meta = from_meta(found)  # a family without a formula: transformers knows it, if installed
            if meta is not None:
                return replace(meta, source=found.source)
            if not parameters:
                raise
    if parameters:
        why = (f"{found.source}: no formula for model_type {found.data.get('model_type')!r}" if found
               else f"no config.json for {name_or_path}: {lookup.missing}")
        return replace(from_parameters(parameters), note=f"{why}; the shape is guessed from spec.model.parameters")
    raise ModelConfigError(f"spec.model.name_or_path: no config.json for {name_or_path} ({lookup.missing}); "
                           "put it in the cache (`hf download ID config.json`) or set spec.model.parameters")


def from_meta(source: FoundConfig | str) -> ModelShape | None:
    """Instantiate the model on torch's meta device (no memory, no weights) and count: exact for any
    architecture transformers knows. Only where the training extra is installed; None otherwise."""
    found = find(source).found if isinstance(source, str) else source
    if found is None:
        return None
    cfg = dict(found.data)
    check_config(cfg)  # before building anything from it
    try:
        import torch
        import transformers
    except ImportError:
        return None
    config = transformers.AutoConfig.for_model(**cfg)
    auto = (transformers.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False)
            else transformers.AutoModel if cfg.get("model_type") in ("bert", "roberta")
            else transformers.AutoModelForCausalLM)
    with torch.device("meta"):
        model = auto.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    try:
        analytic = from_config(cfg)
    except ValueError:
        h = getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0)
        layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "num_layers", 0)
        return ModelShape(params, layers, h, getattr(config, "num_attention_heads", 1),
                          getattr(config, "num_key_value_heads", 1) or 1, getattr(config, "intermediate_size", 4 * h),
                          getattr(config, "vocab_size", 0), params // max(1, layers), "meta device (transformers)")
    return ModelShape(**{**analytic.__dict__, "params": params, "method": "meta device (transformers)"})
