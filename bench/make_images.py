#!/usr/bin/env python3
"""Writes the benchmark's photo-like test images with Pillow: JPEG and PNG alternating, in the sizes of
common photo data sets (COCO-like 640x480 mostly), smooth shapes plus sensor-like noise so that the
files compress like photos rather than like flat test patterns. Deterministic for a seed.

    .venv/bin/python bench/make_images.py --out bench/models/images --count 32
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(640, 480), (640, 427), (480, 640), (500, 375), (800, 600), (640, 480), (612, 612), (427, 640)]


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(40, 200, 3)
    img += base
    for _ in range(6):  # soft gradients and blobs
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.5) * max(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-90, 90, 3)
    fx, fy = rng.uniform(0.005, 0.05, 2)
    img += 20 * np.sin(x * fx + y * fy)[..., None]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(args.count):
        width, height = SIZES[i % len(SIZES)]
        image = photo(rng, width, height)
        if i % 2 == 0:
            image.save(args.out / f"{i:03d}.jpg", quality=90)
        else:
            image.save(args.out / f"{i:03d}.png", optimize=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
