"""Decoder architecture config: one dataclass covers Llama 2/3, Mistral, Qwen2 and Qwen3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from cpt_jax.config.base import require
from cpt_jax.errors import ConfigError

Family = Literal["llama", "mistral", "qwen2", "qwen3"]
DType = Literal["float32", "bfloat16", "float16"]
# The one dtype vocabulary: configs use the full names; commands also take the short ones.
DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
               "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
Remat = Literal["none", "full", "dots", "dots_no_batch"]
# Graph features each family fixes (its HF architecture has them or not; export writes them so).
FAMILY_FEATURES = {"llama": {"qkv_bias": False, "qk_norm": False}, "mistral": {"qkv_bias": False, "qk_norm": False},
                   "qwen2": {"qkv_bias": True, "qk_norm": False}, "qwen3": {"qkv_bias": False, "qk_norm": True}}
FEATURE_NAMES = {"qkv_bias": "q/k/v projection biases", "qk_norm": "q/k head norms"}
UNROLL_ALL_MAX_LAYERS = 4  # scan_unroll null: models this shallow run their scanned layers without a loop


def canonical_dtype(name: str, what: str = "dtype") -> str:
    """'bf16' -> 'bfloat16'; unknown names are refused with the choices."""
    if name not in DTYPE_NAMES:
        raise ConfigError(what, f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


ROPE_SCALING_KEYS = {  # the keys each rope_type reads (and writes into an HF config)
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "linear": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor", "mscale",
             "mscale_all_dim", "truncate"),
}


@dataclass(frozen=True)
class RopeScalingConfig:
    """RoPE scaling (HF `rope_scaling`), transformers' formulas: llama3 (Llama 3.1 frequency-
    dependent), linear (position interpolation: every frequency divided by `factor`) or yarn (YaRN:
    interpolation blended with extrapolation between beta_slow and beta_fast rotations, and cos/sin
    scaled by an attention factor). Each type reads only its keys (ROPE_SCALING_KEYS)."""

    rope_type: Literal["llama3", "linear", "yarn"] = "llama3"  # scaling types supported
    factor: float = 8.0  # llama3: low frequencies are divided by this; linear/yarn: the context extension
    low_freq_factor: float = 1.0  # llama3: wavelengths above orig/low_freq_factor are scaled fully
    high_freq_factor: float = 4.0  # llama3: wavelengths below orig/high_freq_factor are kept
    original_max_position_embeddings: int = 8192  # llama3/yarn: context length the base model was trained on
    beta_fast: float = 32.0  # yarn: rotations above which frequencies extrapolate (are kept)
    beta_slow: float = 1.0  # yarn: rotations below which frequencies interpolate (are divided by factor)
    attention_factor: Optional[float] = None  # yarn: cos/sin scale; None: 0.1 ln(factor) + 1 (or from mscale)
    mscale: Optional[float] = None  # yarn (DeepSeek style): with mscale_all_dim, sets the attention factor
    mscale_all_dim: Optional[float] = None  # yarn: see mscale
    truncate: bool = True  # yarn: round the correction range to whole dimensions

    def validate(self, path: str) -> None:
        require(self.factor >= 1.0, path, "factor", "must be >= 1")
        require(self.high_freq_factor > self.low_freq_factor, path, "high_freq_factor",
                "must be greater than low_freq_factor")
        require(self.original_max_position_embeddings > 0, path, "original_max_position_embeddings",
                "must be positive")
        if self.rope_type == "yarn":
            require(self.beta_fast > self.beta_slow, path, "beta_fast",
                    f"must be greater than beta_slow ({self.beta_fast} <= {self.beta_slow})")
            require(self.attention_factor is None or self.attention_factor > 0, path, "attention_factor",
                    f"must be positive, got {self.attention_factor}")


@dataclass(frozen=True)
class ModelConfig:
    family: Family = "llama"  # graph family; sets the HF architecture on export
    vocab_size: int = 32000  # must cover every token id of the data (checked before training)
    hidden_size: int = 4096  # d_model
    intermediate_size: int = 11008  # SwiGLU MLP width
    num_layers: int = 32  # decoder blocks
    num_heads: int = 32  # query heads
    num_kv_heads: Optional[int] = None  # None: multi-head attention (= num_heads)
    head_dim: Optional[int] = None  # None: hidden_size // num_heads (Qwen3 sets it freely)
    rope_theta: float = 10000.0  # RoPE base (Llama 3: 500000)
    rope_scaling: Optional[RopeScalingConfig] = None  # Llama 3.1+ long-context scaling
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon
    max_position_embeddings: int = 4096  # longest sequence the model is meant for; seq_len may not exceed it
    tie_embeddings: bool = False  # LM head shares the embedding matrix
    qkv_bias: Optional[bool] = None  # biases on q/k/v; null: the family's (qwen2 only); fixed by the family
    qk_norm: Optional[bool] = None  # RMSNorm over each head of q and k; null: the family's (qwen3 only); fixed by it
    param_dtype: DType = "float32"  # storage dtype of parameters (and optimizer moments)
    dtype: DType = "float32"  # compute dtype
    remat: Remat = "none"  # rematerialise each block: none, full, or keep matmul outputs (dots)
    scan_layers: bool = True  # one scanned block over stacked weights: compile time independent of depth
    scan_unroll: Optional[int] = None  # scan_layers: blocks per loop iteration; 0: all (no loop); null: auto
    attention: Literal["auto", "blocked", "xla", "cudnn", "splash", "pallas_gpu"] = "auto"  # auto: blocked (CPU), splash (TPU), pallas_gpu (GPU)
    logits_chunk: Optional[int] = None  # LM head and loss over this many positions at a time (never the full logits); 0: full logits; null: auto
    logits_vocab_tiles: Optional[int] = None  # LM head and loss over this many slices of the vocabulary (one slice of the head gathered, its gradient reduce-scattered per slice); 1: none; null: auto (1 when logits_chunk is 0)
    initializer_range: float = 0.02  # std of the normal init (scratch runs)

    def __post_init__(self) -> None:
        for key, value in FAMILY_FEATURES[self.family].items():  # null: what the family has
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def layers_per_scan_iteration(self) -> int:
        """Blocks in one iteration of the scanned loop (scan_unroll; None: every block of a model
        with at most UNROLL_ALL_MAX_LAYERS, else one). The parameters stay stacked either way.
        Without the loop a shallow model's step runs 3-6% faster on CPU (no dynamic slices of the
        stacked weights, no per-layer gradient updates in place) and compiles no slower; deep
        models keep one block per iteration, so compile time does not grow with depth."""
        if self.scan_unroll is not None:
            return self.scan_unroll or self.num_layers
        return self.num_layers if self.num_layers <= UNROLL_ALL_MAX_LAYERS else 1

    def validate(self, path: str) -> None:
        for key, value in FAMILY_FEATURES[self.family].items():  # every checkpoint of the family has them
            require(getattr(self, key) == value, path, key,
                    f"family {self.family!r} {'has' if value else 'has no'} {FEATURE_NAMES[key]}, so {key} must be "
                    f"{str(value).lower()} (or left out), got {str(getattr(self, key)).lower()}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                    "max_position_embeddings"):
            require(getattr(self, key) > 0, path, key, f"must be positive, got {getattr(self, key)}")
        if self.head_dim is None:
            require(self.hidden_size % self.num_heads == 0, path, "num_heads",
                    f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} "
                    "(or set head_dim explicitly, as Qwen3 does)")
        else:
            require(self.head_dim > 0, path, "head_dim", "must be positive")
        require(self.dim_per_head % 2 == 0, path, "head_dim", "must be even for rotary embeddings")
        require(self.kv_heads > 0 and self.num_heads % self.kv_heads == 0, path, "num_kv_heads",
                f"num_kv_heads={self.kv_heads} must divide num_heads={self.num_heads} (grouped-query attention)")
        require(self.rope_theta > 0, path, "rope_theta", "must be positive")
        require(self.rms_norm_eps > 0, path, "rms_norm_eps", "must be positive")
        require(self.initializer_range > 0, path, "initializer_range", "must be positive")
        require(self.logits_chunk is None or self.logits_chunk >= 0, path, "logits_chunk",
                f"must be >= 0 (0: full logits) or null (automatic), got {self.logits_chunk}")
        require(self.logits_vocab_tiles is None or self.logits_vocab_tiles >= 1, path, "logits_vocab_tiles",
                f"must be >= 1 (1: the whole vocabulary at once) or null (automatic), got {self.logits_vocab_tiles}")
        require(self.scan_unroll is None or self.scan_unroll >= 0, path, "scan_unroll",
                f"must be >= 0 (0: every layer in one iteration) or null (automatic), got {self.scan_unroll}")

    def num_params(self, include_embeddings: bool = True) -> int:
        d, h, kv, hd = self.hidden_size, self.num_heads, self.kv_heads, self.dim_per_head
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attn += (h + 2 * kv) * hd
        if self.qk_norm:
            attn += 2 * hd
        layer = attn + 3 * d * self.intermediate_size + 2 * d
        total = self.num_layers * layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x non-embedding params + 12 x layers x seq_len x attention width.

        The standard MFU count (Kaplan et al.; PaLM appendix B): embedding and LM-head
        matmuls are left out, so small-vocabulary-dominated models report a conservative MFU.
        """
        n = self.num_params(include_embeddings=False)
        return 6.0 * n + 12.0 * self.num_layers * seq_len * self.num_heads * self.dim_per_head
