import { ClipError, invalidArgument } from '../errors';

const SCHEME = /^([a-zA-Z][a-zA-Z0-9+.-]*):/;
const BASE64 = /^(?:[A-Za-z0-9+/]*|[A-Za-z0-9_-]*)={0,2}$/;
const WHITESPACE = /\s+/g;

/** Where an image string points: a URL to fetch, or the bytes it carries. */
export type ImageSource = { kind: 'url'; url: URL } | { kind: 'inline'; bytes: Buffer };

/**
 * Classifies an image string as the endpoint reads it: an http(s) URL, a
 * `data:` URI with base64 content, or base64 (standard or URL-safe alphabet;
 * MIME line breaks and other whitespace are ignored).
 *
 * Throws `CLIP_URL_FORBIDDEN` for any other scheme (`file:`, `ftp:`, …) and
 * `CLIP_INVALID_ARGUMENT` for text that is none of these.
 */
export function parseImageSource(value: string, name = 'image'): ImageSource {
  const text = value.trim();
  const scheme = SCHEME.exec(text)?.[1].toLowerCase();
  if (scheme === 'http' || scheme === 'https') {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw invalidArgument('a valid http(s) URL', name, value);
    }
    return { kind: 'url', url };
  }
  if (scheme === 'data') {
    const comma = text.indexOf(',');
    const meta = comma < 0 ? '' : text.slice(5, comma).toLowerCase();
    if (comma < 0 || !meta.split(';').includes('base64')) {
      throw invalidArgument('a data: URI with base64 content', name, value);
    }
    return { kind: 'inline', bytes: decodeBase64(text.slice(comma + 1), name, value) };
  }
  if (scheme !== undefined) {
    throw new ClipError(
      'CLIP_URL_FORBIDDEN',
      `Expected an http(s) URL, base64 or a data: URI for ${name} but received a "${scheme}:" URL`,
    );
  }
  return { kind: 'inline', bytes: decodeBase64(text, name, value) };
}

function decodeBase64(encoded: string, name: string, original: string): Buffer {
  const compact = encoded.replace(WHITESPACE, '');
  const unpadded = compact.replace(/=+$/, '');
  if (!BASE64.test(compact) || unpadded.length % 4 === 1 || unpadded.length === 0) {
    throw invalidArgument('an http(s) URL, base64 or a data: URI', name, original);
  }
  return Buffer.from(unpadded, 'base64');
}
