"""The LLaMA decoder layout, shared by Llama, Mistral and Qwen2 in Hugging Face transformers."""
from .registry import DecoderFamily, register_family

LLAMA_LAYOUT = register_family(DecoderFamily(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    decoder=lambda causal_lm: causal_lm.model,
    norm_attrs={"attn": "input_layernorm", "ffn": "post_attention_layernorm"},
    projections={"attn": ("self_attn", ("q_proj", "k_proj", "v_proj")),
                 "ffn": ("mlp", ("gate_proj", "up_proj"))},
    bias_flags={"attn": ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj")),
                "ffn": ("mlp_bias", ("gate_proj", "up_proj", "down_proj"))},
    mlp_attr="mlp",
))
