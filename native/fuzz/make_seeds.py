"""Small seed images for image_fuzzer: every container variant the decoder
handles, a few pixels each, so that fuzzing spends its time on structure
rather than on pixels. Made with Pillow (the venv that scripts/setup.sh
creates has it).

Usage: python make_seeds.py OUT_DIR
"""
import io
import os
import struct
import sys
import zlib

from PIL import Image


def pattern(mode, size=(13, 9)):
    w, h = size
    rgba = Image.new("RGBA", size)
    rgba.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 29) % 256, (x * y * 11) % 256)
                  for y in range(h) for x in range(w)])
    if mode == "RGBA":
        return rgba
    if mode == "P":
        return rgba.convert("RGB").quantize(colors=7)
    if mode == "I;16":
        return rgba.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    return rgba.convert(mode)


def exif(orientation):
    data = Image.Exif()
    data[0x0112] = orientation
    return data.tobytes()


def fixed_huffman_png(length_symbol):
    """A 516 x 1 grey PNG of zeros whose image data is one fixed-Huffman block:
    a literal 0, then two 258-byte matches at distance 1 coded as
    `length_symbol` (285 is length 258; 286 and 287 are reserved, refused by
    zlib, decoded as 258 by lenient inflaters)."""
    bits = []

    def code(value, n):  # Huffman codes, most significant bit first
        bits.extend((value >> i) & 1 for i in range(n - 1, -1, -1))

    bits += [1, 1, 0]  # BFINAL, BTYPE 01 (fixed), least significant bit first
    code(0x30, 8)  # literal 0
    for _ in range(2):
        code(0xC0 + length_symbol - 280, 8)
        code(0, 5)  # distance 1
    code(0, 7)  # end of block
    bits += [0] * (-len(bits) % 8)
    deflate = bytes(sum(b << i for i, b in enumerate(bits[k:k + 8])) for k in range(0, len(bits), 8))
    stream = b"\x78\x01" + deflate + struct.pack(">I", zlib.adler32(bytes(517)))

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 516, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def adam7_png(width=9, height=7):
    """An interlaced (Adam7) 8-bit grey PNG, each pass row filtered None."""
    raw = bytearray()
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    for x0, y0, dx, dy in passes:
        for y in range(y0, height, dy):
            if x0 < width:
                raw += bytes([0] + [(x * 29 + y * 41) % 256 for x in range(x0, width, dx)])

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1))
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))


def main(out):
    os.makedirs(out, exist_ok=True)
    seeds = {}

    def save(name, image, fmt, **params):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **params)
        seeds[name] = buffer.getvalue()

    save("rgb.jpg", pattern("RGB"), "JPEG", quality=80)
    save("progressive.jpg", pattern("RGB"), "JPEG", progressive=True)
    save("gray.jpg", pattern("L"), "JPEG")
    save("cmyk.jpg", pattern("CMYK"), "JPEG")
    save("sub444.jpg", pattern("RGB"), "JPEG", subsampling=0)
    save("exif6.jpg", pattern("RGB"), "JPEG", exif=exif(6))
    save("restart.jpg", pattern("RGB", (40, 24)), "JPEG", quality=50, restart_marker_blocks=2)
    # Tall enough to be split over two threads (image_fuzzer forces the split
    # on half its inputs): 4:2:0 with 16-row iMCUs, 4:4:4 with 8-row ones.
    save("tall.jpg", pattern("RGB", (24, 80)), "JPEG", quality=70)
    save("tall444.jpg", pattern("RGB", (16, 40)), "JPEG", quality=70, subsampling=0)
    for mode in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
        save(f"{mode.replace(';', '')}.png", pattern(mode), "PNG")
    save("transparent_p.png", pattern("P"), "PNG", transparency=2)
    save("p4.png", pattern("RGB").quantize(12), "PNG")  # 4 bits per pixel
    save("exif8.png", pattern("RGB"), "PNG", exif=exif(8))
    seeds["adam7.png"] = adam7_png()
    seeds["fixed_huffman.png"] = fixed_huffman_png(285)
    seeds["reserved_length_code.png"] = fixed_huffman_png(287)
    save("lossy.webp", pattern("RGB"), "WEBP", quality=60)
    save("lossless.webp", pattern("RGB"), "WEBP", lossless=True)
    save("alpha.webp", pattern("RGBA"), "WEBP", quality=70)
    save("exif3.webp", pattern("RGB"), "WEBP", exif=exif(3))
    frames = [pattern("RGB"), pattern("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    save("animated.webp", frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    save("static.gif", pattern("P"), "GIF")
    save("transparent.gif", pattern("P"), "GIF", transparency=1)
    save("interlaced.gif", pattern("P"), "GIF", interlace=True)
    save("animated.gif", frames[0].quantize(5), "GIF", save_all=True,
         append_images=[frames[1].quantize(5)], duration=50, loop=0)
    save("rgb24.bmp", pattern("RGB"), "BMP")
    save("rgba32.bmp", pattern("RGBA"), "BMP")
    save("palette8.bmp", pattern("P"), "BMP")
    save("gray8.bmp", pattern("L"), "BMP")
    save("mono1.bmp", pattern("1"), "BMP")
    for name, data in seeds.items():
        with open(os.path.join(out, f"small-{name}"), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seed images in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
