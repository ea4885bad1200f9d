import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { ClipError, invalidArgument } from '../errors';
import { checkBoolean, checkInteger, endpointError } from './validate';

/** Bounds of image URL fetching. */
export interface ImageSourceOptions {
  /**
   * Fetch URLs whose host is (or resolves to) a private, loopback,
   * link-local or otherwise non-public address. Default false.
   */
  allowPrivateUrls?: boolean;
  /** Time to open the connection (TLS handshake included). Default 5000 ms. */
  connectTimeoutMs?: number;
  /** Time for the whole fetch of one image, redirects and body included. Default 20000 ms. */
  fetchTimeoutMs?: number;
  /** Largest image body fetched. Default 20 MiB. */
  maxImageBytes?: number;
  /** Redirects followed. Default 3. */
  maxRedirects?: number;
}

/** {@link ImageSourceOptions} with every default filled in. */
export type ResolvedImageSourceOptions = Required<ImageSourceOptions>;

const DEFAULTS: ResolvedImageSourceOptions = {
  allowPrivateUrls: false,
  connectTimeoutMs: 5_000,
  fetchTimeoutMs: 20_000,
  maxImageBytes: 20 * 1024 * 1024,
  maxRedirects: 3,
};

/** Checks the options once; throws `CLIP_INVALID_ARGUMENT`. */
export function resolveImageSourceOptions(options: ImageSourceOptions = {}, name = 'options'): ResolvedImageSourceOptions {
  return {
    allowPrivateUrls: checkBoolean(options.allowPrivateUrls, `${name}.allowPrivateUrls`, DEFAULTS.allowPrivateUrls),
    connectTimeoutMs: checkInteger(options.connectTimeoutMs, `${name}.connectTimeoutMs`, 1, DEFAULTS.connectTimeoutMs),
    fetchTimeoutMs: checkInteger(options.fetchTimeoutMs, `${name}.fetchTimeoutMs`, 1, DEFAULTS.fetchTimeoutMs),
    maxImageBytes: checkInteger(options.maxImageBytes, `${name}.maxImageBytes`, 1, DEFAULTS.maxImageBytes),
    maxRedirects: checkInteger(options.maxRedirects, `${name}.maxRedirects`, 0, DEFAULTS.maxRedirects),
  };
}

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
    throw endpointError(
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

/**
 * The bytes of an image string: decoded inline, or fetched with the bounds of
 * `options` (see {@link fetchImage}).
 *
 * Rejects with `CLIP_INVALID_ARGUMENT`, `CLIP_URL_FORBIDDEN`,
 * `CLIP_IMAGE_FETCH_FAILED`, `CLIP_IMAGE_TOO_LARGE` or `CLIP_ABORTED`.
 */
export async function loadImage(
  value: string,
  options: ResolvedImageSourceOptions,
  signal?: AbortSignal,
): Promise<Buffer> {
  const source = parseImageSource(value);
  return source.kind === 'inline' ? source.bytes : fetchImage(source.url, options, signal);
}

// ---------------------------------------------------------------------------
// Address policy

function parseIPv4(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return undefined;
    value = value * 256 + Number(part);
  }
  return value;
}

/** Eight 16-bit groups of an address net.isIPv6 accepts (zone id dropped). */
function parseIPv6(text: string): number[] | undefined {
  let s = text.split('%')[0].toLowerCase();
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseIPv4(tail);
    if (v4 === undefined) return undefined;
    s = `${s.slice(0, lastColon + 1)}${Math.floor(v4 / 65536).toString(16)}:${(v4 % 65536).toString(16)}`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...rest];
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return groups.map((g) => parseInt(g, 16));
}

const IPV4_BLOCKED: Array<[string, number]> = [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local (cloud metadata services live here)
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation
  ['192.88.99.0', 24], // 6to4 relay anycast
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation
  ['203.0.113.0', 24], // documentation
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
];
const IPV4_RANGES = IPV4_BLOCKED.map(([base, bits]) => {
  const size = 2 ** (32 - bits);
  const start = parseIPv4(base)!;
  return [start, start + size] as const;
});

function isBlockedIPv4(value: number): boolean {
  return IPV4_RANGES.some(([start, end]) => value >= start && value < end);
}

