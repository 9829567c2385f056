"""Model shapes: a name -> parameters table, and a reader for Hugging Face config.json.

Only the shape matters to the cost model and the simulator; the real backend
builds its layers from the same object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from drex import REPO_ROOT
from drex.jsonfile import read_json_object


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2 family
    tie_embeddings: bool = False
    # Exit layers a checkpoint was trained with (empty: any layer may exit via the shared head).
    trained_exits: tuple[int, ...] = field(default=())
    path: str | None = None  # local checkpoint directory, when the shape came from one
    gated_mlp: bool = True  # SwiGLU (gate + up + down); False: plain up + down (Phi-2's GELU MLP)
    # Trained exit parts stored apart from the base weights (models/smollm2-ee/exits.safetensors).
    extra_weights: str | None = None
    default_threshold: float | None = None  # the exit threshold a trained model was validated at
    default_metric: str | None = None
    base: str | None = None  # the model whose weights (and measured profile) an exits-only model builds on

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model {self.name}: {name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model {self.name}: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name}: num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (attention + SwiGLU MLP + two norms)."""
        h, kv = self.hidden_size, self.kv_dim
        attn = h * h + 2 * h * kv + h * h + (h + 2 * kv if self.qkv_bias else 0)
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attn + mlp + 2 * h

    @property
    def head_params(self) -> int:
        """Final norm + LM head (the exit head shares them)."""
        return self.hidden_size * self.vocab_size + self.hidden_size

    @property
    def total_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else self.hidden_size * self.vocab_size
        return embed + head + self.hidden_size + self.num_layers * self.layer_params

    def weight_bytes(self, dtype_bytes: int) -> int:
        return self.total_params * dtype_bytes

    def kv_bytes_per_token_layer(self, dtype_bytes: int) -> int:
        return 2 * self.kv_dim * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return self.num_layers * self.kv_bytes_per_token_layer(dtype_bytes)


def _llama(name, layers, hidden, inter, heads, kv_heads, vocab=32000, max_pos=4096, theta=10000.0, **kw):
    return ModelShape(name, layers, hidden, inter, heads, kv_heads, vocab, max_pos, theta, **kw)


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in (
        _llama("llama2-7b", 32, 4096, 11008, 32, 32),
        _llama("llama2-13b", 40, 5120, 13824, 40, 40),
        _llama("llama2-70b", 80, 8192, 28672, 64, 8),
        _llama("llama3-8b", 32, 4096, 14336, 32, 8, vocab=128256, max_pos=8192, theta=500000.0),
        # Qwen1.5-14B: MHA with q/k/v bias, large vocabulary.
        _llama("qwen-14b", 40, 5120, 13696, 40, 40, vocab=152064, max_pos=32768, theta=1000000.0,
               rms_norm_eps=1e-6, qkv_bias=True),
        # The models of Vidur's public GPU profiles (profiles/README.md), shapes from their Hugging Face configs.
        _llama("llama3-70b", 80, 8192, 28672, 64, 8, vocab=128256, max_pos=8192, theta=500000.0),
        _llama("codellama-34b", 48, 8192, 22016, 64, 8, max_pos=16384, theta=1000000.0),
        # Qwen-72B (v1): its config's intermediate_size 49152 counts gate and up together; q/k/v have bias.
        _llama("qwen-72b", 80, 8192, 24576, 64, 64, vocab=152064, max_pos=32768, theta=1000000.0,
               rms_norm_eps=1e-6, qkv_bias=True),
        _llama("internlm-20b", 60, 5120, 13824, 40, 40, vocab=103168, rms_norm_eps=1e-6),
        # Phi-2: parallel attention and MLP blocks, a GELU MLP without gate, biases on q/k/v.
        _llama("phi-2", 32, 2560, 10240, 32, 32, vocab=51200, max_pos=2048, qkv_bias=True, tie_embeddings=False,
               gated_mlp=False),
        # A few layers of small width: CPU tests and the laptop quick start.
        _llama("tiny", 4, 128, 344, 4, 2, vocab=512, max_pos=16384),
    )
}

# Models shipped as checkpoints under models/<name>/ (config.json + safetensors).
SHIPPED_DIR = REPO_ROOT / "models"


