#!/usr/bin/env python3
"""The inference optimizations tried for issue 8, measured side by side on the full-size ViT-B/32 in the
libtorch that clip-native is built against (the venv's torch); bench/optimizations.md records the results.

Each variant runs the same weights; variants are interleaved, and each figure is the best of several
calls. Besides wall time it reports the process CPU time per call, which stays meaningful when other
processes share the CPUs (run with --threads 1 for the least noise on a busy machine).

  stock              torch.jit.load of the archive, as Model::Load ran it before (aten::linear -> MKL sgemm)
  freeze             torch.jit.freeze
  freeze+ofi         torch.jit.optimize_for_inference
  sdpa               the exporter's --attention sdpa archive (same weights)
  llga               freeze + the oneDNN Graph (LLGA) fuser, profiled at this batch shape
  onednn             linears as mkldnn::_linear_pointwise on the plain weights
  onednn-packed      ... on weights packed once (mkldnn::_reorder_linear_weight)
  +swish             ... and QuickGELU fused as the swish post-op (weights scaled by 1.702, fc2 by 1/1.702)
  +add               ... and the residual adds fused (mkldnn::_linear_pointwise.binary), float32 only:
                     together what Model::Load now does to the TorchScript graph (native/core/model.cc)
  +add+sdpa          ... on the sdpa attention
  bf16-autocast      stock under CPU autocast (bfloat16), as Model::Load ran it before
  bf16-packed+swish  linears on bfloat16 weights packed once, input cast, QuickGELU fused (what Model::Load does)

    .venv/bin/python bench/candidates.py --encoder image --batch 16 --threads 1
    .venv/bin/python bench/candidates.py --encoder text --batch 8 --length 77 --variants stock,onednn-packed+swish+add
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from clip_native_export.model import Block, MatmulAttention, QuickGELU, SdpaAttention, build_encoders  # noqa: E402
from onnx_export import config_from_manifest  # noqa: E402

ALL = ("stock,freeze,freeze+ofi,sdpa,llga,onednn,onednn-packed,onednn-packed+swish,onednn-packed+swish+add,"
       "onednn-packed+swish+add+sdpa,bf16-autocast,bf16-packed+swish")


class OneDnnLinear(nn.Module):
    """mkldnn::_linear_pointwise on constant weights, optionally packed, scaled, in bfloat16, with a post-op."""

    def __init__(self, linear: nn.Linear, pack: bool, scale: float = 1.0, divide: float = 1.0,
                 attr: str = "none", dtype: torch.dtype = torch.float32):
        super().__init__()
        weight = (linear.weight.detach() * scale / divide).to(dtype).contiguous()
        self.bias = None if linear.bias is None else (linear.bias.detach() * scale).to(dtype).contiguous()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if pack else weight
        self.attr = attr
        self.dtype = dtype

    def forward(self, x: torch.Tensor, residual=None) -> torch.Tensor:
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise(x, residual, self.weight, self.bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], None)


def fused_block_forward(self: Block, x: torch.Tensor) -> torch.Tensor:
    """Block.forward with both residual adds inside the output linears."""
    attn = self.self_attn
    h = self.layer_norm1(x)
    batch, length, width = h.size(0), h.size(1), h.size(2)
    qkv = attn.qkv_proj(h).view(batch, length, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    if isinstance(attn, SdpaAttention):
        out = nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=attn.causal)
    else:
        scores = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)) * attn.scale
        if attn.causal:
            scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), qkv[2])
    x = attn.out_proj(out.transpose(1, 2).reshape(batch, length, width), residual=x)
    return self.fc2(self.act(self.fc1(self.layer_norm2(x))), residual=x)


def to_onednn(module: nn.Module, pack: bool, swish: bool, add: bool, dtype=torch.float32) -> nn.Module:
    for block in module.modules():
        if isinstance(block, Block) and swish and isinstance(block.act, QuickGELU):
            block.fc1 = OneDnnLinear(block.fc1, pack, scale=1.702, attr="swish", dtype=dtype)
            block.fc2 = OneDnnLinear(block.fc2, pack, divide=1.702, dtype=dtype)
            block.act = nn.Identity()
        if isinstance(block, Block) and add:
            block.forward = fused_block_forward.__get__(block)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, OneDnnLinear(child, pack, dtype=dtype))
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("bench/models/vit-b-32"))
    parser.add_argument("--encoder", choices=("image", "text"), default="image")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=77, help="text length in tokens")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=ALL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    manifest = json.loads((args.model / "clip.json").read_text(encoding="utf-8"))
    key = "imageEncoder" if args.encoder == "image" else "textEncoder"
    archive = str(args.model / manifest["files"][key])
    cfg = config_from_manifest(manifest)
    state = torch.jit.load(archive, map_location="cpu").state_dict()

    def eager(attention: str) -> nn.Module:
        image, text = build_encoders(cfg, attention)
        module = image if args.encoder == "image" else text
        module.load_state_dict(state)
        return module.eval()

    gen = torch.Generator().manual_seed(0)
    if args.encoder == "image":
        x = torch.randn(args.batch, 3, 224, 224, generator=gen)
    else:
        x = torch.randint(0, 49406, (args.batch, args.length), generator=gen)
        x[:, -1] = 49407

    variants = {}  # name -> (module, bfloat16 autocast, llga)
    for name in args.variants.split(","):
        if name in ("stock", "bf16-autocast"):
            variants[name] = (torch.jit.load(archive).eval(), name.startswith("bf16"), False)
        elif name == "freeze":
            variants[name] = (torch.jit.freeze(torch.jit.load(archive).eval()), False, False)
        elif name == "freeze+ofi":
            variants[name] = (torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.load(archive).eval())),
                              False, False)
        elif name == "sdpa":
            variants[name] = (torch.jit.script(eager("sdpa")), False, False)
        elif name == "llga":
            variants[name] = (torch.jit.freeze(torch.jit.load(archive).eval()), False, True)
        elif name.startswith("onednn"):
            parts = name.split("+")
            module = eager("sdpa" if "sdpa" in parts else "matmul")
            variants[name] = (to_onednn(module, pack=parts[0] == "onednn-packed", swish="swish" in parts,
                                        add="add" in parts), False, False)
        elif name == "bf16-packed+swish":
            variants[name] = (to_onednn(eager("matmul"), True, True, False, torch.bfloat16), True, False)
        else:
            raise SystemExit(f"unknown variant {name}")

    def call(name):
        module, bf16, llga = variants[name]
        torch.jit.enable_onednn_fusion(llga)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(x)

    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    outputs = {}
    with torch.inference_mode():
        for name in variants:
            for _ in range(3):  # the profiling executor's runs, then the optimized plan
                outputs[name] = call(name).float()
        for _ in range(args.rounds):
            for name in variants:
                w0, c0 = time.perf_counter(), time.process_time()
                call(name)
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
    torch.jit.enable_onednn_fusion(False)

    ref = outputs[next(iter(variants))]
    rows = []
    for name in variants:
        cos = torch.nn.functional.cosine_similarity(ref, outputs[name], dim=-1).min().item()
        rows.append({"variant": name, "bestWallMs": min(wall[name]) * 1e3, "medianWallMs": statistics.median(wall[name]) * 1e3,
                     "bestCpuMs": min(cpu[name]) * 1e3, "minCosine": cos})
    shape = f"batch {args.batch}" + ("" if args.encoder == "image" else f" x {args.length} tokens")
    print(f"{args.encoder} encoder, {shape}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"best of {args.rounds}")
    print("| variant | best wall ms | median wall ms | best CPU ms | items/s (best wall) | min cosine vs first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['bestWallMs']:.0f} | {r['medianWallMs']:.0f} | {r['bestCpuMs']:.0f} | "
              f"{args.batch / r['bestWallMs'] * 1e3:.1f} | {r['minCosine']:.6f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