function isBlockedIPv6(g: number[]): boolean {
  const embedded = (hi: number, lo: number) => isBlockedIPv4(hi * 65536 + lo);
  if (g.slice(0, 5).every((x) => x === 0)) {
    if (g[5] === 0xffff) return embedded(g[6], g[7]); // IPv4-mapped
    if (g[5] === 0) return true; // unspecified, loopback, IPv4-compatible (deprecated)
  }
  if (g[0] === 0x64 && g[1] === 0xff9b) {
    if (g.slice(2, 6).every((x) => x === 0)) return embedded(g[6], g[7]); // NAT64 well-known prefix
    if (g[2] === 1) return true; // local-use NAT64
  }
  if (g[0] === 0x2002) return embedded(g[1], g[2]); // 6to4
  if (g[0] === 0x0100 && g[1] === 0 && g[2] === 0 && g[3] === 0) return true; // discard-only
  if (g[0] === 0x2001 && (g[1] === 0 || g[1] === 0x0db8)) return true; // Teredo, documentation
  if ((g[0] & 0xfe00) === 0xfc00) return true; // unique local fc00::/7
  if ((g[0] & 0xffc0) === 0xfe80) return true; // link-local
  if ((g[0] & 0xffc0) === 0xfec0) return true; // site-local (deprecated)
  if ((g[0] & 0xff00) === 0xff00) return true; // multicast
  return false;
}

/**
 * True for an address an image URL must not reach by default: private,
 * loopback, link-local, unspecified, multicast, carrier-grade NAT,
 * documentation and reserved ranges, IPv6 unique-local and link-local, and
 * IPv4-mapped/NAT64/6to4 forms of those. Unparsable text counts as blocked.
 */
export function isBlockedAddress(address: string): boolean {
  if (net.isIPv4(address)) return isBlockedIPv4(parseIPv4(address)!);
  if (net.isIPv6(address)) {
    const groups = parseIPv6(address);
    return groups === undefined || isBlockedIPv6(groups);
  }
  return true;
}

// ---------------------------------------------------------------------------
// Fetching

interface Target {
  address: string;
  family: 4 | 6;
}

function fetchFailed(url: URL, reason: string, cause?: unknown): ClipError {
  return endpointError('CLIP_IMAGE_FETCH_FAILED', `Could not fetch image URL ${redact(url)}: ${reason}`, { cause });
}

function forbidden(url: URL, reason: string): ClipError {
  return endpointError('CLIP_URL_FORBIDDEN', `Refused to fetch image URL ${redact(url)}: ${reason}`);
}

