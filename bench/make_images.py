#!/usr/bin/env python3
"""Writes the benchmark's photo-like test images with Pillow: JPEG and PNG alternating, in the sizes of
common photo data sets (COCO-like 640x480 mostly), smooth shapes plus sensor-like noise so that the
files compress like photos rather than like flat test patterns. Deterministic for a seed.

    .venv/bin/python bench/make_images.py --out bench/models/images --count 32

--large writes phone-sized photos instead (12-megapixel JPEG in both orientations, with and without an EXIF
quarter turn, as WebP and as PNG; 1080x1920 and 1280x720 JPEGs), for build/image_bench:

    .venv/bin/python bench/make_images.py --large --out /tmp/large && build/image_bench /tmp/large/*
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


def write_large(rng: np.random.Generator, out: Path) -> None:
    landscape = photo(rng, 4032, 3024)
    landscape.save(out / "4032x3024.jpg", quality=90)
    landscape.transpose(Image.Transpose.ROTATE_90).save(out / "3024x4032.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: a quarter turn clockwise to display.
    landscape.save(out / "4032x3024-exif6.jpg", quality=90, exif=exif.tobytes())
    landscape.save(out / "4032x3024.webp", quality=90)
    landscape.save(out / "4032x3024.png")
    photo(rng, 1080, 1920).save(out / "1080x1920.jpg", quality=90)
    photo(rng, 1280, 720).save(out / "1280x720.jpg", quality=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--large", action="store_true", help="phone-sized photos instead")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    if args.large:
        write_large(rng, args.out)
        return 0
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