def from_hf_config(config_path: str | Path, name: str | None = None) -> ModelShape:
    """Read a Llama / Qwen2 style Hugging Face config.json (file or directory)."""
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    cfg = read_json_object(path, "model config not found")
    missing = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
               if k not in cfg]
    if missing:
        raise ValueError(f"{path}: config.json lacks {', '.join(missing)}")
    model_type = str(cfg.get("model_type", "llama"))
    _refuse_moe(cfg, path, model_type)
    theta = cfg.get("rope_theta")
    if theta is None:
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    # A checkpoint is a folder with config.json (and its weights, which the loader checks); any other config
    # file is a shape only: drex run's --weights auto gives it random weights.
    weights_dir = path.parent if path.name == "config.json" else None
    return ModelShape(
        name=name or (path.parent.name if path.name == "config.json" else path.stem),
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_heads=int(cfg["num_attention_heads"]),
        num_kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
        vocab_size=int(cfg["vocab_size"]),
        max_position=int(cfg.get("max_position_embeddings", 4096)),
        rope_theta=float(theta),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        qkv_bias=bool(cfg.get("attention_bias", model_type.startswith("qwen2"))),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        trained_exits=tuple(int(e) for e in cfg.get("drex_exit_layers", ())),
        path=None if weights_dir is None else str(weights_dir),
    )


MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _refuse_moe(cfg: dict, path: Path, model_type: str) -> None:
    """Mixture-of-experts layers are not priced (a dense reading would put every expert, or none, in the MLP)."""
    experts = next(((k, cfg[k]) for k in MOE_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 1), None)
    if experts is None and "moe" not in model_type.lower() and "mixtral" not in model_type.lower():
        return
    active = cfg.get("num_experts_per_tok") or cfg.get("moe_topk")
    what = f"{experts[0]}={experts[1]}" if experts else f"model_type {model_type}"
    raise ValueError(f"{path}: a mixture-of-experts model ({what}" + (f", {active} active per token" if active else "")
                     + "); drex models dense MLPs only, and pricing it as dense would be wrong by the experts' "
                       "ratio: not supported")
# Models fetched and converted into the cache by ``drex model fetch NAME`` (drex.real.gguf_convert).
FETCHED = ("smollm2",)


def cache_dir() -> Path:
    """Where fetched models are converted to, outside the repository: $DREX_CACHE, else ~/.cache/drex."""
    return Path(os.environ.get("DREX_CACHE") or "~/.cache/drex").expanduser()


def _fetched(name: str) -> ModelShape:
    directory = cache_dir() / name
    if not (directory / "config.json").exists():
        raise ValueError(f"model {name} is not fetched yet: run `drex model fetch {name}` "
                         f"(converts it once into {directory})")
    return from_hf_config(directory, name=name)


def _shipped_exits(name: str, directory: Path) -> ModelShape:
    """A shipped exits-only model: trained exit parts over a fetched base (config.json names ``drex_base``)."""
    cfg = read_json_object(directory / "config.json", "model config not found")
    base = get_model(str(cfg["drex_base"]))
    weights = directory / "exits.safetensors"
    return replace(base, name=name, base=base.name, trained_exits=tuple(int(e) for e in cfg.get("drex_exit_layers", ())),
                   extra_weights=str(weights) if weights.exists() else None,
                   default_threshold=cfg.get("drex_default_threshold"), default_metric=cfg.get("drex_default_metric"))


def get_model(name_or_path: str) -> ModelShape:
    """A table name, a fetched model (smollm2), a shipped checkpoint name (models/<name>), or a path to
    config.json / its directory."""
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    if name_or_path in FETCHED:
        return _fetched(name_or_path)
    shipped = SHIPPED_DIR / name_or_path
    if Path(name_or_path).name == name_or_path and (shipped / "config.json").exists():  # a name, not a path
        if "drex_base" in read_json_object(shipped / "config.json", "model config not found"):
            return _shipped_exits(name_or_path, shipped)
        return from_hf_config(shipped, name=name_or_path)
    path = Path(name_or_path)
    if path.exists():
        return from_hf_config(path)
    shipped_names = sorted(p.name for p in SHIPPED_DIR.glob("*") if (p / "config.json").exists())
    known = ", ".join(sorted(MODELS) + list(FETCHED) + shipped_names)
    raise ValueError(f"unknown model {name_or_path!r}: not a known name ({known}) nor a path to a config.json")


def with_layers(shape: ModelShape, num_layers: int) -> ModelShape:
    """The same shape cut to its first num_layers (the profiler builds only what it must)."""
    return replace(shape, num_layers=num_layers)