/** The URL without credentials and cut to a loggable length. */
function redact(url: URL): string {
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  const text = copy.href;
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** The one address the request will connect to, checked against the policy. */
async function resolveTarget(url: URL, options: ResolvedImageSourceOptions): Promise<Target> {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const family = net.isIP(host);
  if (family !== 0) {
    if (!options.allowPrivateUrls && isBlockedAddress(host)) {
      throw forbidden(url, `${host} is not a public address (enable private URLs to allow it)`);
    }
    return { address: host, family: family as 4 | 6 };
  }
  let addresses: dns.LookupAddress[];
  try {
    addresses = await dns.promises.lookup(host, { all: true, verbatim: true });
  } catch (error) {
    throw fetchFailed(url, `cannot resolve ${host} (${(error as NodeJS.ErrnoException).code ?? 'DNS error'})`, error);
  }
  const allowed = options.allowPrivateUrls ? addresses : addresses.filter((a) => !isBlockedAddress(a.address));
  if (allowed.length === 0) {
    const list = addresses.map((a) => a.address).join(', ');
    throw forbidden(url, `${host} resolves to non-public addresses only (${list}; enable private URLs to allow them)`);
  }
  return { address: allowed[0].address, family: allowed[0].family as 4 | 6 };
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

function isImageContentType(header: string | undefined): boolean {
  if (header === undefined || header.trim() === '') return true;
  const type = header.split(';')[0].trim().toLowerCase();
  return type.startsWith('image/') || type === 'application/octet-stream' || type === 'binary/octet-stream';
}

interface Response {
  status: number;
  location?: string;
  body?: Buffer;
}

/**
 * Fetches an image over http(s), within bounds: a connect timeout, a total
 * timeout, a byte limit, a redirect limit and a content type of `image/*` or
 * `application/octet-stream` (or none). Unless `allowPrivateUrls`, every hop
 * is checked after DNS resolution and the connection goes to the very address
 * that was checked, so a second DNS answer cannot redirect it (rebinding).
 *
 * Rejects with `CLIP_URL_FORBIDDEN`, `CLIP_IMAGE_FETCH_FAILED`,
 * `CLIP_IMAGE_TOO_LARGE` or `CLIP_ABORTED`.
 */
export async function fetchImage(
  url: URL,
  options: ResolvedImageSourceOptions,
  signal?: AbortSignal,
): Promise<Buffer> {
  if (signal?.aborted) throw new ClipError('CLIP_ABORTED', 'The operation was aborted', { cause: signal.reason });
  const controller = new AbortController();
  const timeout = new Error('timeout');
  const timer = setTimeout(() => controller.abort(timeout), options.fetchTimeoutMs);
  timer.unref();
  const onAbort = () => controller.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  let current = url;
  try {
    for (let redirects = 0; ; redirects++) {
      if (current.protocol !== 'http:' && current.protocol !== 'https:') {
        throw forbidden(current, `only http and https URLs are fetched, not ${current.protocol}`);
      }
      const target = await resolveTarget(current, options);
      if (controller.signal.aborted) throw controller.signal.reason;
      const response = await requestOnce(current, target, options, controller.signal);
      if (response.location !== undefined) {
        if (redirects >= options.maxRedirects) {
          throw fetchFailed(current, `more than ${options.maxRedirects} redirects`);
        }
        try {
          current = new URL(response.location, current);
        } catch {
          throw fetchFailed(current, `bad redirect location ${JSON.stringify(response.location.slice(0, 200))}`);
        }
        continue;
      }
      return response.body!;
    }
  } catch (error) {
    if (error instanceof ClipError) throw error;
    if (controller.signal.aborted) {
      if (controller.signal.reason === timeout) {
        throw fetchFailed(current, `no complete answer within ${options.fetchTimeoutMs} ms`);
      }
      throw new ClipError('CLIP_ABORTED', 'The operation was aborted', { cause: signal?.reason });
    }
    const e = error as NodeJS.ErrnoException;
    throw fetchFailed(current, e.code ? `${e.code} ${e.message}` : e.message, error);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** One GET on the pinned address: a redirect's location, or a checked body. */
function requestOnce(
  url: URL,
  target: Target,
  options: ResolvedImageSourceOptions,
  signal: AbortSignal,
): Promise<Response> {
  const secure = url.protocol === 'https:';
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return new Promise<Response>((resolve, reject) => {
    const lookup = (
      _hostname: string,
      lookupOptions: { all?: boolean },
      callback: (...args: unknown[]) => void,
    ) => {
      if (lookupOptions?.all) callback(null, [{ address: target.address, family: target.family }]);
      else callback(null, target.address, target.family);
    };
    const request = (secure ? https : http).request({
      protocol: url.protocol,
      hostname: host,
      port: url.port || undefined,
      path: `${url.pathname}${url.search}`,
      method: 'GET',
      headers: { accept: 'image/*, application/octet-stream;q=0.8', 'user-agent': 'clip-native' },
      auth: url.username ? `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}` : undefined,
      agent: false,
      lookup: lookup as unknown as typeof dns.lookup,
      family: target.family,
      servername: secure && net.isIP(host) === 0 ? host : undefined,
      signal,
    });
    const connectTimer = setTimeout(
      () => request.destroy(fetchFailed(url, `no connection within ${options.connectTimeoutMs} ms`)),
      options.connectTimeoutMs,
    );
    connectTimer.unref();
    request.on('socket', (socket) => {
      socket.once(secure ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
    });
    request.on('close', () => clearTimeout(connectTimer));
    request.on('error', reject);
    request.on('response', (response) => {
      const status = response.statusCode ?? 0;
      if (REDIRECTS.has(status) && response.headers.location) {
        response.resume();
        resolve({ status, location: response.headers.location });
        return;
      }
      const fail = (error: ClipError) => {
        response.destroy();
        reject(error);
      };
      if (status < 200 || status >= 300) {
        fail(fetchFailed(url, `HTTP ${status}`));
        return;
      }
      const contentType = response.headers['content-type'];
      if (!isImageContentType(contentType)) {
        fail(fetchFailed(url, `content type ${JSON.stringify(contentType)} is not an image`));
        return;
      }
      const tooLarge = () =>
        endpointError('CLIP_IMAGE_TOO_LARGE', `Image URL ${redact(url)} has more than ${options.maxImageBytes} bytes`);
      const declared = Number(response.headers['content-length']);
      if (Number.isFinite(declared) && declared > options.maxImageBytes) {
        fail(tooLarge());
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > options.maxImageBytes) fail(tooLarge());
        else chunks.push(chunk);
      });
      response.on('end', () => resolve({ status, body: Buffer.concat(chunks, size) }));
      response.on('error', reject);
    });
    request.end();
  });
}
