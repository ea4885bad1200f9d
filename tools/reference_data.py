#!/usr/bin/env python3
"""Reference data made with the Python reference implementations, for the parity tests.

  images --out DIR
      draws test images with Pillow in every format and mode the decoder handles (JPEG baseline,
      progressive, grayscale and Adobe CMYK; PNG RGB, RGBA, L, LA, P with tRNS, 4-bit P, 1-bit, 16-bit, Adam7;
      WebP lossy, lossless and with alpha; an animated GIF; BMP 24 and 32 bit) and writes, for each,
      <name>.pixel_values.f32: transformers' CLIP image processor (the Pillow one) with the ViT-B/32
      configuration, float32 [3, 224, 224]; plus manifest.json.
  tokens --vocab-dir DIR --out FILE
      Hugging Face's CLIP tokenizer (the Rust-backed one) loaded from DIR/vocab.json and merges.txt,
      run with padding="max_length", max_length=77, truncation=True over a fixed set of texts;
      JSON Lines of {"text", "ids"}.

Needs transformers, tokenizers, pillow and numpy (tools/requirements.txt).
"""

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

PREPROCESSOR = dict(
    do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True,
    crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
    do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True,
)


def pattern(width, height, seed):
    """An RGB uint8 array with gradients, stripes and noise, so resampling errors show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / max(width - 1, 1)
    g = 127.5 + 127.5 * np.sin(x / 7.0 + y / 11.0)
    b = np.where(((x // 9) + (y // 9)) % 2 == 0, 230, 25)
    rgb = np.stack([r, g, b], -1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def adam7_png(rgb):
    """An interlaced (Adam7) 8-bit RGB PNG of `rgb`, which Pillow reads but does not write: each pass's rows
    filtered None, Sub and Up in turn."""
    import struct
    import zlib

    height, width, _ = rgb.shape
    raw = bytearray()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    for x0, y0, dx, dy in passes:
        pixels = rgb[y0::dy, x0::dx]
        if pixels.size == 0:
            continue
        rows = pixels.reshape(pixels.shape[0], -1).astype(np.int16)
        above = np.zeros(rows.shape[1], np.int16)
        for i, row in enumerate(rows):
            kind = i % 3
            predicted = np.concatenate([np.zeros(3, np.int16), row[:-3]]) if kind == 1 else above if kind == 2 else 0
            raw.append(kind)
            raw += ((row - predicted) & 255).astype(np.uint8).tobytes()
            above = row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    idat = chunk(b"IDAT", zlib.compress(bytes(raw)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def make_images():
    from PIL import Image

    images = {}

    def save(name, image, fmt, **kwargs):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        images[name] = buffer.getvalue()

    rgb = Image.fromarray(pattern(320, 240, 1))
    save("baseline_320x240.jpg", rgb, "JPEG", quality=90)
    save("progressive_400x300.jpg", Image.fromarray(pattern(400, 300, 2)), "JPEG", quality=85, progressive=True)
    save("gray_300x200.jpg", Image.fromarray(pattern(300, 200, 3)).convert("L"), "JPEG", quality=90)
    save("cmyk_260x200.jpg", Image.fromarray(pattern(260, 200, 4)).convert("CMYK"), "JPEG", quality=92)
    save("subsampled_333x251.jpg", Image.fromarray(pattern(333, 251, 5)), "JPEG", quality=75, subsampling=2)
    save("rgb_451x300.png", Image.fromarray(pattern(451, 300, 6)), "PNG")
    rgba = Image.fromarray(pattern(257, 311, 7)).convert("RGBA")
    alpha = Image.fromarray((pattern(257, 311, 8)[:, :, 0] // 2).astype(np.uint8))
    rgba.putalpha(alpha)
    save("rgba_257x311.png", rgba, "PNG")
    save("gray_L_200x224.png", Image.fromarray(pattern(200, 224, 9)).convert("L"), "PNG")
    save("gray_alpha_LA_300x200.png", Image.fromarray(pattern(300, 200, 10)).convert("LA"), "PNG")
    palette = Image.fromarray(pattern(240, 180, 11)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("palette_P_240x180.png", palette, "PNG", transparency=3)
    palette4 = Image.fromarray(pattern(230, 170, 21)).convert("P", palette=Image.Palette.ADAPTIVE, colors=12)
    save("palette4_P_230x170.png", palette4, "PNG")  # 12 colours: Pillow writes 4 bits per pixel
    save("bilevel_1_250x190.png", Image.fromarray(pattern(250, 190, 22)).convert("1"), "PNG")
    images["adam7_203x151.png"] = adam7_png(pattern(203, 151, 23))
    ramp = (np.arange(256 * 300, dtype=np.uint32).reshape(300, 256) * 37 % 65536).astype(np.uint16)
    ramp[:, 128:] = ramp[:, 128:] % 256
    save("gray16_256x300.png", Image.fromarray(ramp), "PNG")
    save("lossy_300x200.webp", Image.fromarray(pattern(300, 200, 12)), "WEBP", quality=80)
    save("lossless_200x300.webp", Image.fromarray(pattern(200, 300, 13)), "WEBP", lossless=True)
    webp_alpha = Image.fromarray(pattern(230, 230, 14)).convert("RGBA")
    webp_alpha.putalpha(128)
    save("alpha_230x230.webp", webp_alpha, "WEBP", lossless=True)
    frames = [Image.fromarray(pattern(160, 120, 20 + i)).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    images["animated_160x120.gif"] = buffer.getvalue()
    save("bmp24_299x233.bmp", Image.fromarray(pattern(299, 233, 15)), "BMP")
    bmp32 = Image.fromarray(pattern(180, 240, 16)).convert("RGBA")
    save("bmp32_180x240.bmp", bmp32, "BMP")
    save("wide_1000x20.png", Image.fromarray(pattern(1000, 20, 17)), "PNG")
    save("tiny_5x3.png", Image.fromarray(pattern(5, 3, 18)), "PNG")
    save("exact_224x224.png", Image.fromarray(pattern(224, 224, 19)), "PNG")
    return images


def cmd_images(args):
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(**PREPROCESSOR)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, data in make_images().items():
        (out / name).write_bytes(data)
        image = Image.open(io.BytesIO(data))
        mode, size = image.mode, image.size
        pixels = processor(images=image, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]
        stem = name.rsplit(".", 1)[0]
        np.asarray(pixels, dtype="<f4").tofile(out / f"{stem}.pixel_values.f32")
        manifest.append({"file": name, "mode": mode, "size": list(size), "reference": f"{stem}.pixel_values.f32"})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


TEXTS = [
    "a photo of a cat", "A Photo Of A CAT!!", "two dogs playing in the snow, 2019", "it's a dog's life",
    "they're here; we've seen it. I'm sure you'll like it, he'd say", "Über straße café naïve façade",
    "東京タワーの写真", "привет мир", "emoji 🐱🐶🚀 party", "   leading and   trailing   ", "", " \t\n ",
    "<|startoftext|>hello<|endoftext|>", "wow!<|endoftext|>", "numbers 1234567890 and 3.14159",
    "tabs\tand\nnewlines\r\nmixed", "&amp; &lt;b&gt; html", "a" * 300, "word " * 80, "x " * 74, "x " * 75,
    "x " * 76, "ΟΔΟΣ σίσυφος", "İstanbul", "control\u0001\u0007chars", "zero\u200bwidth", "ﬁ ligature",
]


def cmd_tokens(args):
    from transformers import CLIPTokenizer  # the Rust-backed class in transformers 5

    tokenizer = CLIPTokenizer.from_pretrained(args.vocab_dir)
    with open(args.out, "w", encoding="utf-8") as f:
        for text in TEXTS:
            ids = tokenizer(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="reference_data.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("images", help="test images drawn with Pillow and their reference pixel values")
    p.add_argument("--out", required=True)
    p = sub.add_parser("tokens", help="Hugging Face tokenizer ids for a fixed set of texts")
    p.add_argument("--vocab-dir", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    {"images": cmd_images, "tokens": cmd_tokens}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
