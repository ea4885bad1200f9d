"""Command line of the exporter: argument parsing, checkpoint reading and the model-directory writer."""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from . import EXPORTER_ID, MANIFEST_FORMAT
from .model import (ATTENTION_KINDS, PRESETS, ClipConfig, build_encoders, config_from_hf, image_state_from_hf,
                    load_state, preset, random_init, text_state_from_hf)

IMAGE_FILE = "image_encoder.pt"
TEXT_FILE = "text_encoder.pt"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MANIFEST_FILE = "clip.json"
# OpenAI CLIP's trained temperature (exp of logit_scale, clamped at 100 in training): models without one use it.
DEFAULT_LOGIT_SCALE = 100.0

# CLIPImageProcessor defaults (openai/clip-vit-base-patch32's preprocessor_config.json).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
DEFAULT_BOS, DEFAULT_EOS, DEFAULT_PAD = 49406, 49407, 49407
# PIL resample codes as preprocessor_config.json writes them.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

VOCAB_DIR_ENV = "CLIP_NATIVE_VOCAB_DIR"
PROG_ENV = "CLIP_NATIVE_EXPORT_PROG"


class UsageError(Exception):
    """A bad argument or unusable input: reported in one line, exit status 2."""


# --- reading Hugging Face checkpoints ------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None
    if load_file is not None:
        return load_file(str(path))
    # The format is an 8-byte little-endian header length, a JSON header, then raw little-endian data;
    # reading it directly keeps torch the only run-time dependency.
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if len(data) < 8:
        raise UsageError(f"{path} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except ValueError:
        raise UsageError(f"{path} is not a safetensors file (bad header)")
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise UsageError(f"{path}: unsupported dtype {info['dtype']} for {name}")
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start) if count else \
            torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors


