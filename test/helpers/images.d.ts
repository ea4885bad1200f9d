// Types of images.js (plain JavaScript, so that the benchmarks can require it too).

/** The 8 bytes every PNG file starts with. */
export const PNG_SIGNATURE: Buffer;
/** One PNG chunk: length, type, data, CRC. */
export function chunk(type: string, data: Uint8Array): Buffer;
/** CRC-32 as PNG computes it. */
export function crc32(bytes: Uint8Array): number;
/** A PNG file around the given IDAT data (8-bit RGB unless said otherwise), IEND unless `end` is false. */
export function pngFile(
  width: number,
  height: number,
  idat: Uint8Array,
  options?: { bitDepth?: number; colorType?: number; interlace?: number; end?: boolean },
): Buffer;
/** An 8-bit RGB PNG drawn by `pixel(x, y) -> [r, g, b]`. */
export function makePng(width: number, height: number, pixel: (x: number, y: number) => number[]): Buffer;
/** A PNG whose IDAT holds too little data for its size: it decodes to an error. */
export function makePngHeaderOnly(width: number, height: number): Buffer;
/** A few distinct test images: gradients and stripes of different sizes. */
export function sampleImages(count: number): Buffer[];
