// The hostile requests of test/adversarial/endpoint.test.ts, generated here at
// test time (nothing binary is committed): malformed and mistyped JSON, bad
// shapes, bad base64, images mutated from the valid fixtures in
// test/fixtures/images, decompression bombs and lying headers, hostile text,
// huge requests, URLs to a local server that misbehaves, refused schemes and
// destinations, and broken HTTP. Every case says what the endpoint must
// answer: a 4xx with {message, code} (and `row` for a row error) or, where the
// input is in fact valid, a 200.
//
// The corpus is a pure function of the seed images and the context, so a
// failing case can be rebuilt by name. Run directly (tap runs every file under
// test/), this file checks that property and the corpus's size.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import t from 'tap';
import { PNG_SIGNATURE, crc32, makePng, makePngHeaderOnly, pngFile } from '../helpers/images';

/** Which server a case goes to: `strict` is plain `serve`; `open` has --allow-private-urls and an API key. */
export type Target = 'strict' | 'open';

export const IMAGE_CODES = ['CLIP_IMAGE_DECODE_FAILED', 'CLIP_UNSUPPORTED_IMAGE_FORMAT', 'CLIP_IMAGE_TOO_LARGE'];
export const INVALID = ['CLIP_INVALID_ARGUMENT'];

export interface Expect {
  /** Acceptable statuses; 0 means "the connection closed without an answer". */
  status: number[];
  /** Acceptable codes of a 4xx answer (whose body must be {message, code}). */
  codes?: string[];
  /** The `row` a row error must carry. */
  row?: number;
}

export interface Case {
  name: string;
  category: string;
  target: Target;
  method: string;
  path: string;
  headers: Record<string, string>;
  /** The exact body bytes. */
  body?: Buffer;
  /** Sent as one raw write on a fresh socket instead of through an HTTP client. */
  raw?: Buffer;
  /** Run alone, with nothing else in flight (their answer depends on the queue being empty). */
  exclusive?: boolean;
  /** Takes up to the fetch timeout; started first and awaited last. */
  slow?: boolean;
  expect: Expect;
}

export interface Seed {
  name: string;
  bytes: Buffer;
}

export interface CorpusContext {
  seeds: Seed[];
  /** http://127.0.0.1:PORT of the local image server (see endpoint.test.ts). */
  imageOrigin: string;
  /** The open server's API key. */
  apiKey: string;
}

/** The valid seed images: test/fixtures/images/*.{jpg,png,webp,gif,bmp}, in name order. */
export function loadSeeds(dir: string): Seed[] {
  return fs
    .readdirSync(dir)
    .filter((name) => /\.(jpe?g|png|webp|gif|bmp)$/.test(name))
    .sort()
    .map((name) => ({ name, bytes: fs.readFileSync(path.join(dir, name)) }));
}

/** mulberry32: a small deterministic PRNG, seeded from a case name. */
function random(name: string): () => number {
  let a = createHash('sha256').update(name).digest().readUInt32LE(0);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * An all-zero grayscale PNG of 1 bit per pixel with real, complete image data:
 * 20000x20000 is 400 megapixels (1.2 GB as RGB) in about 50 KB.
 */
export function makeZeroPng(width: number, height: number): Buffer {
  const stride = Math.ceil(width / 8) + 1;
  const raw = Buffer.alloc(stride * height); // filter 0 and zero pixels on every row
  return pngFile(width, height, zlib.deflateSync(raw, { level: 9 }), { bitDepth: 1, colorType: 0 });
}

/** A copy of a PNG with its IHDR rewritten by `edit` (CRC fixed unless `badCrc`). */
function patchIhdr(png: Buffer, edit: (ihdr: Buffer) => void, badCrc = false): Buffer {
  const out = Buffer.from(png);
  const ihdr = out.subarray(16, 29);
  edit(ihdr);
  out.writeUInt32BE((crc32(out.subarray(12, 29)) ^ (badCrc ? 1 : 0)) >>> 0, 29);
  return out;
}

/** Offset of the first JPEG start-of-frame marker (SOF0..SOF15 but DHT, JPG, DAC). */
function jpegSof(jpeg: Buffer): number {
  let i = 2;
  while (i + 4 < jpeg.length) {
    if (jpeg[i] !== 0xff) return -1;
    const marker = jpeg[i + 1];
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) return i;
    i += 2 + jpeg.readUInt16BE(i + 2);
  }
  return -1;
}

function patchJpegSize(jpeg: Buffer, width: number, height: number): Buffer {
  const out = Buffer.from(jpeg);
  const sof = jpegSof(out);
  if (sof < 0) throw new Error('no SOF marker in the JPEG seed');
  out.writeUInt16BE(height, sof + 5);
  out.writeUInt16BE(width, sof + 7);
  return out;
}

/** A VP8X WebP (extended format) around a VP8L bitstream, with any canvas size. */
function webpExtended(vp8lWebp: Buffer, canvasWidth: number, canvasHeight: number): Buffer {
  const bitstream = vp8lWebp.subarray(12); // the 'VP8L' chunk, header included
  const vp8x = Buffer.alloc(18);
  vp8x.write('VP8X', 0, 'latin1');
  vp8x.writeUInt32LE(10, 4);
  vp8x[8] = 0x10; // alpha flag
  vp8x.writeUIntLE(canvasWidth - 1, 12, 3);
  vp8x.writeUIntLE(canvasHeight - 1, 15, 3);
  const body = Buffer.concat([Buffer.from('WEBP', 'latin1'), vp8x, bitstream]);
  const header = Buffer.alloc(8);
  header.write('RIFF', 0, 'latin1');
  header.writeUInt32LE(body.length, 4);
  return Buffer.concat([header, body]);
}

/** A BMP (default 24 bits per pixel), bottom-up: width x height of one gray level. */
function makeBmp(
  width: number,
  height: number,
  options: { bpp?: number; compression?: number; heightField?: number; maxPixelBytes?: number } = {},
): Buffer {
  const bpp = options.bpp ?? 24;
  const stride = Math.ceil((width * bpp) / 32) * 4;
  // maxPixelBytes: a header that claims more than the data it carries.
  const pixels = Buffer.alloc(Math.min(stride * height, options.maxPixelBytes ?? Infinity), 0x80);
  const out = Buffer.alloc(54 + pixels.length);
  out.write('BM', 0, 'latin1');
  out.writeUInt32LE(out.length, 2);
  out.writeUInt32LE(54, 10);
  out.writeUInt32LE(40, 14);
  out.writeInt32LE(width, 18);
  out.writeInt32LE(options.heightField ?? height, 22);
  out.writeUInt16LE(1, 26);
  out.writeUInt16LE(bpp, 28);
  out.writeUInt32LE(options.compression ?? 0, 30);
  out.writeUInt32LE(pixels.length, 34);
  pixels.copy(out, 54);
  return out;
}

