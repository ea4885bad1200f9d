'use strict';
// Plain CommonJS so that child-process scripts in tests can require it too.
const zlib = require('node:zlib');

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  Buffer.from(data).copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * A PNG file around the given IDAT data: signature, IHDR (8-bit RGB unless
 * said otherwise), one IDAT chunk and, unless `end` is false, IEND.
 */
function pngFile(width, height, idat, { bitDepth = 8, colorType = 2, interlace = 0, end = true } = {}) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = bitDepth;
  header[9] = colorType;
  header[12] = interlace;
  return Buffer.concat([
    PNG_SIGNATURE,
    chunk('IHDR', header),
    chunk('IDAT', idat),
    ...(end ? [chunk('IEND', new Uint8Array())] : []),
  ]);
}

/**
 * An 8-bit RGB PNG drawn by `pixel(x, y) -> [r, g, b]`. Tests use it where a
 * valid image is all they need; pixel-exact fixtures come from Pillow.
 */
function makePng(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y);
      raw[row + 1 + x * 3] = r;
      raw[row + 2 + x * 3] = g;
      raw[row + 3 + x * 3] = b;
    }
  }
  return pngFile(width, height, zlib.deflateSync(raw));
}

/** A PNG whose header claims width x height but carries no real pixel data. */
function makePngHeaderOnly(width, height) {
  return pngFile(width, height, zlib.deflateSync(Buffer.alloc(64)));
}

/** A few distinct test images: gradients and stripes of different sizes. */
function sampleImages(count) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const w = 40 + ((i * 37) % 200);
    const h = 30 + ((i * 53) % 150);
    out.push(
      makePng(w, h, (x, y) =>
        [(x * 255) / w + i * 17, (y * 255) / h, ((x + y + i * 29) % 32) * 8].map((v) => Math.round(v) & 255),
      ),
    );
  }
  return out;
}

module.exports = { PNG_SIGNATURE, chunk, crc32, makePng, makePngHeaderOnly, pngFile, sampleImages };
