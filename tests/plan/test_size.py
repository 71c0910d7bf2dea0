"""Parameter counts from config.json, checked against the published totals of real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan.size import from_config, from_parameters, model_shape

DATA = Path(__file__).parent / "data"

# (config.json fields as published on the Hugging Face hub, the checkpoint's parameter count)
CASES = {
    "meta-llama/Llama-2-7b-hf": ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                                  "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
                                  "vocab_size": 32000, "tie_word_embeddings": False}, 6_738_415_616),
    "mistralai/Mistral-7B-v0.1 (GQA)": ({"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                                         "num_attention_heads": 32, "num_key_value_heads": 8,
                                         "intermediate_size": 14336, "vocab_size": 32000,
                                         "tie_word_embeddings": False}, 7_241_732_096),
    "gpt2-xl (tied)": ({"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257,
                        "n_positions": 1024}, 1_557_611_200),
    "EleutherAI/pythia-160m": ({"model_type": "gpt_neox", "hidden_size": 768, "num_hidden_layers": 12,
                                "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 50304,
                                "tie_word_embeddings": False}, 162_322_944),
    "bert-base-uncased": ({"model_type": "bert", "hidden_size": 768, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 30522,
                           "max_position_embeddings": 512, "type_vocab_size": 2}, 109_482_240),
    "t5-small": ({"model_type": "t5", "d_model": 512, "d_ff": 2048, "num_heads": 8, "d_kv": 64, "num_layers": 6,
                  "vocab_size": 32128, "feed_forward_proj": "relu"}, 60_506_624),
    "facebook/blenderbot-400M-distill": ({"model_type": "blenderbot", "d_model": 1280, "encoder_layers": 2,
                                          "decoder_layers": 12, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120,
                                          "decoder_attention_heads": 32, "vocab_size": 8008,
                                          "max_position_embeddings": 128}, 364_802_560),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_analytic_counts_match_the_checkpoints(name: str) -> None:
    config, published = CASES[name]
    assert from_config(config).params == published


def test_a_local_config_json_is_read() -> None:
    shape = model_shape(str(DATA / "gpt2-xl"), None)
    assert shape.params == 1_557_611_200 and shape.layers == 48 and shape.hidden == 1600
    assert shape.method == "config.json (gpt2)"


def test_only_a_count_gives_a_guessed_shape_and_says_so() -> None:
    shape = from_parameters(6.7e9)
    assert shape.params == 6_700_000_000 and "guessed" in shape.method and 3000 < shape.hidden < 5000


def test_unknown_families_ask_for_a_count() -> None:
    with pytest.raises(ValueError, match="spec.model.parameters"):
        from_config({"model_type": "mamba"})


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_meta_device_agrees_with_the_analytic_count(name: str, tmp_path: Path) -> None:
    """Cross-check on transformers' own models, built on the meta device (no weights): shrunk copies of each
    config (2 layers, narrow), so that the check covers the formula, not a lucky total."""
    pytest.importorskip("transformers")
    import json

    from orchestrator.plan.size import from_meta

    config = dict(CASES[name][0])
    for key in ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "encoder_layers"):
        if key in config:
            config[key] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    meta = from_meta(str(tmp_path))
    assert meta is not None and meta.params == from_config(config).params, (meta.params, from_config(config).params)