const b64 = (bytes: Buffer) => bytes.toString('base64');

/** The JSON body of one request in Azure's split format. */
/** A `/score` body with columns image and text and no index. */
function bodyWithoutIndex(data: unknown[][]): Buffer {
  return Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], data } }));
}

export function scoreBody(
  data: unknown[][],
  columns: string[] = ['image', 'text'],
  extra: Record<string, unknown> = {},
): Buffer {
  return Buffer.from(JSON.stringify({ input_data: { columns, index: data.map((_, i) => i), data, ...extra } }));
}

// ---------------------------------------------------------------------------

export function buildCorpus(context: CorpusContext): Case[] {
  const cases: Case[] = [];
  const auth = { authorization: `Bearer ${context.apiKey}` };
  const json = { 'content-type': 'application/json' };
  const add = (c: Partial<Case> & Pick<Case, 'name' | 'category' | 'expect'>) => {
    const target = c.target ?? 'strict';
    cases.push({
      method: 'POST',
      path: '/score',
      ...c,
      target,
      headers: { ...json, ...(target === 'open' ? auth : {}), ...(c.headers ?? {}) },
    });
  };
  const invalid = (row?: number): Expect => ({ status: [400], codes: INVALID, ...(row === undefined ? {} : { row }) });
  const imageError = (row = 0, codes = IMAGE_CODES): Expect => ({ status: [400], codes, row });
  const maybeImage = (row = 0): Expect => ({ status: [200, 400], codes: IMAGE_CODES, row });
  const ok: Expect = { status: [200] };

  const png = makePng(32, 24, (x, y) => [x * 8, y * 10, (x ^ y) * 8]);
  const pngB64 = b64(png);

  // --- malformed JSON ------------------------------------------------------
  const validText = scoreBody([['', 'a photo of a cat']]).toString();
  const malformed: Array<[string, string | Buffer]> = [
    ['empty body', ''],
    ['whitespace only', ' \n\t '],
    ['truncated at half', validText.slice(0, validText.length >> 1)],
    ['truncated by one byte', validText.slice(0, -1)],
    ['trailing comma', validText.replace(']]}}', ']],}}')],
    ['single quotes', validText.replace(/"/g, "'")],
    ['unquoted keys', '{input_data: {columns: ["text"], data: [["x"]]}}'],
    ['comment', `/* hi */ ${validText}`],
    ['NaN literal', '{"input_data": {"columns": ["text"], "data": [[NaN]]}}'],
    ['Infinity literal', '{"input_data": {"columns": ["text"], "data": [[Infinity]]}}'],
    ['undefined literal', '{"input_data": undefined}'],
    ['two documents', `${validText}${validText}`],
    ['garbage after document', `${validText} xyz`],
    ['bare string', 'hello'],
    ['bare number', '12'.repeat(10)],
    ['lone opening brace', '{'],
    ['lone closing bracket', ']'],
    ['unterminated string', '{"input_data": "'],
    ['bad escape', '{"input_data": "\\x41"}'],
    ['bad unicode escape', '{"input_data": {"columns": ["text"], "data": [["\\u12G4"]]}}'],
    ['control character in string', '{"input_data": {"columns": ["text"], "data": [["a\u0001b"]]}}'],
    ['nul byte', Buffer.from('{"input_data"\u0000: 1}', 'latin1')],
    ['UTF-16LE body', Buffer.from(validText, 'utf16le')],
    ['deep nesting (100000 arrays)', `{"input_data": ${'['.repeat(100_000)}${']'.repeat(100_000)}}`],
    ['deep nesting (100000 objects)', `${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}`],
    ['unbalanced deep nesting', '['.repeat(50_000)],
    ['huge number', `{"input_data": ${'9'.repeat(100_000)}}`],
    ['__proto__ key', '{"__proto__": {"input_data": {"columns": ["text"], "data": [["x"]]}}}'],
    ['constructor.prototype key', '{"constructor": {"prototype": {"input_data": 1}}}'],
    [
      'invalid UTF-8 outside strings',
      Buffer.concat([Buffer.from('{"input_data"'), Buffer.from([0xff, 0xfe]), Buffer.from(': 1}')]),
    ],
  ];
  for (const [name, body] of malformed) {
    add({ name: `json/${name}`, category: 'malformed JSON', body: Buffer.from(body), expect: invalid() });
  }
  // Valid JSON after all: an empty document shape, duplicate keys (the last wins).
  add({
    name: 'json/duplicate keys (last wins, valid)',
    category: 'malformed JSON',
    body: Buffer.from('{"input_data": 1, "input_data": {"columns": ["text"], "data": [["dup"]]}}'),
    expect: ok,
  });
  // A UTF-8 byte order mark: JSON forbids it, some parsers skip it.
  add({
    name: 'json/BOM prefix',
    category: 'malformed JSON',
    body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(validText)]),
    expect: { status: [200, 400], codes: INVALID },
  });
  add({ name: 'json/empty data (valid, empty answer)', category: 'malformed JSON', body: scoreBody([]), expect: ok });

  // --- wrong types at every field -------------------------------------------
  const wrongValues: Array<[string, unknown]> = [
    ['null', null],
    ['true', true],
    ['number', 42],
    ['negative zero', -0],
    ['string', 'text'],
    ['empty string', ''],
    ['array', []],
    ['object', {}],
    ['nested array', [[['x']]]],
  ];
  for (const [label, value] of wrongValues) {
    add({
      name: `types/body is ${label}`,
      category: 'wrong types',
      body: Buffer.from(JSON.stringify(value)),
      expect: invalid(),
    });
    add({
      name: `types/input_data is ${label}`,
      category: 'wrong types',
      body: Buffer.from(JSON.stringify({ input_data: value })),
      expect: invalid(),
    });
    if (label !== 'array') {
      add({
        name: `types/columns is ${label}`,
        category: 'wrong types',
        body: Buffer.from(JSON.stringify({ input_data: { columns: value, data: [['', 'x']] } })),
        expect: invalid(),
      });
    }
    if (label !== 'array') {
      add({
        name: `types/data is ${label}`,
        category: 'wrong types',
        body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], data: value } })),
        expect: invalid(),
      });
    }
    if (label !== 'null' && label !== 'array') {
      // Only an index's length counts: [[['x']]] is an index of one entry.
      add({
        name: `types/index is ${label}`,
        category: 'wrong types',
        body: Buffer.from(JSON.stringify({ input_data: { columns: ['text'], index: value, data: [['x']] } })),
        expect: label === 'nested array' ? ok : invalid(),
      });
    }
    add({
      name: `types/row is ${label}`,
      category: 'wrong types',
      body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], data: [['', 'ok'], value] } })),
      expect: invalid(1),
    });
    add({
      name: `types/column name is ${label}`,
      category: 'wrong types',
      body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', value], data: [['', 'x']] } })),
      expect: label === 'string' ? ok : invalid(),
    });
    // A cell that is absent ("" or null) is allowed; anything else not a string is a row error.
    const absent = label === 'null' || label === 'empty string';
    add({
      name: `types/image cell is ${label}`,
      category: 'wrong types',
      body: bodyWithoutIndex([
        ['', 'ok'],
        [value, 'text'],
      ]),
      // 'text' is valid base64 (3 bytes that are no image).
      expect: absent
        ? ok
        : label === 'string'
          ? { status: [400], codes: [...INVALID, ...IMAGE_CODES], row: 1 }
          : invalid(1),
    });
    add({
      name: `types/text cell is ${label}`,
      category: 'wrong types',
      body: bodyWithoutIndex([
        ['', 'ok'],
        [pngB64, value],
      ]),
      expect: absent ? ok : label === 'string' ? ok : invalid(1),
    });
  }
  add({ name: 'types/no input_data', category: 'wrong types', body: Buffer.from('{"inputs": []}'), expect: invalid() });
  add({ name: 'types/columns empty', category: 'wrong types', body: scoreBody([[]], []), expect: invalid() });
  add({
    name: 'types/columns neither image nor text',
    category: 'wrong types',
    body: scoreBody([['x']], ['caption']),
    expect: invalid(),
  });
  add({
    name: 'types/columns duplicated',
    category: 'wrong types',
    body: scoreBody([['x', 'y']], ['text', 'text']),
    expect: invalid(),
  });
  add({
    name: 'types/column names differ in case',
    category: 'wrong types',
    body: scoreBody([['x']], ['TEXT']),
    expect: invalid(),
  });
  add({
    name: 'types/extra columns ignored (valid)',
    category: 'wrong types',
    body: scoreBody([['', 'x', 'z']], ['image', 'text', 'extra']),
    expect: ok,
  });
  add({
    name: 'types/row with neither',
    category: 'wrong types',
    body: scoreBody([
      ['', 'ok'],
      ['', ''],
    ]),
    expect: invalid(1),
  });
  add({
    name: 'types/row of nulls',
    category: 'wrong types',
    body: scoreBody([
      ['', 'ok'],
      ['', 'ok'],
      [null, null],
    ]),
    expect: invalid(2),
  });
  add({
    name: 'types/100000 empty rows',
    category: 'wrong types',
    body: scoreBody(Array.from({ length: 100_000 }, () => ['', ''])),
    expect: invalid(0),
  });

  // --- index / data mismatches and row widths -------------------------------
  const twoRows = [
    ['', 'a'],
    ['', 'b'],
  ];
  for (const length of [0, 1, 3, 1000]) {
    add({
      name: `shape/index of ${length} for 2 rows`,
      category: 'index and row shape',
      body: Buffer.from(
        JSON.stringify({
          input_data: { columns: ['image', 'text'], index: Array.from({ length }, (_, i) => i), data: twoRows },
        }),
      ),
      expect: invalid(),
    });
  }
  add({
    name: 'shape/index of strings (valid: only its length counts)',
    category: 'index and row shape',
    body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], index: ['a', 'b'], data: twoRows } })),
    expect: ok,
  });
  add({
    name: 'shape/index null (valid)',
    category: 'index and row shape',
    body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], index: null, data: twoRows } })),
    expect: ok,
  });
  add({
    name: 'shape/no index (valid)',
    category: 'index and row shape',
    body: Buffer.from(JSON.stringify({ input_data: { columns: ['image', 'text'], data: twoRows } })),
    expect: ok,
  });
  for (const width of [0, 1, 3, 100]) {
    add({
      name: `shape/row of ${width} cells for 2 columns`,
      category: 'index and row shape',
      body: scoreBody([['', 'ok'], ['', 'ok'], Array.from({ length: width }, () => 'x')]),
      expect: invalid(2),
    });
  }
  add({
    name: 'shape/row of 3 cells for 1 column',
    category: 'index and row shape',
    body: scoreBody([['a', 'b', 'c']], ['text']),
    expect: invalid(0),
  });
  add({
    name: 'shape/rows as objects',
    category: 'index and row shape',
    body: scoreBody([{ text: 'x' } as unknown as unknown[]], ['text']),
    expect: invalid(0),
  });

  // --- invalid base64 and data: URIs ---------------------------------------
  const badBase64: Array<[string, string, string[]]> = [
    ['punctuation', '!!!!', INVALID],
    ['one character', 'A', INVALID],
    ['length 4n+1', 'AAAAA', INVALID],
    ['only padding', '====', INVALID],
    ['padding in the middle', 'AA==AA==', INVALID],
    ['too much padding', 'AA===', INVALID],
    ['mixed alphabets', 'ab+_cd', INVALID],
    ['non-ASCII letters', 'ÄÖÜäöü', INVALID],
    ['emoji', '🐱🐱🐱🐱', INVALID],
    ['percent-encoded', '%89PNG%0D%0A', INVALID],
    ['hex', '89504e470d0a1a0a0000000d49484452', IMAGE_CODES],
    ['valid base64 of text', b64(Buffer.from('hello, this is not an image')), IMAGE_CODES],
    ['base64 of a lone zero byte', 'AA==', IMAGE_CODES],
    ['base64 of 4096 zero bytes', b64(Buffer.alloc(4096)), IMAGE_CODES],
    ['base64 of 0xff bytes', b64(Buffer.alloc(4096, 0xff)), IMAGE_CODES],
    ['base64 of the PNG signature only', b64(PNG_SIGNATURE), IMAGE_CODES],
    ['base64 of a JPEG SOI+EOI', b64(Buffer.from([0xff, 0xd8, 0xff, 0xd9])), IMAGE_CODES],
    ['base64 of GIF89a only', b64(Buffer.from('GIF89a')), IMAGE_CODES],
    ['base64 of RIFF WEBP header only', b64(Buffer.from('RIFF\x04\x00\x00\x00WEBP', 'latin1')), IMAGE_CODES],
    ['base64 of BM only', b64(Buffer.from('BM')), IMAGE_CODES],
    ['data: URI without base64', `data:image/png,${encodeURIComponent(png.toString('latin1'))}`, INVALID],
    ['data: URI without comma', 'data:image/png;base64', INVALID],
    ['data: URI with empty payload', 'data:image/png;base64,', INVALID],
    ['data: URI with bad base64', 'data:image/png;base64,!!!!', INVALID],
    ['data: URI of text/html', `data:text/html;base64,${b64(Buffer.from('<script>alert(1)</script>'))}`, IMAGE_CODES],
    ['base64 with NUL characters', `${pngB64.slice(0, 8)}\u0000${pngB64.slice(8)}`, INVALID],
  ];
  for (const [name, value, codes] of badBase64) {
    add({
      name: `base64/${name}`,
      category: 'invalid base64',
      body: scoreBody([
        ['', 'ok'],
        [value, ''],
      ]),
      expect: { status: [400], codes, row: 1 },
    });
  }
  // Accepted spellings of a valid image (contract: MIME line breaks, URL-safe, data: URIs).
  const goodSpellings: Array<[string, string]> = [
    ['MIME line breaks', pngB64.replace(/.{76}/g, '$&\r\n')],
    ['URL-safe alphabet', pngB64.replace(/\+/g, '-').replace(/\//g, '_')],
    ['no padding', pngB64.replace(/=+$/, '')],
    ['surrounding whitespace', `  \n${pngB64}\n  `],
    ['data: URI', `data:image/png;base64,${pngB64}`],
    ['data: URI of the wrong type', `data:image/jpeg;base64,${pngB64}`],
    ['data: URI with parameters', `data:image/png;name=x.png;base64,${pngB64}`],
  ];
  for (const [name, value] of goodSpellings) {
    add({ name: `base64/valid: ${name}`, category: 'invalid base64', body: scoreBody([[value, '']]), expect: ok });
  }

  // --- mutated images -------------------------------------------------------
  const magic: Record<string, Buffer> = {
    png: PNG_SIGNATURE,
    jpg: Buffer.from([0xff, 0xd8, 0xff, 0xe0]),
    gif: Buffer.from('GIF89a'),
    bmp: Buffer.from('BM'),
    webp: Buffer.from('RIFF\0\0\0\0WEBP', 'latin1'),
  };
  for (const seed of context.seeds) {
    const ext = path.extname(seed.name).slice(1).replace('jpeg', 'jpg');
    const bytes = seed.bytes;
    const mutations: Array<[string, () => Buffer, Expect]> = [
      ['truncated to 64 bytes', () => bytes.subarray(0, 64), imageError(1)],
      ['truncated to half', () => bytes.subarray(0, bytes.length >> 1), maybeImage(1)],
      ['truncated to 90%', () => bytes.subarray(0, Math.floor(bytes.length * 0.9)), maybeImage(1)],
      ['last byte dropped', () => bytes.subarray(0, bytes.length - 1), maybeImage(1)],
      [
        '8 bytes flipped in the header',
        () => {
          const rnd = random(`${seed.name}/header`);
          const out = Buffer.from(bytes);
          for (let i = 0; i < 8; i++) out[Math.floor(rnd() * Math.min(512, out.length))] ^= 1 + Math.floor(rnd() * 255);
          return out;
        },
        maybeImage(1),
      ],
      [
        '64 bytes flipped anywhere',
        () => {
          const rnd = random(`${seed.name}/anywhere`);
          const out = Buffer.from(bytes);
          for (let i = 0; i < 64; i++) out[Math.floor(rnd() * out.length)] ^= 1 + Math.floor(rnd() * 255);
          return out;
        },
        maybeImage(1),
      ],
      [
        '1 KiB zeroed in the middle',
        () => {
          const out = Buffer.from(bytes);
          out.fill(0, out.length >> 1, Math.min(out.length, (out.length >> 1) + 1024));
          return out;
        },
        maybeImage(1),
      ],
      [
        '4 KiB of noise inserted',
        () => {
          const rnd = random(`${seed.name}/insert`);
          const noise = Buffer.from(Array.from({ length: 4096 }, () => Math.floor(rnd() * 256)));
          const at = Math.floor(bytes.length / 3);
          return Buffer.concat([bytes.subarray(0, at), noise, bytes.subarray(at)]);
        },
        maybeImage(1),
      ],
      [
        'magic of another format',
        () => {
          const other = Object.keys(magic).find((k) => k !== ext)!;
          return Buffer.concat([magic[other], bytes.subarray(magic[other].length)]);
        },
        maybeImage(1),
      ],
      ['doubled', () => Buffer.concat([bytes, bytes]), maybeImage(1)],
    ];
    for (const [name, mutate, expect] of mutations) {
      add({
        name: `image/${seed.name}: ${name}`,
        category: 'corrupt images',
        body: scoreBody([
          ['', 'ok'],
          [b64(mutate()), ''],
        ]),
        expect,
      });
    }
  }

  // --- degenerate sizes -----------------------------------------------------
  const sizes: Array<[string, () => Buffer, Expect]> = [
    ['1x1 PNG', () => makePng(1, 1, () => [255, 0, 0]), ok],
    ['1x100000 PNG', () => makePng(1, 100_000, (_x, y) => [y & 255, 0, 0]), ok],
    ['100000x1 PNG', () => makePng(100_000, 1, (x) => [0, x & 255, 0]), ok],
    ['2x2 PNG', () => makePng(2, 2, (x, y) => [x * 255, y * 255, 0]), ok],
    ['1x1 BMP', () => makeBmp(1, 1), ok],
    ['1x100000 BMP', () => makeBmp(1, 100_000), ok],
    ['0x0 PNG', () => makePngHeaderOnly(0, 0), imageError(0)],
    ['0x10 PNG', () => makePngHeaderOnly(0, 10), imageError(0)],
    ['0x10 BMP', () => makeBmp(0, 10), imageError(0)],
    ['7000x7000 zero PNG, just under the 50 MP limit', () => makeZeroPng(7000, 7000), ok],
  ];
  for (const [name, make, expect] of sizes) {
    add({
      name: `size/${name}`,
      category: 'degenerate sizes',
      body: scoreBody([[b64(make()), '']]),
      expect,
      exclusive: name.startsWith('7000'),
    });
  }

  // --- decompression bombs and headers that claim huge sizes ----------------
  const seedOf = (name: string) => context.seeds.find((s) => s.name === name)?.bytes;
  const jpeg = seedOf('baseline_320x240.jpg');
  const gif = seedOf('animated_160x120.gif');
  const bmp = seedOf('bmp24_299x233.bmp');
  const lossless = seedOf('lossless_200x300.webp');
  const lossy = seedOf('lossy_300x200.webp');
  const tooLarge = (codes = ['CLIP_IMAGE_TOO_LARGE']): Expect => ({ status: [400], codes, row: 0 });
  const bombs: Array<[string, () => Buffer, Expect]> = [
    ['PNG 20000x20000 all zero (real data, 50 KB)', () => makeZeroPng(20_000, 20_000), tooLarge()],
    ['PNG 8000x8000 all zero (64 MP)', () => makeZeroPng(8000, 8000), tooLarge()],
    ['PNG header 100000x100000', () => makePngHeaderOnly(100_000, 100_000), tooLarge()],
    ['PNG header 2^31-1 x 2^31-1', () => makePngHeaderOnly(0x7fffffff, 0x7fffffff), tooLarge(IMAGE_CODES)],
    ['PNG header 2^32-1 wide', () => makePngHeaderOnly(0xffffffff, 1), tooLarge(IMAGE_CODES)],
    ['PNG header 1 x 60000000', () => makePngHeaderOnly(1, 60_000_000), tooLarge(IMAGE_CODES)],
    ['PNG IHDR with a bad CRC', () => patchIhdr(png, () => undefined, true), imageError(0)],
    ['PNG bit depth 3', () => patchIhdr(png, (h) => (h[8] = 3)), imageError(0)],
    ['PNG color type 5', () => patchIhdr(png, (h) => (h[9] = 5)), imageError(0)],
    ['PNG interlace method 7', () => patchIhdr(png, (h) => (h[12] = 7)), imageError(0)],
    [
      'PNG IHDR claims 64x64 for 32x24 data',
      () => patchIhdr(png, (h) => (h.writeUInt32BE(64, 0), h.writeUInt32BE(64, 4))),
      imageError(0),
    ],
    [
      'PNG IDAT length 0xffffffff',
      () => {
        const out = Buffer.from(png);
        out.writeUInt32BE(0xffffffff, 33);
        return out;
      },
      imageError(0),
    ],
    [
      'PNG zlib bomb in a 16x16 IDAT',
      () => pngFile(16, 16, zlib.deflateSync(Buffer.alloc(64 << 20), { level: 9 })),
      maybeImage(0),
    ],
  ];
  if (jpeg) {
    bombs.push(['JPEG SOF claims 65500x65500', () => patchJpegSize(jpeg, 65_500, 65_500), tooLarge()]);
    bombs.push(['JPEG SOF claims 65500x1000', () => patchJpegSize(jpeg, 65_500, 1000), tooLarge()]);
    bombs.push(['JPEG SOF claims height 0', () => patchJpegSize(jpeg, 320, 0), imageError(0)]);
    bombs.push([
      'JPEG SOF claims 7000x7000 (under the limit, data for 320x240)',
      () => patchJpegSize(jpeg, 7000, 7000),
      maybeImage(0),
    ]);
  }
  if (gif) {
    bombs.push([
      'GIF screen 65535x65535',
      () => {
        const out = Buffer.from(gif);
        out.writeUInt16LE(65535, 6);
        out.writeUInt16LE(65535, 8);
        return out;
      },
      tooLarge(IMAGE_CODES),
    ]);
  }
  if (bmp) {
    bombs.push(['BMP claims 30000x30000', () => makeBmp(30_000, 30_000, { maxPixelBytes: 4096 }), tooLarge()]);
    bombs.push([
      'BMP width 2^31-1',
      () => {
        const out = Buffer.from(bmp);
        out.writeInt32LE(0x7fffffff, 18);
        return out;
      },
      tooLarge(IMAGE_CODES),
    ]);
    bombs.push([
      'BMP height -2^31',
      () => {
        const out = Buffer.from(bmp);
        out.writeInt32LE(-0x80000000, 22);
        return out;
      },
      tooLarge(IMAGE_CODES),
    ]);
    bombs.push([
      'BMP pixel offset past the end',
      () => {
        const out = Buffer.from(bmp);
        out.writeUInt32LE(0x7fffff00, 10);
        return out;
      },
      imageError(0),
    ]);
    bombs.push(['BMP RLE8 compression', () => makeBmp(8, 8, { bpp: 8, compression: 1 }), imageError(0)]);
    bombs.push(['BMP 0 bits per pixel', () => makeBmp(8, 8, { bpp: 0 }), imageError(0)]);
  }
  if (lossless) {
    bombs.push(['WebP VP8X canvas 16384x16384', () => webpExtended(lossless, 16_384, 16_384), tooLarge(IMAGE_CODES)]);
    bombs.push(['WebP VP8X canvas 2^24 x 2^24', () => webpExtended(lossless, 1 << 24, 1 << 24), tooLarge(IMAGE_CODES)]);
    bombs.push([
      'WebP VP8L claims 16384x16384',
      () => {
        const out = Buffer.from(lossless);
        const bits = out.readUInt32LE(21);
        out.writeUInt32LE(((bits & 0xf0000000) | 16383 | (16383 << 14)) >>> 0, 21);
        return out;
      },
      tooLarge(IMAGE_CODES),
    ]);
    bombs.push([
      'WebP RIFF size past the end',
      () => {
        const out = Buffer.from(lossless);
        out.writeUInt32LE(0xfffffff0, 4);
        return out;
      },
      maybeImage(0),
    ]);
  }
  if (lossy) {
    bombs.push([
      'WebP VP8 claims 16383x16383',
      () => {
        const out = Buffer.from(lossy);
        out.writeUInt16LE(16383, 26);
        out.writeUInt16LE(16383, 28);
        return out;
      },
      tooLarge(IMAGE_CODES),
    ]);
  }
  for (const [name, make, expect] of bombs) {
    add({ name: `bomb/${name}`, category: 'bombs and huge claims', body: scoreBody([[b64(make()), '']]), expect });
  }

  // --- hostile text ---------------------------------------------------------
  const lone = (escape: string) => Buffer.from(`{"input_data": {"columns": ["text"], "data": [["${escape}"]]}}`);
  const texts: Array<[string, Buffer]> = [
    ['lone high surrogate escape', lone('\\ud800')],
    ['lone low surrogate escape', lone('\\udc00abc')],
    ['reversed surrogate pair', lone('\\udc00\\ud800')],
    ['high surrogates only', lone('\\ud83d'.repeat(500))],
    ['NUL escapes', lone('a\\u0000b\\u0000')],
    [
      'invalid UTF-8 bytes in a string',
      Buffer.concat([
        Buffer.from('{"input_data": {"columns": ["text"], "data": [["a'),
        Buffer.from([0xff, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80]),
        Buffer.from('b"]]}}'),
      ]),
    ],
    [
      'CESU-8 surrogate pair bytes',
      Buffer.concat([
        Buffer.from('{"input_data": {"columns": ["text"], "data": [["'),
        Buffer.from([0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80]),
        Buffer.from('"]]}}'),
      ]),
    ],
    [
      'truncated UTF-8 sequence at the end of a string',
      Buffer.concat([
        Buffer.from('{"input_data": {"columns": ["text"], "data": [["cat'),
        Buffer.from([0xf0, 0x9f, 0x90]),
        Buffer.from('"]]}}'),
      ]),
    ],
    ['5 MB of words', scoreBody([['', 'a photo of a cat '.repeat(300_000).slice(0, 5_000_000)]])],
    ['5 MB single word', scoreBody([['', 'x'.repeat(5_000_000)]])],
    ['5 MB of combining marks', scoreBody([['', `e${'\u0301'.repeat(2_500_000)}`]])],
    ['5 MB of whitespace', scoreBody([['', ' \t\n\u3000'.repeat(1_000_000)]])],
    ['1 MB of emoji', scoreBody([['', '🐱'.repeat(250_000)]])],
    ['10000 special tokens', scoreBody([['', '<|endoftext|>'.repeat(10_000)]])],
    ['startoftext literal', scoreBody([['', '<|startoftext|>x<|endoftext|>']])],
    ['only whitespace', scoreBody([['', '   ']])],
    ['right-to-left and zero-width', scoreBody([['', '\u202e\u200b\u200d\ufeffabc\u2066']])],
    ['noncharacters', scoreBody([['', '\ufffe\uffff\u{10ffff}\u{1fffe}']])],
    ['private use and unassigned', scoreBody([['', '\ue000\u{f0000}\u0378\u{e01ef}']])],
  ];
  for (const [name, body] of texts) {
    add({ name: `text/${name}`, category: 'hostile text', body, expect: ok, exclusive: body.length > 1_000_000 });
  }

  // --- many rows (the engine's queue holds 4096 items per encoder) ----------
  // 20000 texts can never fit the queue, so "retry later" would be wrong:
  // 413, refused before any row is embedded.
  const bulk = (label: string, rows: unknown[][], expect: Expect) =>
    add({ name: `rows/${label}`, category: 'many rows', body: scoreBody(rows), expect, exclusive: true });
  const overCapacity: Expect = { status: [413], codes: ['CLIP_REQUEST_TOO_LARGE'] };
  bulk(
    '20000 text rows',
    Array.from({ length: 20_000 }, (_, i) => ['', `caption number ${i}`]),
    overCapacity,
  );
  bulk(
    '4096 text rows (exactly the queue capacity)',
    Array.from({ length: 4096 }, (_, i) => ['', `row ${i}`]),
    ok,
  );
  bulk(
    '5000 image rows of a 1x1 PNG',
    Array.from({ length: 5000 }, () => [b64(makePng(1, 1, () => [1, 2, 3])), '']),
    overCapacity,
  );
  bulk(
    '1000 mixed rows',
    Array.from({ length: 1000 }, (_, i) => (i % 2 ? ['', `t${i}`] : [pngB64, `both ${i}`])),
    ok,
  );
  bulk('3000 rows, a bad one last', [...Array.from({ length: 2999 }, (_, i) => ['', `r${i}`]), ['', 5]], invalid(2999));

  // --- content types, methods, routes --------------------------------------
  const body = scoreBody([['', 'a photo of a cat']]);
  const contentTypes: Array<[string, string | undefined, Expect]> = [
    ['text/plain', 'text/plain', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['none', undefined, { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['form', 'application/x-www-form-urlencoded', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['multipart', 'multipart/form-data; boundary=x', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['octet-stream', 'application/octet-stream', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['image/png', 'image/png', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['application/jsonx', 'application/jsonx', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['empty', '', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['garbage', ';;;/;', { status: [415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] }],
    ['upper case (valid)', 'APPLICATION/JSON', ok],
    ['with charset (valid)', 'application/json; charset=utf-8', ok],
    [
      'application/problem+json',
      'application/problem+json',
      { status: [200, 415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE'] },
    ],
    [
      'charset latin1',
      'application/json; charset=latin1',
      { status: [200, 400, 415], codes: ['CLIP_UNSUPPORTED_MEDIA_TYPE', 'CLIP_INVALID_ARGUMENT'] },
    ],
  ];
  for (const [name, type, expect] of contentTypes) {
    const headers: Record<string, string> = type === undefined ? {} : { 'content-type': type };
    cases.push({
      name: `content-type/${name}`,
      category: 'content types and routes',
      target: 'strict',
      method: 'POST',
      path: '/score',
      headers,
      body,
      expect,
    });
  }
  const notFound: Expect = { status: [404], codes: ['CLIP_NOT_FOUND'] };
  const routes: Array<[string, string, string]> = [
    ['GET /score', 'GET', '/score'],
    ['PUT /score', 'PUT', '/score'],
    ['DELETE /score', 'DELETE', '/score'],
    ['PATCH /score', 'PATCH', '/score'],
    ['POST /', 'POST', '/'],
    ['POST /SCORE', 'POST', '/SCORE'],
    ['POST /score/extra', 'POST', '/score/extra'],
    ['POST /score%00', 'POST', '/score%00'],
    ['GET /../../etc/passwd', 'GET', '/../../etc/passwd'],
    ['GET /%2e%2e/%2e%2e/etc/passwd', 'GET', '/%2e%2e/%2e%2e/etc/passwd'],
    ['GET an 8 KB path', 'GET', `/${'a'.repeat(8000)}`],
  ];
  for (const [name, method, route] of routes) {
    cases.push({
      name: `route/${name}`,
      category: 'content types and routes',
      target: 'strict',
      method,
      path: route,
      headers: json,
      body: method === 'GET' ? undefined : body,
      expect: notFound,
    });
  }

  // --- body size: the strict server runs with --body-limit-mb 16 -------------
  const limit: Expect = { status: [413], codes: ['CLIP_REQUEST_TOO_LARGE'] };
  // Raw, because the server may answer and close before the client has
  // written the whole body (an HTTP client then reports EPIPE, not the answer).
  const huge = scoreBody([['', 'x'.repeat(17 << 20)]]);
  for (const [name, head] of [
    [
      '17 MiB body',
      `POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${huge.length}\r\n\r\n`,
    ],
    [
      '17 MiB body, chunked',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n',
    ],
  ]) {
    const body = name.endsWith('chunked')
      ? Buffer.concat([Buffer.from(`${huge.length.toString(16)}\r\n`), huge, Buffer.from('\r\n0\r\n\r\n')])
      : huge;
    cases.push({
      name: `size/${name}`,
      category: 'body size',
      target: 'strict',
      method: 'RAW',
      path: '',
      headers: {},
      raw: Buffer.concat([Buffer.from(head), body]),
      // A chunked body is refused only once 16 MiB have arrived; the server
      // then answers and closes while the client is still sending, and the
      // client may see the reset (EPIPE) instead of the 413.
      expect: name.endsWith('chunked') ? { status: [0, 413], codes: limit.codes } : limit,
      exclusive: true,
    });
  }

  // --- raw HTTP: what reaches Node's parser or lies about the body ----------
  // Node's parser refuses these before any route runs; the server's
  // clientError handler still answers {message, code}.
  const parser = (...status: number[]): Expect => ({
    status,
    codes: ['CLIP_INVALID_ARGUMENT', 'CLIP_HEADERS_TOO_LARGE'],
  });
  const rawCases: Array<[string, string | Buffer, Expect]> = [
    [
      'Content-Length claims 10 GB',
      `POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{}`,
      limit,
    ],
    [
      'Content-Length claims 17 MiB',
      `POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${17 << 20}\r\n\r\n{}`,
      limit,
    ],
    [
      'Content-Length negative',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\n\r\n{}',
      parser(400),
    ],
    [
      'Content-Length not a number',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}',
      parser(400),
    ],
    [
      'two different Content-Lengths',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
      parser(400),
    ],
    [
      'Content-Length and chunked (smuggling)',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n',
      parser(400),
    ],
    [
      'bad chunk size',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
      parser(0, 400),
    ],
    [
      'Content-Length longer than the body, then close',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"input_data"',
      parser(0, 400),
    ],
    ['garbage request line', 'HELLO\r\n\r\n', parser(400)],
    ['binary garbage', Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 131 + 7) & 255)), parser(0, 400)],
    ['HTTP/0.9 request', 'GET /\r\n', parser(0, 400)],
    [
      '64 KiB header',
      `POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Big: ${'a'.repeat(65_536)}\r\nContent-Length: 2\r\n\r\n{}`,
      parser(431, 400, 0),
    ],
    ['20 KiB URL', `GET /${'a'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`, parser(431, 414, 400, 0)],
    ['header without colon', 'POST /score HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n', parser(400)],
    ['NUL in a header', 'POST /score HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n', parser(400)],
    ['LF-only line endings (valid)', 'GET / HTTP/1.1\nHost: x\n\n', parser(200, 400)],
    [
      '5000 headers',
      `GET / HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 5000 }, (_, i) => `X-H${i}: v`).join('\r\n')}\r\n\r\n`,
      parser(200, 431, 400, 0),
    ],
  ];
  for (const [name, request, expect] of rawCases) {
    cases.push({
      name: `http/${name}`,
      category: 'raw HTTP',
      target: 'strict',
      method: 'RAW',
      path: '',
      headers: {},
      raw: Buffer.from(request),
      expect,
    });
  }

  // --- URL schemes and destinations refused by the strict server ------------
  const forbidden: Expect = { status: [400], codes: ['CLIP_URL_FORBIDDEN'], row: 1 };
  const forbiddenOrFailed: Expect = { status: [400], codes: ['CLIP_URL_FORBIDDEN', 'CLIP_IMAGE_FETCH_FAILED'], row: 1 };
  const refused: Array<[string, string, Expect]> = [
    ['file:', 'file:///etc/passwd', forbidden],
    ['file: upper case', 'FILE:///etc/passwd', forbidden],
    ['file: host form', 'file://localhost/etc/passwd', forbidden],
    ['ftp:', 'ftp://ftp.example.com/cat.jpg', forbidden],
    ['gopher:', 'gopher://127.0.0.1:70/_GET', forbidden],
    ['javascript:', 'javascript:alert(1)', forbidden],
    ['ws:', 'ws://127.0.0.1/', forbidden],
    ['jar:', 'jar:http://x/y.jar!/z', forbidden],
    ['dict:', 'dict://127.0.0.1:11211/stat', forbidden],
    ['unix socket form', 'http+unix://%2Fvar%2Frun%2Fdocker.sock/info', forbidden],
    ['127.0.0.1', `${context.imageOrigin}/ok.png`, forbidden],
    ['127.0.0.1 with credentials', context.imageOrigin.replace('http://', 'http://user:pass@') + '/ok.png', forbidden],
    ['localhost', 'http://localhost/', forbidden],
    ['LOCALHOST upper case', 'HTTP://LOCALHOST/', forbidden],
    ['localhost.', 'http://localhost./', forbiddenOrFailed],
    ['127.1 short form', 'http://127.1/', forbidden],
    ['decimal 2130706433', 'http://2130706433/', forbidden],
    ['hex 0x7f000001', 'http://0x7f000001/', forbidden],
    ['octal 0177.0.0.1', 'http://0177.0.0.1/', forbidden],
    ['0.0.0.0', 'http://0.0.0.0/', forbidden],
    ['[::1]', 'http://[::1]/', forbidden],
    ['[::]', 'http://[::]/', forbidden],
    ['[::ffff:127.0.0.1]', 'http://[::ffff:127.0.0.1]/', forbidden],
    ['[::ffff:7f00:1]', 'http://[::ffff:7f00:1]/', forbidden],
    ['[0:0:0:0:0:ffff:a9fe:a9fe]', 'http://[0:0:0:0:0:ffff:a9fe:a9fe]/', forbidden],
    ['[64:ff9b::7f00:1] NAT64', 'http://[64:ff9b::7f00:1]/', forbidden],
    ['[2002:7f00:1::] 6to4', 'http://[2002:7f00:1::]/', forbidden],
    ['[fc00::1] unique local', 'http://[fc00::1]/', forbidden],
    ['[fe80::1] link local', 'http://[fe80::1]/', forbidden],
    ['[ff02::1] multicast', 'http://[ff02::1]/', forbidden],
    ['169.254.169.254 metadata', 'http://169.254.169.254/latest/meta-data/', forbidden],
    ['10.0.0.1', 'http://10.0.0.1/x.png', forbidden],
    ['172.16.0.1', 'https://172.16.0.1/x.png', forbidden],
    ['192.168.1.1', 'http://192.168.1.1:8080/x.png', forbidden],
    ['100.64.0.1 CGNAT', 'http://100.64.0.1/', forbidden],
    ['192.0.2.1 documentation', 'http://192.0.2.1/', forbidden],
    ['224.0.0.1 multicast', 'http://224.0.0.1/', forbidden],
    ['255.255.255.255 broadcast', 'http://255.255.255.255/', forbidden],
    ['backslashes', 'http:\\\\127.0.0.1\\x.png', forbidden],
    ['userinfo trick', 'http://example.com@127.0.0.1/', forbidden],
    ['.invalid name', 'http://no-such-host.invalid/cat.jpg', forbiddenOrFailed],
    [
      'empty host',
      'http:///x.png',
      { status: [400], codes: ['CLIP_URL_FORBIDDEN', 'CLIP_IMAGE_FETCH_FAILED', 'CLIP_INVALID_ARGUMENT'], row: 1 },
    ],
    ['bad port', 'http://127.0.0.1:99999/', { status: [400], codes: INVALID, row: 1 }],
    ['bad IPv6', 'http://[::1/', { status: [400], codes: INVALID, row: 1 }],
    ['100 KB URL', `http://127.0.0.1/${'a'.repeat(100_000)}`, forbidden],
  ];
  for (const [name, url, expect] of refused) {
    add({
      name: `destination/${name}`,
      category: 'schemes and destinations',
      body: scoreBody([
        ['', 'ok'],
        [url, ''],
      ]),
      expect,
    });
  }

  // --- URLs to the local image server (open server: private URLs allowed) ---
  const origin = context.imageOrigin;
  const failed: Expect = { status: [400], codes: ['CLIP_IMAGE_FETCH_FAILED'], row: 0 };
  const urls: Array<[string, string, Expect, boolean?]> = [
    ['valid PNG', '/ok.png', ok],
    ['valid PNG without a content type', '/no-type', ok],
    ['application/octet-stream', '/octet', ok],
    ['image/png with parameters', '/type-params', ok],
    ['IMAGE/PNG upper case', '/type-upper', ok],
    ['text/html', '/html', failed],
    ['application/json', '/json', failed],
    ['content type "image" without subtype', '/type-image', failed],
    ['HTTP 404', '/status/404', failed],
    ['HTTP 500', '/status/500', failed],
    ['HTTP 204 (empty)', '/status/204', imageError(0)],
    ['HTTP 302 without Location', '/status/302', failed],
    ['redirect loop', '/loop', failed],
    ['4 redirects', '/chain/4', failed],
    ['3 redirects (valid)', '/chain/3', ok],
    ['relative redirect (valid)', '/redirect-relative', ok],
    ['303 redirect (valid)', '/redirect-303', ok],
    ['redirect to file:', '/redirect?to=file:///etc/passwd', { status: [400], codes: ['CLIP_URL_FORBIDDEN'], row: 0 }],
    ['redirect to ftp:', '/redirect?to=ftp://127.0.0.1/x', { status: [400], codes: ['CLIP_URL_FORBIDDEN'], row: 0 }],
    ['redirect to a bad URL', '/redirect?to=http://[::1', failed],
    ['declared 30 MiB', '/huge-declared', { status: [400], codes: ['CLIP_IMAGE_TOO_LARGE'], row: 0 }],
    ['streams 21 MiB without a length', '/huge-stream', { status: [400], codes: ['CLIP_IMAGE_TOO_LARGE'], row: 0 }],
    ['connection reset mid-body', '/reset', failed],
    ['empty body', '/empty', imageError(0)],
    ['garbage body', '/garbage', imageError(0)],
    ['gzip-encoded PNG', '/gzip', imageError(0)],
    ['20000x20000 bomb', '/bomb.png', { status: [400], codes: ['CLIP_IMAGE_TOO_LARGE'], row: 0 }],
    ['truncated JPEG', '/truncated.jpg', imageError(0)],
    ['headers never come (fetch timeout)', '/slow-headers', failed, true],
    ['body trickles (fetch timeout)', '/trickle', failed, true],
  ];
  for (const [name, route, expect, slow] of urls) {
    add({
      name: `url/${name}`,
      category: 'image URLs',
      target: 'open',
      body: scoreBody([[`${origin}${route}`, '']]),
      expect,
      slow,
    });
  }
  add({
    name: 'url/16 rows of one URL plus a 404 (the first failing row wins)',
    category: 'image URLs',
    target: 'open',
    body: scoreBody([...Array.from({ length: 16 }, () => [`${origin}/ok.png`, '']), [`${origin}/status/404`, '']]),
    expect: { status: [400], codes: ['CLIP_IMAGE_FETCH_FAILED'], row: 16 },
  });

  // --- the API key of the open server ---------------------------------------
  const unauthorized: Expect = { status: [401], codes: ['CLIP_UNAUTHORIZED'] };
  const keys: Array<[string, Record<string, string>, Expect]> = [
    ['no Authorization', { authorization: '' }, unauthorized],
    ['wrong key', { authorization: 'Bearer wrong' }, unauthorized],
    ['key as Basic', { authorization: `Basic ${b64(Buffer.from(`user:${context.apiKey}`))}` }, unauthorized],
    ['Bearer without a key', { authorization: 'Bearer ' }, unauthorized],
    ['key with a suffix', { authorization: `Bearer ${context.apiKey}x` }, unauthorized],
    ['key prefix', { authorization: `Bearer ${context.apiKey.slice(0, -1)}` }, unauthorized],
    ['8 KB key', { authorization: `Bearer ${'k'.repeat(8000)}` }, unauthorized],
    ['lower-case scheme (valid)', { authorization: `bearer ${context.apiKey}` }, ok],
  ];
  for (const [name, headers, expect] of keys) {
    const h = { ...headers };
    add({ name: `auth/${name}`, category: 'API key', target: 'open', headers: h, body, expect });
  }
  return cases;
}

/** sha256 of everything that defines the corpus: the same seeds give the same hash. */
export function corpusDigest(cases: Case[]): string {
  const hash = createHash('sha256');
  for (const c of cases) {
    hash.update(JSON.stringify({ ...c, body: undefined, raw: undefined }));
    if (c.body) hash.update(c.body);
    if (c.raw) hash.update(c.raw);
  }
  return hash.digest('hex');
}

if (require.main === module) {
  t.test('the corpus is deterministic, large and covers every category', async (t) => {
    const seeds = loadSeeds(path.resolve(__dirname, '..', 'fixtures', 'images'));
    const context = { seeds, imageOrigin: 'http://127.0.0.1:9', apiKey: 'k' };
    const first = buildCorpus(context);
    t.equal(corpusDigest(buildCorpus(context)), corpusDigest(first), 'same seeds, same corpus');
    t.ok(first.length >= 300, `${first.length} cases`);
    t.equal(new Set(first.map((c) => c.name)).size, first.length, 'case names are unique');
    t.ok(seeds.length >= 15, `${seeds.length} seed images`);
    const categories = new Set(first.map((c) => c.category));
    t.ok(categories.size >= 12, [...categories].join(', '));
  });
}