def _read_torch_bin(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_checkpoint_weights(directory: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """All tensors of a Hugging Face checkpoint directory, single-file or sharded, safetensors first."""
    candidates = [
        ("model.safetensors", _read_safetensors, False),
        ("model.safetensors.index.json", _read_safetensors, True),
        ("pytorch_model.bin", _read_torch_bin, False),
        ("pytorch_model.bin.index.json", _read_torch_bin, True),
    ]
    for name, reader, sharded in candidates:
        path = directory / name
        if not path.is_file():
            continue
        if not sharded:
            return reader(path), name
        index = json.loads(path.read_text(encoding="utf-8"))
        weights: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            weights.update(reader(directory / shard))
        return weights, name
    raise UsageError(f"Expected model.safetensors or pytorch_model.bin in {directory} but found neither")


def _read_json(path: Path, what: str) -> Dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"Could not read {what} {path}: {err}")
    if not isinstance(value, dict):
        raise UsageError(f"Expected a JSON object in {what} {path}")
    return value


# --- manifest pieces ---------------------------------------------------------------------------


def image_block(preprocessor: Optional[Dict[str, object]], image_size: int) -> Dict[str, object]:
    """The manifest's image block from a preprocessor_config.json, CLIP's defaults where absent."""
    block = {"size": image_size, "resizeShortestEdge": image_size, "interpolation": "bicubic",
             "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}
    if not preprocessor:
        return block
    crop = preprocessor.get("crop_size")
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("width"))
    if isinstance(crop, int):
        block["size"] = crop
    size = preprocessor.get("size")
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(size, int):
        block["resizeShortestEdge"] = size
    resample = preprocessor.get("resample")
    if isinstance(resample, int) and resample in PIL_RESAMPLE:
        block["interpolation"] = PIL_RESAMPLE[resample]
    for key, out in (("image_mean", "mean"), ("image_std", "std")):
        value = preprocessor.get(key)
        if isinstance(value, list) and len(value) == 3:
            block[out] = [float(v) for v in value]
    if block["size"] != image_size:
        raise UsageError(f"preprocessor_config.json crops to {block['size']} but the vision model "
                         f"takes {image_size}x{image_size} images")
    return block


def _token_content(value: object) -> Optional[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens(directories: List[Path], vocab: Dict[str, int],
                   config_text: Optional[Dict[str, object]] = None) -> Dict[str, int]:
    """bos/eos/pad ids: the tokenizer files' tokens looked up in vocab.json (later directories win),
    else config.json's text_config (unless it holds openai's legacy 0/1/2 placeholders), else
    49406/49407/49407."""
    ids = {"bos": DEFAULT_BOS, "eos": DEFAULT_EOS, "pad": DEFAULT_PAD}
    if config_text and config_text.get("eos_token_id") not in (None, 2):
        # Transformers' CLIPTextConfig default pad_token_id is 1 ('!'), which its tokenizer never
        # pads with, so config.json only ever supplies bos/eos.
        for key in ("bos", "eos"):
            value = config_text.get(f"{key}_token_id")
            if isinstance(value, int) and 0 <= value < len(vocab):
                ids[key] = value
    for directory in directories:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = directory / name
            if not path.is_file():
                continue
            data = _read_json(path, "tokenizer file")
            for key in ("bos", "eos", "pad"):
                token = _token_content(data.get(f"{key}_token"))
                if token is not None and token in vocab:
                    ids[key] = vocab[token]
    return ids


def read_vocab(vocab_path: Path, merges_path: Path, vocab_size: int) -> Dict[str, int]:
    if not vocab_path.is_file() or not merges_path.is_file():
        raise UsageError(f"Expected {VOCAB_FILE} and {MERGES_FILE} in {vocab_path.parent} (or pass --vocab-dir)")
    vocab = _read_json(vocab_path, "vocabulary")
    if not all(isinstance(v, int) for v in vocab.values()):
        raise UsageError(f"Expected integer ids in {vocab_path}")
    if vocab and max(vocab.values()) >= vocab_size:
        raise UsageError(f"{vocab_path} has ids up to {max(vocab.values())} but the model's vocabulary "
                         f"holds {vocab_size} tokens")
    return vocab


# --- writing ------------------------------------------------------------------------------------


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"Expected a directory path for --out but {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"--out {out} exists and is not empty (pass --force to replace it)")


def _save_script(module: torch.nn.Module, path: Path) -> torch.jit.ScriptModule:
    for p in module.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(module.eval())
    scripted.save(str(path))
    return scripted


def _smoke_test(directory: Path, image: torch.nn.Module, text: torch.nn.Module, cfg: ClipConfig,
                ids: Dict[str, int]) -> None:
    """Reloads both archives and checks them against the eager modules on a small input."""
    gen = torch.Generator().manual_seed(1234)
    size = cfg.vision.image_size
    pixels = torch.randn(1, cfg.vision.num_channels, size, size, generator=gen)
    length = min(7, cfg.text.context_length)
    tokens = torch.randint(0, min(ids["bos"], cfg.text.vocab_size), (2, length), generator=gen)
    tokens[:, 0] = ids["bos"]
    tokens[0, length - 1] = ids["eos"]
    tokens[1, 3:] = ids["eos"]
    # The profiling executor's first-run optimization passes would double the time of this check.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for name, eager, inputs in ((IMAGE_FILE, image, pixels), (TEXT_FILE, text, tokens)):
            loaded = torch.jit.load(str(directory / name), map_location="cpu")
            got, want = loaded(inputs), eager(inputs)
            expected_shape = (inputs.shape[0], cfg.projection_dim)
            if tuple(got.shape) != expected_shape or got.dtype != torch.float32:
                raise RuntimeError(f"{name} returned {got.dtype}{list(got.shape)}, expected float32{list(expected_shape)}")
            if not torch.isfinite(got).all() or (got - want).abs().max().item() > 1e-4:
                raise RuntimeError(f"{name} does not reproduce the eager model after reloading")
            if name == TEXT_FILE and (loaded.forward_packed(inputs) - want).abs().max().item() > 1e-4:
                raise RuntimeError(f"{name}: forward_packed does not reproduce forward")


def write_model_dir(out: Path, image: torch.nn.Module, text: torch.nn.Module, cfg: ClipConfig,
                    manifest: Dict[str, object], vocab_dir: Path, force: bool) -> None:
    """Writes everything into a sibling temp directory, then renames it into place, so a reader never
    sees a half-written model directory."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=str(out.parent)))
    try:
        _save_script(image, tmp / IMAGE_FILE)
        _save_script(text, tmp / TEXT_FILE)
        shutil.copyfile(vocab_dir / VOCAB_FILE, tmp / VOCAB_FILE)
        shutil.copyfile(vocab_dir / MERGES_FILE, tmp / MERGES_FILE)
        _smoke_test(tmp, image, text, cfg, manifest["text"])
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from other users
        _check_out(out, force)  # again: something may have appeared while we worked
        if out.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=str(out.parent)))
            os.rename(out, old / "previous")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checkpoint_logit_scale(weights: Dict[str, torch.Tensor]) -> float:
    """CLIP's learned temperature as the similarity scores use it: exp of the stored ``logit_scale``
    (100 for openai/clip-vit-base-patch32); the default when the checkpoint has none."""
    stored = weights.get("logit_scale")
    if stored is None or stored.numel() != 1:
        return DEFAULT_LOGIT_SCALE
    value = math.exp(float(stored.reshape(()).item()))
    return value if math.isfinite(value) and value > 0 else DEFAULT_LOGIT_SCALE


def base_manifest(name: str, cfg: ClipConfig, image: Dict[str, object], ids: Dict[str, int],
                  attention: str, source: Dict[str, object],
                  logit_scale: float = DEFAULT_LOGIT_SCALE) -> Dict[str, object]:
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "embedDim": cfg.projection_dim,
        "image": image,
        "text": {"contextLength": cfg.text.context_length, "vocabSize": cfg.text.vocab_size, **ids},
        "files": {"imageEncoder": IMAGE_FILE, "textEncoder": TEXT_FILE, "vocab": VOCAB_FILE,
                  "merges": MERGES_FILE},
        "architecture": cfg.to_manifest(),
        "attention": attention,
        "logitScale": logit_scale,
        "exportedBy": EXPORTER_ID,
        "torchVersion": torch.__version__.split("+")[0],
        "source": source,
    }


# --- the two export modes ------------------------------------------------------------------------


def export_random(preset_name: str, seed: int, out: Path, vocab_dir: Path, attention: str,
                  name: Optional[str], force: bool) -> None:
    cfg = preset(preset_name)
    vocab = read_vocab(vocab_dir / VOCAB_FILE, vocab_dir / MERGES_FILE, cfg.text.vocab_size)
    ids = special_tokens([vocab_dir], vocab)
    cfg.text.eos_token_id = ids["eos"]
    image, text = build_encoders(cfg, attention)
    generator = torch.Generator().manual_seed(seed)
    random_init(image, generator)
    random_init(text, generator)
    manifest = base_manifest(name or f"clip-native/random-{preset_name}-seed{seed}", cfg,
                             image_block(None, cfg.vision.image_size), ids, attention,
                             {"kind": "random", "config": preset_name, "seed": seed})
    write_model_dir(out, image, text, cfg, manifest, vocab_dir, force)


def export_checkpoint(checkpoint: Path, out: Path, vocab_dir: Optional[Path], attention: str,
                      name: Optional[str], force: bool) -> None:
    if not checkpoint.is_dir():
        raise UsageError(f"Expected a Hugging Face checkpoint directory for --checkpoint but received {checkpoint}")
    hf_config = _read_json(checkpoint / "config.json", "config")
    try:
        cfg = config_from_hf(hf_config)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{checkpoint / 'config.json'}: {err}")
    vocab_dir = vocab_dir or checkpoint
    vocab = read_vocab(vocab_dir / VOCAB_FILE, vocab_dir / MERGES_FILE, cfg.text.vocab_size)
    config_text = dict(hf_config.get("text_config") or {})
    config_text.update(hf_config.get("text_config_dict") or {})
    # The checkpoint's own tokenizer files describe its special tokens best, so they come last.
    ids = special_tokens([vocab_dir, checkpoint] if vocab_dir != checkpoint else [checkpoint], vocab, config_text)
    preprocessor_path = checkpoint / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_path, "preprocessor config") if preprocessor_path.is_file() else None
    image_info = image_block(preprocessor, cfg.vision.image_size)

    weights, weights_file = read_checkpoint_weights(checkpoint)
    image, text = build_encoders(cfg, attention)
    try:
        load_state(image, image_state_from_hf(weights, cfg), "image encoder")
        load_state(text, text_state_from_hf(weights, cfg), "text encoder")
    except KeyError as err:
        raise UsageError(f"{checkpoint / weights_file} is not a CLIPModel checkpoint: missing tensor {err}")
    except ValueError as err:
        raise UsageError(f"{checkpoint / weights_file}: {err}")
    logit_scale = checkpoint_logit_scale(weights)
    del weights

    model_name = name or str(hf_config.get("_name_or_path") or "") or checkpoint.resolve().name
    manifest = base_manifest(model_name, cfg, image_info, ids, attention,
                             {"kind": "huggingface", "checkpoint": checkpoint.resolve().name,
                              "weights": weights_file}, logit_scale)
    write_model_dir(out, image, text, cfg, manifest, vocab_dir, force)


# --- argument parsing ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every clip-native command
        raise UsageError(message)


def default_vocab_dir() -> Optional[Path]:
    env = os.environ.get(VOCAB_DIR_ENV)
    if env:
        return Path(env)
    sibling = Path(__file__).resolve().parents[3] / "shared" / "clip-reference" / "tokenizer"
    return sibling if (sibling / VOCAB_FILE).is_file() else None


def build_parser() -> argparse.ArgumentParser:
    prog = os.environ.get(PROG_ENV) or "export.py"
    parser = _Parser(
        prog=prog,
        description="Write a clip-native model directory (clip.json, image_encoder.pt, text_encoder.pt,\n"
                    "vocab.json, merges.txt) from a Hugging Face CLIP checkpoint or with random weights.",
        epilog=f"examples:\n  python tools/export.py --checkpoint ./clip-vit-base-patch32 --out ./models/clip-b32\n"
               f"  python tools/export.py --random --config tiny --seed 1 --out ./models/tiny --vocab-dir ./tokenizer\n\n"
               f"--vocab-dir defaults to ${VOCAB_DIR_ENV}, else ../shared/clip-reference/tokenizer next to "
               "the repository when present.\nExit status: 0 done, 2 bad arguments or unusable input, "
               "1 export failure.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Required-ness is checked in main(), so that an unknown flag is reported as such first.
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="HF_DIR", type=Path,
                        help="Hugging Face CLIP checkpoint directory (config.json, model.safetensors or "
                             "pytorch_model.bin, vocab.json, merges.txt, optional preprocessor_config.json)")
    source.add_argument("--random", action="store_true", help="random CLIP-like weights (tests, benchmarks)")
    parser.add_argument("--config", choices=PRESETS, help="shape of the --random model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random weights (default 0)")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="model directory to write (must be absent or empty unless --force)")
    parser.add_argument("--vocab-dir", metavar="VDIR", type=Path,
                        help="directory with vocab.json and merges.txt (default: the checkpoint's)")
    parser.add_argument("--name", help="model name for clip.json (default: config's _name_or_path, "
                                       "else the checkpoint directory's name)")
    parser.add_argument("--attention", choices=ATTENTION_KINDS, default="matmul",
                        help="matmul (default; loads in libtorch >= 1.13) or sdpa "
                             "(scaled_dot_product_attention; needs libtorch >= 2.0)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    return parser


def _size_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def main(argv: Optional[List[str]] = None) -> int:
    prog = os.environ.get(PROG_ENV) or "export.py"
    try:
        args, unknown = build_parser().parse_known_args(argv)
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
        if not args.random and args.checkpoint is None:
            raise UsageError("pass --checkpoint HF_DIR or --random --config NAME (see --help)")
        if args.out is None:
            raise UsageError("--out DIR is required")
        if args.random:
            if args.config is None:
                raise UsageError("--random needs --config (vit-b-32 or tiny)")
            if not 0 <= args.seed < 2 ** 63:
                raise UsageError(f"Expected a non-negative 64-bit integer for --seed but received {args.seed}")
            vocab_dir = args.vocab_dir or default_vocab_dir()
            if vocab_dir is None:
                raise UsageError(f"--random needs --vocab-dir (or ${VOCAB_DIR_ENV}) with vocab.json and merges.txt")
        else:
            if args.config is not None:
                raise UsageError("--config applies only to --random (a checkpoint's shape comes from its config.json)")
            vocab_dir = args.vocab_dir
        _check_out(args.out, args.force)

        started = time.monotonic()
        with torch.no_grad():
            if args.random:
                export_random(args.config, args.seed, args.out, vocab_dir, args.attention, args.name, args.force)
            else:
                export_checkpoint(args.checkpoint, args.out, vocab_dir, args.attention, args.name, args.force)
        if not args.quiet:
            print(f"wrote {args.out} ({IMAGE_FILE} {_size_mb(args.out / IMAGE_FILE)}, {TEXT_FILE} "
                  f"{_size_mb(args.out / TEXT_FILE)}) in {time.monotonic() - started:.1f} s")
        return 0
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; CLIP_NATIVE_DEBUG=1 shows the traceback
        if os.environ.get("CLIP_NATIVE_DEBUG"):
            raise
        print(f"{prog}: error: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
        return 1
