#!/usr/bin/env python3
"""Exports the weights of a clip-native model directory to ONNX, laid out as a transformers.js model.

The benchmark (bench/run.js) compares clip-native with onnxruntime-node on the *same* weights, so this
reads the TorchScript archives of a model directory (``clip.json`` must carry the ``architecture`` block
the exporter writes), rebuilds the eager encoders of tools/clip_native_export/model.py with those
weights, and writes, under ``--out``:

    config.json, preprocessor_config.json         (Hugging Face CLIP configs, as transformers.js reads them)
    tokenizer.json, tokenizer_config.json, ...     (CLIPTokenizerFast from the directory's vocab/merges)
    onnx/vision_model.onnx   pixel_values float32[N,3,S,S] -> image_embeds float32[N,D]
    onnx/text_model.onnx     input_ids int64[N,L]          -> text_embeds  float32[N,D]

which is what ``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection.from_pretrained`` of
transformers.js load (``env.localModelPath`` pointing at the parent, remote models off).

    .venv/bin/python tools/onnx_export.py --model bench/models/vit-b-32 --out bench/models/vit-b-32-onnx

Needs torch and onnx; transformers for the tokenizer files.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_native_export.model import ClipConfig, TextConfig, VisionConfig, build_encoders  # noqa: E402

OPSET = 17


def config_from_manifest(manifest: dict) -> ClipConfig:
    arch = manifest.get("architecture")
    if not isinstance(arch, dict):
        raise SystemExit("clip.json has no architecture block: re-export the model with tools/export.py")
    v, t = arch["vision"], arch["text"]
    return ClipConfig(
        vision=VisionConfig(width=v["width"], layers=v["layers"], heads=v["heads"], mlp_width=v["mlpWidth"],
                            hidden_act=v["hiddenAct"], layer_norm_eps=v["layerNormEps"],
                            image_size=v["imageSize"], patch_size=v["patchSize"], num_channels=v["numChannels"]),
        text=TextConfig(width=t["width"], layers=t["layers"], heads=t["heads"], mlp_width=t["mlpWidth"],
                        hidden_act=t["hiddenAct"], layer_norm_eps=t["layerNormEps"], vocab_size=t["vocabSize"],
                        context_length=t["contextLength"], pooling=t["pooling"], eos_token_id=t["eosTokenId"]),
        projection_dim=arch["projectionDim"],
    )


def hf_config(cfg: ClipConfig, manifest: dict) -> dict:
    text = manifest["text"]
    return {
        "model_type": "clip",
        "architectures": ["CLIPModel"],
        "projection_dim": cfg.projection_dim,
        "text_config": {
            "model_type": "clip_text_model", "hidden_size": cfg.text.width,
            "num_hidden_layers": cfg.text.layers, "num_attention_heads": cfg.text.heads,
            "intermediate_size": cfg.text.mlp_width, "hidden_act": cfg.text.hidden_act,
            "layer_norm_eps": cfg.text.layer_norm_eps, "vocab_size": cfg.text.vocab_size,
            "max_position_embeddings": cfg.text.context_length, "projection_dim": cfg.projection_dim,
            "bos_token_id": text["bos"], "eos_token_id": text["eos"], "pad_token_id": text["pad"],
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": cfg.vision.width,
            "num_hidden_layers": cfg.vision.layers, "num_attention_heads": cfg.vision.heads,
            "intermediate_size": cfg.vision.mlp_width, "hidden_act": cfg.vision.hidden_act,
            "layer_norm_eps": cfg.vision.layer_norm_eps, "image_size": cfg.vision.image_size,
            "patch_size": cfg.vision.patch_size, "num_channels": cfg.vision.num_channels,
            "projection_dim": cfg.projection_dim,
        },
        "transformers.js_config": {"dtype": "fp32"},
    }


def preprocessor_config(manifest: dict) -> dict:
    image = manifest["image"]
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
    return {
        "image_processor_type": "CLIPImageProcessor",
        "feature_extractor_type": "CLIPFeatureExtractor",
        "do_resize": True, "size": {"shortest_edge": image["resizeShortestEdge"]},
        "resample": resample.get(image["interpolation"], 3),
        "do_center_crop": True, "crop_size": {"height": image["size"], "width": image["size"]},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": image["mean"], "image_std": image["std"],
        "do_convert_rgb": True,
    }


def write_tokenizer(model_dir: Path, manifest: dict, out: Path) -> None:
    from transformers import CLIPTokenizer

    # from_pretrained reads vocab.json + merges.txt under these exact names (transformers 4 and 5 alike).
    files = manifest["files"]
    with tempfile.TemporaryDirectory() as vocab_dir:
        shutil.copyfile(model_dir / files["vocab"], Path(vocab_dir) / "vocab.json")
        shutil.copyfile(model_dir / files["merges"], Path(vocab_dir) / "merges.txt")
        tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=manifest["text"]["contextLength"])
    ids = tokenizer("a photo of a cat").input_ids
    if ids[0] != manifest["text"]["bos"] or ids[-1] != manifest["text"]["eos"]:
        raise SystemExit(f"the tokenizer made from {model_dir} does not frame text with bos/eos: {ids}")
    tokenizer.save_pretrained(str(out))


def export(model_dir: Path, out: Path, opset: int) -> None:
    manifest = json.loads((model_dir / "clip.json").read_text(encoding="utf-8"))
    cfg = config_from_manifest(manifest)
    image, text = build_encoders(cfg, "matmul")
    files = manifest["files"]
    for module, name in ((image, files["imageEncoder"]), (text, files["textEncoder"])):
        scripted = torch.jit.load(str(model_dir / name), map_location="cpu")
        module.load_state_dict({k: v.float() for k, v in scripted.state_dict().items()}, strict=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        (tmp / "onnx").mkdir()
        size = cfg.vision.image_size
        with torch.no_grad():
            pixels = torch.randn(2, cfg.vision.num_channels, size, size)
            ids = torch.randint(0, manifest["text"]["bos"], (2, 7))
            ids[:, -1] = manifest["text"]["eos"]
            torch.onnx.export(image, (pixels,), str(tmp / "onnx" / "vision_model.onnx"), dynamo=False,
                              input_names=["pixel_values"], output_names=["image_embeds"],
                              dynamic_axes={"pixel_values": {0: "batch_size"}, "image_embeds": {0: "batch_size"}},
                              opset_version=opset, do_constant_folding=True)
            torch.onnx.export(text, (ids,), str(tmp / "onnx" / "text_model.onnx"), dynamo=False,
                              input_names=["input_ids"], output_names=["text_embeds"],
                              dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                                            "text_embeds": {0: "batch_size"}},
                              opset_version=opset, do_constant_folding=True)
        import onnx

        for name in ("vision_model.onnx", "text_model.onnx"):
            onnx.checker.check_model(str(tmp / "onnx" / name))
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, manifest), indent=2) + "\n", encoding="utf-8")
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(preprocessor_config(manifest), indent=2) + "\n", encoding="utf-8")
        write_tokenizer(model_dir, manifest, tmp)
        (tmp / "source.json").write_text(json.dumps({"model": str(model_dir), "name": manifest.get("name"),
                                                     "opset": opset, "torch": torch.__version__}, indent=2) + "\n",
                                         encoding="utf-8")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="clip-native model directory (clip.json)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced)")
    parser.add_argument("--opset", type=int, default=OPSET)
    args = parser.parse_args(argv)
    if not (args.model / "clip.json").is_file():
        parser.error(f"Expected a model directory with clip.json for --model but received {args.model}")
    export(args.model, args.out, args.opset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
