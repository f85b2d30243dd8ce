"""Configuration dataclasses for fastmma's adapters."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .checks import check_fields, is_bool, is_number, positive_int, positive_number

MMA_TARGETS = ("attn", "ffn")
ATTN_IMPLEMENTATIONS = ("auto", "keep", "fastmma", "sdpa", "eager", "flash_attention_2")   # see fastmma/patching/attention.py


def _probability(value) -> bool:
    return is_number(value) and 0 <= value < 1


_SWITCH = (is_bool, "true or false", False)
# field: (test of a valid value, what the value must be, whether None is allowed)
MMA_FIELD_RULES = {
    "rank": (positive_int, "a positive integer", False),
    "groups": (positive_int, "a positive integer", False),
    "experts": (positive_int, "a positive integer", False),
    "scale": (is_number, "a finite number", False),
    "temperature": (positive_number, "a finite number > 0", False),
    "dropout": (_probability, "a number in [0, 1)", False),
    "num_modalities": (positive_int, "a positive integer", False),
    **{switch: _SWITCH for switch in ("recompute_swiglu", "recompute_mlp", "recompute_attention", "chunked_loss",
                                      "recompute_norm", "cache_autocast_weights", "fused_rotary")},
}


@dataclass
class MMAConfig:
    """Mixture-of-Modality adapter settings (LaVIN's defaults for a 7B model).

    rank: width of the shared down-projection h = A n + a.
    groups: the up-projections are block-diagonal with this many groups.
    experts: number of up-projections mixed by the router.
    scale: s in y = n + s * sum_e w_e (U_e h + c_e).
    temperature: router softmax temperature (10 for 7B, 5 for 13B in the paper).
    dropout: dropout probability on h during training.
    targets: "attn" puts an adapter on the attention's input norm, "ffn" on the FFN's.
    num_modalities: number of modality ids (0 = text, 1 = image).
    recompute_swiglu: the frozen SwiGLU MLP keeps only its gate and up outputs for backward.
    recompute_mlp: (off by default) the frozen SwiGLU MLP keeps only its input for backward and
        recomputes the gate and up projections there: less memory for two more GEMMs per layer.
    recompute_attention: each decoder layer, while training, keeps only its input, the v, o_proj,
        gate and up projections' outputs and (with the "fastmma" attention) the attention's
        log-sum-exp; backward recomputes q, k and the element-wise ops (no attention forward on CPU,
        no v/o/gate/up/down GEMM runs twice): under half LaVIN-style's activations for the q and k
        projections again (about 5% of a SmolLM2 step on CPU). False keeps q, k and the norm's
        output-side tensors instead (faster, about a fifth more activation memory).
    chunked_loss: with labels and autograd on, the LM head + loss run in chunks so the
        [tokens, vocab] logits are never stored (the output's `logits` is then None).
    recompute_norm: the frozen RMSNorms without an adapter (and the final norm) keep only their
        input and rstd (not an fp32 copy of a bf16/fp16 input).
    cache_autocast_weights: under autocast, each frozen Linear of the decoder layers keeps its weight
        cast to the autocast dtype instead of casting it at every call (autocast caches only the casts
        of weights that train); same results, one low-precision copy of those weights in memory.
    fused_rotary: LLaMA attention layers rotate q and k (the rotary position embedding) with one C++
        pass each on CPU, forward and backward, instead of transformers' five tensor ops
        (fastmma/patching/rotary_attention.py); other devices and other attention classes keep theirs.
    attn_implementation: "auto" (flash-attn 2 on CUDA in fp16/bf16 when `flash_attn` is installed;
        "fastmma" on CPU with the C++ kernels built; else SDPA), "keep" (the model's own), or
        "fastmma" / "sdpa" / "eager" / "flash_attention_2". "fastmma" (fastmma/patching/cpu_attention.py)
        is SDPA except for causal training-shaped calls on CPU, whose backward keeps q, k, v and the
        log-sum-exp but not the attention output.
    """

    rank: int = 8
    groups: int = 2
    experts: int = 2
    scale: float = 1.0
    temperature: float = 10.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("attn",)
    num_modalities: int = 2
    recompute_swiglu: bool = True
    recompute_mlp: bool = False
    recompute_attention: bool = True
    chunked_loss: bool = True
    recompute_norm: bool = True
    cache_autocast_weights: bool = True
    fused_rotary: bool = True
    attn_implementation: str = "auto"

    def __post_init__(self):
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        _require(isinstance(self.targets, (list, tuple)), "targets",
                 f"must be a list of {MMA_TARGETS}, got {self.targets!r}")
        self.targets = tuple(self.targets)
        check_fields(self, MMA_FIELD_RULES)
        _require(self.rank % self.groups == 0, "rank",
                 f"rank={self.rank} is not divisible by groups={self.groups}; choose a rank that is a multiple of groups")
        _require(len(self.targets) > 0, "targets", f"must name at least one of {MMA_TARGETS}")
        unknown = [t for t in self.targets if t not in MMA_TARGETS]
        _require(not unknown, "targets", f"unknown target(s) {unknown}; supported targets are {MMA_TARGETS}")
        _require(len(set(self.targets)) == len(self.targets), "targets", f"lists a target twice: {self.targets}")
        _require(self.attn_implementation in ATTN_IMPLEMENTATIONS, "attn_implementation",
                 f"{self.attn_implementation!r} is not one of {ATTN_IMPLEMENTATIONS}")

    def check_hidden_size(self, hidden_size: int) -> None:
        """Raise ValueError if the adapter cannot be laid over a model of this width."""
        _require(hidden_size % self.groups == 0, "groups",
                 f"the model's hidden size {hidden_size} is not divisible by groups={self.groups}; "
                 f"choose groups that divide {hidden_size}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "MMAConfig":
        return config_from_dict(cls, values)


def config_from_dict(config_class, values: dict):
    """Build a config dataclass from saved JSON, naming any field this version does not know."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{config_class.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return config_class(**values)


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ValueError(f"MMAConfig.{field_name}: {message}")
