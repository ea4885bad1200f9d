import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { ClipError } from '../errors';
import { isBlockedAddress } from './address';
import type { ResolvedImageSourceOptions } from './fetch';

interface Target {
  address: string;
  family: 4 | 6;
}

function fetchFailed(url: URL, reason: string, cause?: unknown): ClipError {
  return new ClipError('CLIP_IMAGE_FETCH_FAILED', `Could not fetch image URL ${redact(url)}: ${reason}`, { cause });
}

function forbidden(url: URL, reason: string): ClipError {
  return new ClipError('CLIP_URL_FORBIDDEN', `Refused to fetch image URL ${redact(url)}: ${reason}`);
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

/** {@link fetchImage}'s work, in the module that loads the HTTP client. */
export async function fetchBounded(
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
    const lookup = (_hostname: string, lookupOptions: { all?: boolean }, callback: (...args: unknown[]) => void) => {
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
        new ClipError('CLIP_IMAGE_TOO_LARGE', `Image URL ${redact(url)} has more than ${options.maxImageBytes} bytes`);
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
