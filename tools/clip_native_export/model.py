"""A compact CLIP (image and text towers with projections) for TorchScript export.

Computes what Hugging Face ``CLIPModel.get_image_features`` / ``get_text_features`` compute, with the
weights laid out so that each tower scripts into a small, self-contained archive:

* q/k/v projections are fused into one ``Linear`` (one GEMM instead of three; same math).
* The default attention is plain ``matmul`` + ``softmax`` so the archives load in libtorch 1.13;
  ``attention="sdpa"`` uses ``scaled_dot_product_attention`` (needs libtorch >= 2.0 to load).
* Nothing is frozen or inlined: weights stay parameters, so the archive is portable across versions.

Only torch is needed here.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn

ATTENTION_KINDS = ("matmul", "sdpa")

# Activations that Hugging Face CLIP configs use (``hidden_act``), each written exactly as
# transformers' ACT2FN computes it so that exported encoders match to float rounding.
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish")


@dataclass
class TowerConfig:
    width: int
    layers: int
    heads: int
    mlp_width: int
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


@dataclass
class VisionConfig(TowerConfig):
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3


@dataclass
class TextConfig(TowerConfig):
    vocab_size: int = 49408
    context_length: int = 77
    # Hugging Face pools at argmax(input_ids) when the config's eos_token_id is the legacy value 2
    # (openai/clip-vit-base-patch32 and friends) and at the first ``eos_token_id`` otherwise. Both pick
    # the first <|endoftext|> for tokenizer output, since 49407 is the largest id.
    pooling: str = "first_eos"  # "first_eos" | "argmax"
    eos_token_id: int = 49407


@dataclass
class ClipConfig:
    vision: VisionConfig
    text: TextConfig
    projection_dim: int = 512

    def to_manifest(self) -> Dict[str, object]:
        """The architecture block written into clip.json (camelCase, like the rest of the manifest)."""

        def tower(cfg: TowerConfig) -> Dict[str, object]:
            return {
                "width": cfg.width,
                "layers": cfg.layers,
                "heads": cfg.heads,
                "mlpWidth": cfg.mlp_width,
                "hiddenAct": cfg.hidden_act,
                "layerNormEps": cfg.layer_norm_eps,
            }

        vision = tower(self.vision)
        vision.update(imageSize=self.vision.image_size, patchSize=self.vision.patch_size,
                      numChannels=self.vision.num_channels)
        text = tower(self.text)
        text.update(vocabSize=self.text.vocab_size, contextLength=self.text.context_length,
                    pooling=self.text.pooling, eosTokenId=self.text.eos_token_id)
        return {"projectionDim": self.projection_dim, "vision": vision, "text": text}


def _tower_config_check(name: str, cfg: TowerConfig) -> None:
    for key in ("width", "layers", "heads", "mlp_width"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected a positive integer for {name}.{key} but received {value!r}")
    if cfg.width % cfg.heads != 0:
        raise ValueError(f"Expected {name}.width ({cfg.width}) to be divisible by {name}.heads ({cfg.heads})")
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(f"Expected one of {', '.join(ACTIVATIONS)} for {name}.hidden_act "
                         f"but received {cfg.hidden_act!r}")


def validate_config(cfg: ClipConfig) -> None:
    _tower_config_check("vision", cfg.vision)
    _tower_config_check("text", cfg.text)
    if cfg.vision.image_size % cfg.vision.patch_size != 0:
        raise ValueError(f"Expected vision.image_size ({cfg.vision.image_size}) to be a multiple of "
                         f"vision.patch_size ({cfg.vision.patch_size})")
    if cfg.text.pooling not in ("first_eos", "argmax"):
        raise ValueError(f"Expected 'first_eos' or 'argmax' for text.pooling but received {cfg.text.pooling!r}")
    if cfg.projection_dim < 1:
        raise ValueError(f"Expected a positive integer for projection_dim but received {cfg.projection_dim!r}")


# --- activations -------------------------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class NewGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class FastGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


class TanhGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


def make_activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_new":
        return NewGELU()
    if name == "gelu_fast":
        return FastGELU()
    if name == "gelu_pytorch_tanh":
        return TanhGELU()
    if name == "relu":
        return nn.ReLU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    raise ValueError(f"Expected one of {', '.join(ACTIVATIONS)} for hidden_act but received {name!r}")


# --- transformer blocks ------------------------------------------------------------------------


class _Attention(nn.Module):
    """Multi-head self-attention: the input and output projections around `attend`, each kind's own."""

    def __init__(self, width: int, heads: int, causal: bool, device: Optional[str] = None):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.causal = causal
        self.qkv_proj = nn.Linear(width, 3 * width, device=device)
        self.out_proj = nn.Linear(width, width, device=device)

    def attend(self, qkv: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        """The heads' attention: qkv [N, L, 3W] (the input projection's output) -> [N, L, W]."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.attend(self.qkv_proj(x), x.size(0), x.size(1)))

    def forward_packed(self, x: torch.Tensor, pad_map: torch.Tensor, pack_map: torch.Tensor, batch: int,
                       length: int) -> torch.Tensor:
        """forward on packed rows (see TextEncoder.forward_packed): x [T, W] -> [T, W]."""
        qkv = self.qkv_proj(x).index_select(0, pad_map).view(batch, length, -1)
        out = self.attend(qkv, batch, length).reshape(batch * length, -1).index_select(0, pack_map)
        return self.out_proj(out)


class MatmulAttention(_Attention):
    """Attention with explicit matmul/softmax (operators libtorch 1.13 has)."""

    # Constants of the scripted graphs (TorchScript reads a class's own annotations only).
    heads: torch.jit.Final[int]
    head_dim: torch.jit.Final[int]
    scale: torch.jit.Final[float]
    causal: torch.jit.Final[bool]

    def __init__(self, width: int, heads: int, causal: bool, device: Optional[str] = None):
        super().__init__(width, heads, causal, device)
        self.scale = self.head_dim ** -0.5

    def attend(self, qkv: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        qkv = qkv.view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if self.causal:
            future = torch.ones(length, length, dtype=torch.bool, device=qkv.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)


class SdpaAttention(_Attention):
    """Same weights and math as MatmulAttention through the fused kernel (libtorch >= 2.0)."""

    heads: torch.jit.Final[int]
    head_dim: torch.jit.Final[int]
    causal: torch.jit.Final[bool]

    def attend(self, qkv: torch.Tensor, batch: int, length: int) -> torch.Tensor:
        qkv = qkv.view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)


class Block(nn.Module):
    """Pre-LN transformer block, as CLIPEncoderLayer."""

    def __init__(self, cfg: TowerConfig, causal: bool, attention: str, device: Optional[str] = None):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"Expected one of {', '.join(ATTENTION_KINDS)} for attention but received {attention!r}")
        attn_class = SdpaAttention if attention == "sdpa" else MatmulAttention
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device)
        self.self_attn = attn_class(cfg.width, cfg.heads, causal, device)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device)
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width, device=device)
        self.act = make_activation(cfg.hidden_act)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width, device=device)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The block's second half, with its residual."""
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x + self.self_attn(self.layer_norm1(x)))

    def forward_pooled(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """forward(x)[arange(N), rows]: [N, L, W] -> [N, W] for the last block, whose other rows no output
        reads. Attention still sees every row; the MLP (two thirds of a block's work) runs on one row each."""
        x = x + self.self_attn(self.layer_norm1(x))
        return self.mlp(x[torch.arange(x.size(0), device=x.device), rows])

    def forward_packed(self, x: torch.Tensor, pad_map: torch.Tensor, pack_map: torch.Tensor, batch: int,
                       length: int) -> torch.Tensor:
        """forward on packed rows (see TextEncoder.forward_packed): x [T, W] -> [T, W]."""
        return self.mlp(x + self.self_attn.forward_packed(self.layer_norm1(x), pad_map, pack_map, batch, length))

    def forward_packed_pooled(self, x: torch.Tensor, pad_map: torch.Tensor, pack_map: torch.Tensor, batch: int,
                              length: int, rows: torch.Tensor) -> torch.Tensor:
        """forward_pooled on packed rows: x [T, W] -> [N, W], `rows` the pooled rows' indices in x."""
        x = x + self.self_attn.forward_packed(self.layer_norm1(x), pad_map, pack_map, batch, length)
        return self.mlp(x.index_select(0, rows))


# --- towers ------------------------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """forward(pixel_values: float32[N, C, S, S]) -> float32[N, projection_dim]."""

    image_size: torch.jit.Final[int]
    num_channels: torch.jit.Final[int]
    patch_size: torch.jit.Final[int]
    num_layers: torch.jit.Final[int]

    def __init__(self, cfg: VisionConfig, projection_dim: int, attention: str = "matmul",
                 device: Optional[str] = None):
        super().__init__()
        self.image_size = cfg.image_size
        self.num_channels = cfg.num_channels
        self.patch_size = cfg.patch_size
        self.num_layers = cfg.layers
        num_positions = (cfg.image_size // cfg.patch_size) ** 2 + 1
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.width, kernel_size=cfg.patch_size,
                                         stride=cfg.patch_size, bias=False, device=device)
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width, device=device))
        self.position_embedding = nn.Parameter(torch.zeros(num_positions, cfg.width, device=device))
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device)
        self.layers = nn.ModuleList([Block(cfg, False, attention, device) for _ in range(cfg.layers)])
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device)
        self.projection = nn.Linear(cfg.width, projection_dim, bias=False, device=device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if (pixel_values.dim() != 4 or pixel_values.size(1) != self.num_channels
                or pixel_values.size(2) != self.image_size or pixel_values.size(3) != self.image_size):
            raise ValueError("Expected pixel_values of shape [N, {}, {}, {}] but received {}".format(
                self.num_channels, self.image_size, self.image_size, pixel_values.size()))
        # The stride-P convolution as one linear over the flattened patches (same weights, same sums): a
        # matrix product that inference backends pack once, where a convolution reorders its weights per call.
        batch, grid, p = pixel_values.size(0), self.image_size // self.patch_size, self.patch_size
        patches = pixel_values.to(self.patch_embedding.weight.dtype).reshape(
            batch, self.num_channels, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(
            batch, grid * grid, self.num_channels * p * p)
        weight = self.patch_embedding.weight
        x = nn.functional.linear(patches, weight.reshape(weight.size(0), -1))
        cls = self.class_embedding.view(1, 1, -1).expand(x.size(0), 1, x.size(2))
        x = torch.cat([cls, x], dim=1) + self.position_embedding
        x = self.pre_layrnorm(x)
        # Only the class token's row of the last block reaches the output.
        cls_rows = torch.zeros(batch, dtype=torch.long, device=x.device)
        for i, layer in enumerate(self.layers):
            if i + 1 < self.num_layers:
                x = layer(x)
            else:
                x = layer.forward_pooled(x, cls_rows)
        return self.projection(self.post_layernorm(x))


class TextEncoder(nn.Module):
    """forward(input_ids: int64[N, L]) -> float32[N, projection_dim], 1 <= L <= context_length."""

    context_length: torch.jit.Final[int]
    pool_argmax: torch.jit.Final[bool]
    eos_token_id: torch.jit.Final[int]
    num_layers: torch.jit.Final[int]

    def __init__(self, cfg: TextConfig, projection_dim: int, attention: str = "matmul",
                 device: Optional[str] = None):
        super().__init__()
        self.context_length = cfg.context_length
        self.pool_argmax = cfg.pooling == "argmax"
        self.num_layers = cfg.layers
        self.eos_token_id = cfg.eos_token_id
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width, device=device)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width, device=device))
        self.layers = nn.ModuleList([Block(cfg, True, attention, device) for _ in range(cfg.layers)])
        self.final_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, device=device)
        self.projection = nn.Linear(cfg.width, projection_dim, bias=False, device=device)

    def check_input(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.size(1) < 1 or input_ids.size(1) > self.context_length:
            raise ValueError("Expected input_ids of shape [N, L] with 1 <= L <= {} but received {}".format(
                self.context_length, input_ids.size()))

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Per text, the position whose row is its embedding: int64[N] (the first end-of-text token)."""
        if self.pool_argmax:
            return input_ids.argmax(dim=-1)
        return (input_ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.check_input(input_ids)
        input_ids = input_ids.to(torch.long)
        length = input_ids.size(1)
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        positions = self.pooled_positions(input_ids)
        # The last block computes only the pooled rows (the causal mask keeps every other row out of them).
        for i, layer in enumerate(self.layers):
            if i + 1 < self.num_layers:
                x = layer(x)
            else:
                x = layer.forward_pooled(x, positions)
        # LayerNorm is per token, so normalizing only the pooled rows equals Hugging Face's
        # final_layer_norm over the whole sequence followed by the gather.
        return self.projection(self.final_layer_norm(x))

    @torch.jit.export
    def forward_packed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """forward(input_ids), with the linears run on each text's tokens up to its pooled one alone.

        A padded batch spends as much on a padding token as on a real one, and the tokens after a text's pooled
        one never reach its output (the causal mask). Here the tokens that do are packed into one sequence of
        T rows (text after text) for the linears, layer norms and activations; only the attention's products
        see each text padded to the batch's length L again (pad_map, [N * L]: each slot's row, a padding slot
        its text's last kept row, which the causal mask hides from the rows that are kept) and pack_map ([T]:
        each kept row's slot) packs their output back. Same outputs as forward within the linears' rounding.
        """
        self.check_input(input_ids)
        input_ids = input_ids.to(torch.long)
        batch, length = input_ids.size(0), input_ids.size(1)
        positions = self.pooled_positions(input_ids)
        kept = (torch.arange(length, device=input_ids.device).unsqueeze(0) <= positions.unsqueeze(1)).view(-1)
        pack_map = kept.nonzero().view(-1)
        pad_map = kept.cumsum(0) - 1
        rows = pad_map.index_select(0, torch.arange(batch, device=input_ids.device) * length + positions)
        x = (self.token_embedding(input_ids) + self.position_embedding[:length]).view(batch * length, -1)
        x = x.index_select(0, pack_map)
        for i, layer in enumerate(self.layers):
            if i + 1 < self.num_layers:
                x = layer.forward_packed(x, pad_map, pack_map, batch, length)
            else:
                x = layer.forward_packed_pooled(x, pad_map, pack_map, batch, length, rows)
        return self.projection(self.final_layer_norm(x))


# --- weights -----------------------------------------------------------------------------------


def _block_state(prefix: str, hf: Dict[str, torch.Tensor], layers: int) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for i in range(layers):
        src = f"{prefix}.encoder.layers.{i}."
        dst = f"layers.{i}."
        attn = src + "self_attn."
        out[dst + "self_attn.qkv_proj.weight"] = torch.cat(
            [hf[attn + "q_proj.weight"], hf[attn + "k_proj.weight"], hf[attn + "v_proj.weight"]], dim=0)
        out[dst + "self_attn.qkv_proj.bias"] = torch.cat(
            [hf[attn + "q_proj.bias"], hf[attn + "k_proj.bias"], hf[attn + "v_proj.bias"]], dim=0)
        out[dst + "self_attn.out_proj.weight"] = hf[attn + "out_proj.weight"]
        out[dst + "self_attn.out_proj.bias"] = hf[attn + "out_proj.bias"]
        for name in ("layer_norm1", "layer_norm2"):
            out[dst + name + ".weight"] = hf[src + name + ".weight"]
            out[dst + name + ".bias"] = hf[src + name + ".bias"]
        for name in ("fc1", "fc2"):
            out[dst + name + ".weight"] = hf[src + "mlp." + name + ".weight"]
            out[dst + name + ".bias"] = hf[src + "mlp." + name + ".bias"]
    return out


def image_state_from_hf(hf: Dict[str, torch.Tensor], cfg: ClipConfig) -> Dict[str, torch.Tensor]:
    """Maps Hugging Face CLIPModel weights (vision_model.*, visual_projection.*) to ImageEncoder's."""
    p = "vision_model"
    state = {
        "patch_embedding.weight": hf[f"{p}.embeddings.patch_embedding.weight"],
        "class_embedding": hf[f"{p}.embeddings.class_embedding"],
        "position_embedding": hf[f"{p}.embeddings.position_embedding.weight"],
        "pre_layrnorm.weight": hf[f"{p}.pre_layrnorm.weight"],
        "pre_layrnorm.bias": hf[f"{p}.pre_layrnorm.bias"],
        "post_layernorm.weight": hf[f"{p}.post_layernorm.weight"],
        "post_layernorm.bias": hf[f"{p}.post_layernorm.bias"],
        "projection.weight": hf["visual_projection.weight"],
    }
    state.update(_block_state(p, hf, cfg.vision.layers))
    return state


def text_state_from_hf(hf: Dict[str, torch.Tensor], cfg: ClipConfig) -> Dict[str, torch.Tensor]:
    """Maps Hugging Face CLIPModel weights (text_model.*, text_projection.*) to TextEncoder's."""
    p = "text_model"
    state = {
        "token_embedding.weight": hf[f"{p}.embeddings.token_embedding.weight"],
        "position_embedding": hf[f"{p}.embeddings.position_embedding.weight"],
        "final_layer_norm.weight": hf[f"{p}.final_layer_norm.weight"],
        "final_layer_norm.bias": hf[f"{p}.final_layer_norm.bias"],
        "projection.weight": hf["text_projection.weight"],
    }
    state.update(_block_state(p, hf, cfg.text.layers))
    return state


def load_state(module: nn.Module, state: Dict[str, torch.Tensor], what: str) -> None:
    """Copies ``state`` into ``module`` as float32, failing on any missing, extra or misshapen tensor."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"{what}: weights do not match the architecture "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"{what}: expected shape {list(own[name].shape)} for {name} "
                             f"but the checkpoint has {list(tensor.shape)}")
    module.load_state_dict({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()})


def random_init(module: nn.Module, generator: torch.Generator) -> None:
    """CLIP-like random weights (Hugging Face's init scheme) with small random layer-norm and bias terms.

    The non-trivial norms and biases make weight-mapping mistakes (a swapped bias, a missing norm)
    change the outputs, which the usual ones/zeros init would hide. Deterministic for a generator seed:
    tensors are drawn in state_dict order.
    """

    def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std + mean

    layers = sum(1 for name, _ in module.named_modules() if name.count(".") == 1 and name.startswith("layers."))
    with torch.no_grad():
        for name, p in module.state_dict().items():
            width = p.shape[-1]
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                value = normal(p.shape, 0.1, 1.0) if name.endswith("weight") else normal(p.shape, 0.02)
            elif name.endswith(".bias"):
                value = normal(p.shape, 0.02)
            elif name == "class_embedding":
                value = normal(p.shape, width ** -0.5)
            elif name in ("patch_embedding.weight", "position_embedding", "token_embedding.weight"):
                value = normal(p.shape, 0.02)
            elif name == "projection.weight":
                value = normal(p.shape, width ** -0.5)
            elif name.endswith("qkv_proj.weight"):
                value = normal(p.shape, width ** -0.5 * (2 * layers) ** -0.5)
            elif name.endswith("fc2.weight"):
                value = normal(p.shape, p.shape[0] ** -0.5 * (2 * layers) ** -0.5)
            elif name.endswith("out_proj.weight"):
                value = normal(p.shape, width ** -0.5)
            elif name.endswith("fc1.weight"):
                value = normal(p.shape, (2 * width) ** -0.5)
            else:
                raise RuntimeError(f"random_init has no rule for {name}")
            p.copy_(value)


def build_encoders(cfg: ClipConfig, attention: str = "matmul"):
    """Uninitialized (image, text) encoders in eval mode; fill them with load_state or random_init.

    Built on the meta device and then given empty CPU storage, which skips torch's default
    initializers (seconds for ViT-B/32's 150M parameters); every tensor is overwritten afterwards.
    """
    validate_config(cfg)
    image = ImageEncoder(cfg.vision, cfg.projection_dim, attention, device="meta").to_empty(device="cpu")
    text = TextEncoder(cfg.text, cfg.projection_dim, attention, device="meta").to_empty(device="cpu")
    return image.eval(), text.eval()


# --- named shapes ------------------------------------------------------------------------------


def preset(name: str) -> ClipConfig:
    """The random-weight shapes tests and benchmarks use."""
    if name == "vit-b-32":
        # openai/clip-vit-base-patch32
        return ClipConfig(
            vision=VisionConfig(width=768, layers=12, heads=12, mlp_width=3072, image_size=224, patch_size=32),
            text=TextConfig(width=512, layers=12, heads=8, mlp_width=2048, vocab_size=49408, context_length=77),
            projection_dim=512,
        )
    if name == "tiny":
        # Same interfaces (224 input, patch 32, 512-d outputs, 49408 ids, 77 positions), a few MB.
        return ClipConfig(
            vision=VisionConfig(width=64, layers=2, heads=2, mlp_width=256, image_size=224, patch_size=32),
            text=TextConfig(width=32, layers=2, heads=2, mlp_width=128, vocab_size=49408, context_length=77),
            projection_dim=512,
        )
    raise ValueError(f"Expected vit-b-32 or tiny for --config but received {name!r}")


PRESETS = ("vit-b-32", "tiny")


def config_from_hf(config: Dict[str, object]) -> ClipConfig:
    """Reads a Hugging Face CLIPConfig dict (config.json), with transformers' defaults for absent keys."""
    if config.get("model_type") not in (None, "clip"):
        raise ValueError(f"Expected a CLIP checkpoint (model_type 'clip') but config.json has "
                         f"model_type {config.get('model_type')!r}")
    # Old checkpoints carry text_config_dict / vision_config_dict; transformers prefers them.
    vision = dict(config.get("vision_config") or {})
    vision.update(config.get("vision_config_dict") or {})
    text = dict(config.get("text_config") or {})
    text.update(config.get("text_config_dict") or {})

    def get(d: Dict[str, object], key: str, default):
        value = d.get(key)
        return default if value is None else value

    eos = int(get(text, "eos_token_id", 49407))
    cfg = ClipConfig(
        vision=VisionConfig(
            width=int(get(vision, "hidden_size", 768)),
            layers=int(get(vision, "num_hidden_layers", 12)),
            heads=int(get(vision, "num_attention_heads", 12)),
            mlp_width=int(get(vision, "intermediate_size", 3072)),
            hidden_act=str(get(vision, "hidden_act", "quick_gelu")),
            layer_norm_eps=float(get(vision, "layer_norm_eps", 1e-5)),
            image_size=int(get(vision, "image_size", 224)),
            patch_size=int(get(vision, "patch_size", 32)),
            num_channels=int(get(vision, "num_channels", 3)),
        ),
        text=TextConfig(
            width=int(get(text, "hidden_size", 512)),
            layers=int(get(text, "num_hidden_layers", 12)),
            heads=int(get(text, "num_attention_heads", 8)),
            mlp_width=int(get(text, "intermediate_size", 2048)),
            hidden_act=str(get(text, "hidden_act", "quick_gelu")),
            layer_norm_eps=float(get(text, "layer_norm_eps", 1e-5)),
            vocab_size=int(get(text, "vocab_size", 49408)),
            context_length=int(get(text, "max_position_embeddings", 77)),
            pooling="argmax" if eos == 2 else "first_eos",
            eos_token_id=eos,
        ),
        projection_dim=int(get(config, "projection_dim", 512)),
    )
    validate_config(cfg)
    return cfg


__all__ = [
    "ATTENTION_KINDS", "ACTIVATIONS", "PRESETS", "ClipConfig", "VisionConfig", "TextConfig", "ImageEncoder",
    "TextEncoder", "build_encoders", "config_from_hf", "image_state_from_hf", "text_state_from_hf",
    "load_state", "preset", "random_init", "validate_config",
]
