#!/usr/bin/env python3
"""Reference outputs for clip-native's parity tests.

All tensors travel as raw little-endian files: pixels float32 [N, 3, S, S] (.f32), token ids int64
[R, L] (.i64), features float32 [N, D] (.f32). Each command that writes features also writes
``reference.json`` describing the files (shape, dtype, source).

  inputs       --out DIR [--n N] [--rows R] [--len L] [--seed S] [--image-size S]
               deterministic test inputs: pixels.f32 (normal noise, CLIP-normalized range) and ids.i64
               (bos, random tokens, eos, padded with eos to L; rows have different real lengths)
  torchscript  --model DIR [--pixels F --n N] [--ids F --rows R --len L] --out OUT
               runs a model directory's image_encoder.pt / text_encoder.pt in this Python's torch
  hf-random    --out HF_DIR --seed N --layers K --vocab-dir VDIR [--legacy-eos]
               a random-init transformers CLIPModel with ViT-B/32 shapes and K layers per tower,
               saved with save_pretrained (safetensors) + vocab.json, merges.txt, preprocessor_config.json
  hf-features  --checkpoint HF_DIR [--pixels F --n N] [--ids F --rows R --len L] --out OUT
               transformers' get_image_features / get_text_features on the same inputs

torchscript needs only torch (and numpy); hf-random and hf-features need transformers.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

F32 = np.dtype("<f4")
I64 = np.dtype("<i8")
BOS, EOS = 49406, 49407

CLIP_PREPROCESSOR = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "CLIPProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


class UsageError(Exception):
    pass


def read_raw(path: Path, dtype: np.dtype, shape) -> torch.Tensor:
    data = np.fromfile(str(path), dtype=dtype)
    expected = int(np.prod(shape))
    if data.size != expected:
        raise UsageError(f"{path} holds {data.size} {dtype.name} values but {list(shape)} needs {expected}")
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=False).reshape(shape).copy())


def write_raw(path: Path, tensor: torch.Tensor, dtype: np.dtype) -> None:
    tensor.detach().cpu().numpy().astype(dtype).tofile(str(path))


def _inputs(args, image_size: int):
    pixels = ids = None
    if args.pixels is not None:
        if args.n is None:
            raise UsageError("--pixels needs --n")
        pixels = read_raw(args.pixels, F32, (args.n, 3, image_size, image_size))
    if args.ids is not None:
        if args.rows is None or args.len is None:
            raise UsageError("--ids needs --rows and --len")
        ids = read_raw(args.ids, I64, (args.rows, args.len))
    if pixels is None and ids is None:
        raise UsageError("nothing to do: pass --pixels and/or --ids")
    return pixels, ids


def _write_outputs(out: Path, image: Optional[torch.Tensor], text: Optional[torch.Tensor],
                   source: Dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info: Dict[str, object] = {"source": source, "byteOrder": "little"}
    for name, tensor in (("image", image), ("text", text)):
        if tensor is None:
            continue
        write_raw(out / f"{name}.f32", tensor, F32)
        info[name] = {"file": f"{name}.f32", "dtype": "float32", "shape": list(tensor.shape)}
    (out / "reference.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _features(output) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x an output object whose pooler_output holds it.
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "pooler_output", None) is not None:
        return output.pooler_output
    return output[0]


# --- commands ------------------------------------------------------------------------------------


def cmd_inputs(args) -> None:
    if not 1 <= args.len <= 77:
        raise UsageError(f"Expected 1 <= --len <= 77 but received {args.len}")
    gen = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.n, 3, args.image_size, args.image_size, generator=gen)
    ids = torch.full((args.rows, args.len), EOS, dtype=torch.int64)
    for row in range(args.rows):
        # Real lengths from 2 (bos, eos) up to len, so padded rows of every length occur.
        real = 2 + (row * 7) % max(1, args.len - 1) if args.len >= 2 else 1
        real = min(real, args.len)
        ids[row, 0] = BOS
        if real > 2:
            ids[row, 1:real - 1] = torch.randint(0, BOS, (real - 2,), generator=gen)
        ids[row, real - 1] = EOS
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_raw(out / "pixels.f32", pixels, F32)
    write_raw(out / "ids.i64", ids, I64)
    info = {"pixels": {"file": "pixels.f32", "dtype": "float32", "shape": list(pixels.shape)},
            "ids": {"file": "ids.i64", "dtype": "int64", "shape": list(ids.shape)},
            "seed": args.seed, "byteOrder": "little"}
    (out / "inputs.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def cmd_torchscript(args) -> None:
    manifest_path = args.model / "clip.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    files = manifest.get("files", {})
    image_size = int(manifest.get("image", {}).get("size", 224))
    pixels, ids = _inputs(args, image_size)
    image = text = None
    with torch.inference_mode():
        if pixels is not None:
            encoder = torch.jit.load(str(args.model / files.get("imageEncoder", "image_encoder.pt")), map_location="cpu")
            image = encoder(pixels)
        if ids is not None:
            encoder = torch.jit.load(str(args.model / files.get("textEncoder", "text_encoder.pt")), map_location="cpu")
            text = encoder(ids)
    _write_outputs(args.out, image, text, {"kind": "torchscript", "model": str(args.model),
                                           "torch": torch.__version__})


def cmd_hf_random(args) -> None:
    from transformers import CLIPConfig, CLIPModel

    text_config = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=args.layers,
                       max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")
    vision_config = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=args.layers, image_size=224, patch_size=32, hidden_act="quick_gelu")
    if args.legacy_eos:
        # openai/clip-vit-base-patch32's config.json: placeholder ids that make transformers pool at argmax.
        text_config.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    else:
        text_config.update(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1)
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=512)
    torch.manual_seed(args.seed)
    model = CLIPModel(config).eval()
    # transformers initializes norms to 1/0 and biases to 0, which would hide a swapped bias or a missing
    # norm in the exporter's weight mapping; perturb them (deterministically).
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * (0.1 if name.endswith("weight") else 0.02))
            elif name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(args.vocab_dir / name, args.out / name)
    (args.out / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=2) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (args.out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def cmd_hf_features(args) -> None:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(args.checkpoint), attn_implementation=args.attn_implementation)
    model = model.float().eval()
    pixels, ids = _inputs(args, int(model.config.vision_config.image_size))
    image = text = None
    with torch.inference_mode():
        if pixels is not None:
            image = _features(model.get_image_features(pixel_values=pixels))
        if ids is not None:
            # No attention_mask: CLIP's text tower is causal and pools at the first eos, so padding after it
            # (eos again) cannot change the pooled features, and the exported encoder takes no mask either.
            text = _features(model.get_text_features(input_ids=ids))
    _write_outputs(args.out, image, text, {"kind": "transformers", "checkpoint": str(args.checkpoint),
                                           "attnImplementation": args.attn_implementation})


# --- parsing -----------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python tools/reference.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_io(p):
        p.add_argument("--pixels", type=Path, help="float32 [N,3,S,S] little-endian file")
        p.add_argument("--n", type=int, help="images in --pixels")
        p.add_argument("--ids", type=Path, help="int64 [R,L] little-endian file")
        p.add_argument("--rows", type=int, help="rows in --ids")
        p.add_argument("--len", type=int, help="ids per row in --ids")
        p.add_argument("--out", type=Path, required=True, help="directory for image.f32, text.f32, reference.json")

    p = sub.add_parser("inputs", help="deterministic test inputs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--len", type=int, default=77)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.set_defaults(run=cmd_inputs)

    p = sub.add_parser("torchscript", help="run a model directory's TorchScript encoders")
    p.add_argument("--model", type=Path, required=True)
    add_io(p)
    p.set_defaults(run=cmd_torchscript)

    p = sub.add_parser("hf-random", help="random-init transformers CLIPModel checkpoint")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab-dir", type=Path, required=True)
    p.add_argument("--legacy-eos", action="store_true",
                   help="openai's config ids (eos_token_id 2): transformers then pools at argmax(input_ids)")
    p.set_defaults(run=cmd_hf_random)

    p = sub.add_parser("hf-features", help="transformers get_image_features / get_text_features")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--attn-implementation", choices=("eager", "sdpa"), default="eager")
    add_io(p)
    p.set_defaults(run=cmd_hf_features)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
        return 0
    except UsageError as err:
        print(f"reference.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
