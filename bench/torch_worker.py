#!/usr/bin/env python3
"""PyTorch side of the benchmark (bench/run.js spawns it): the same TorchScript files in Python.

A long-lived worker so that the harness can interleave it with the Node.js implementations: it reads
one JSON request per line on stdin and answers one JSON line on stdout. Timings are taken here, around
each call, so the pipe costs nothing to the figures.

Requests:
  {"op": "load", "model": DIR, "hf": HF_DIR, "threads": N, "device": "cpu"|"cuda"|"cuda:N"}
  {"op": "bench", "encoder": "image"|"text", "mode": "model"|"e2e", "dtype": "float32"|"bfloat16"|"float16",
   "batch": B, "input": INPUT, "minSeconds": S, "minCalls": K, "warmup": bool}
     INPUT: image/model: {"pixels": FILE (raw float32 [M,3,S,S]), "count": M}
            image/e2e:   {"files": [image files]}
            text/model:  {"ids": [[ids...], ...]}            (unpadded; padded here to the longest of a batch)
            text/e2e:    {"texts": [strings]}
     -> {"times": [seconds per call]}
  {"op": "embed", ... as bench without timing} -> {"embeddings": [[floats]]}
  {"op": "quit"}

The end-to-end mode is what a Python user would write: Pillow decoding plus transformers'
CLIPImageProcessor, and transformers' CLIPTokenizer with padding to the longest text.

On CUDA the worker runs PyTorch eager, as a PyTorch user would: the exporter's own modules
(tools/clip_native_export/model.py, scaled_dot_product_attention) with the archives' weights, converted
to the dtype once (float16/bfloat16). Inputs start in host memory and outputs end there, as clip-native's
do, and each call waits for its result.
"""

import io
import json
import sys
import time

import numpy as np
import torch

state = {"device": torch.device("cpu")}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(req):
    threads = int(req.get("threads") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    manifest = json.load(open(f"{req['model']}/clip.json", encoding="utf-8"))
    state["pad"] = manifest["text"]["pad"]
    device = torch.device(req.get("device") or "cpu")
    state["device"] = device
    for name, key in (("image", "imageEncoder"), ("text", "textEncoder")):
        module = torch.jit.load(f"{req['model']}/{manifest['files'][key]}", map_location="cpu")
        module.eval()
        state[name] = module
    if device.type == "cuda":
        load_eager(manifest, device)
    state["hf"] = req["hf"]
    reply = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        reply["gpu"] = torch.cuda.get_device_name(device)
    return reply


def load_eager(manifest, device):
    """The exporter's eager encoders on the device, one copy per dtype, with the archives' weights."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from onnx_export import config_from_manifest  # the manifest's architecture block -> ClipConfig
    from clip_native_export.model import build_encoders

    image, text = build_encoders(config_from_manifest(manifest), "sdpa")
    for module, name in ((image, "image"), (text, "text")):
        module.load_state_dict({k: v.float() for k, v in state[name].state_dict().items()}, strict=True)
    state["eager"] = {}
    for dtype_name, dtype in DTYPES.items():
        state["eager"][dtype_name] = {
            "image": copy_to(image, device, dtype),
            "text": copy_to(text, device, dtype),
        }


def copy_to(module, device, dtype):
    import copy

    return copy.deepcopy(module).to(device=device, dtype=dtype).eval()


def processors():
    if "processor" not in state:
        from transformers import CLIPTokenizer

        try:  # transformers 5 names the Pillow-based processor (no torchvision needed) explicitly
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor
        state["processor"] = CLIPImageProcessor.from_pretrained(state["hf"])
        state["tokenizer"] = CLIPTokenizer.from_pretrained(state["hf"])
    return state["processor"], state["tokenizer"]


def make_call(req):
    """A closure that runs one batch of the request and returns the [B, D] output."""
    batch = int(req["batch"])
    inp = req["input"]
    device = state["device"]
    if device.type == "cuda":
        module = state["eager"][req["dtype"]][req["encoder"]]
        dtype = DTYPES[req["dtype"]]

        def encoder(x):
            # Host in, host out, waiting for the result: what one clip-native call does.
            x = x.to(device, non_blocking=True)
            out = module(x.to(dtype) if x.is_floating_point() else x)
            return out.float().cpu()
    else:
        encoder = state[req["encoder"]]
    if req["encoder"] == "image" and req["mode"] == "model":
        count = int(inp["count"])
        pixels = torch.from_numpy(np.fromfile(inp["pixels"], dtype=np.float32).reshape(count, 3, 224, 224))
        x = pixels[:batch].contiguous() if batch <= count else pixels.repeat((batch + count - 1) // count, 1, 1, 1)[:batch]
        if device.type == "cuda":
            x = x.pin_memory()
        return lambda: encoder(x)
    if req["encoder"] == "image":
        from PIL import Image

        processor, _ = processors()
        blobs = [open(f, "rb").read() for f in inp["files"]]
        blobs = (blobs * ((batch + len(blobs) - 1) // len(blobs)))[:batch]

        def run():
            images = [Image.open(io.BytesIO(b)).convert("RGB") for b in blobs]
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
            return encoder(pixel_values)

        return run
    if req["mode"] == "model":
        rows = (inp["ids"] * ((batch + len(inp["ids"]) - 1) // len(inp["ids"])))[:batch]
        length = max(len(r) for r in rows)
        ids = torch.full((batch, length), state["pad"], dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return lambda: encoder(ids)
    _, tokenizer = processors()
    texts = (inp["texts"] * ((batch + len(inp["texts"]) - 1) // len(inp["texts"])))[:batch]

    def run_text():
        ids = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
        return encoder(ids)

    return run_text


def context(dtype):
    if state["device"].type == "cuda":  # the eager modules hold weights of the dtype itself
        return torch.autocast("cuda", enabled=False)
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def bench(req):
    call = make_call(req)
    min_seconds = float(req.get("minSeconds", 1.0))
    min_calls = int(req.get("minCalls", 1))
    times = []
    with torch.inference_mode(), context(req["dtype"]):
        if req.get("warmup"):
            call()
        start = time.perf_counter()
        while len(times) < min_calls or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return {"times": times}


def embed(req):
    call = make_call(req)
    with torch.inference_mode(), context(req["dtype"]):
        out = call().float()
    return {"embeddings": out.tolist()}


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            if req["op"] == "quit":
                break
            handler = {"load": load, "bench": bench, "embed": embed}[req["op"]]
            reply = handler(req)
        except Exception as err:  # reported to the harness, which fails the run with it
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
