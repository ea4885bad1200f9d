import { checkBoolean, checkInteger } from '../check';
import { ClipError } from '../errors';

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
export function resolveImageSourceOptions(
  options: ImageSourceOptions = {},
  name = 'options',
): ResolvedImageSourceOptions {
  return {
    allowPrivateUrls: checkBoolean(options.allowPrivateUrls, `${name}.allowPrivateUrls`, DEFAULTS.allowPrivateUrls),
    connectTimeoutMs: checkInteger(options.connectTimeoutMs, `${name}.connectTimeoutMs`, 1, DEFAULTS.connectTimeoutMs),
    fetchTimeoutMs: checkInteger(options.fetchTimeoutMs, `${name}.fetchTimeoutMs`, 1, DEFAULTS.fetchTimeoutMs),
    maxImageBytes: checkInteger(options.maxImageBytes, `${name}.maxImageBytes`, 1, DEFAULTS.maxImageBytes),
    maxRedirects: checkInteger(options.maxRedirects, `${name}.maxRedirects`, 0, DEFAULTS.maxRedirects),
  };
}

/**
 * Fetches an image over http(s), within bounds: a connect timeout, a total
 * timeout, a byte limit, a redirect limit and a content type of `image/*` or
 * `application/octet-stream` (or none). Unless `allowPrivateUrls`, every hop
 * is checked after DNS resolution and the connection goes to the very address
 * that was checked, so a second DNS answer cannot redirect it (rebinding).
 *
 * The HTTP client (node:http, node:https, node:dns) is loaded on the first
 * fetch, so that `require('clip-native')` does not load it.
 *
 * Rejects with `CLIP_URL_FORBIDDEN`, `CLIP_IMAGE_FETCH_FAILED`,
 * `CLIP_IMAGE_TOO_LARGE` or `CLIP_ABORTED`.
 */
export async function fetchImage(url: URL, options: ResolvedImageSourceOptions, signal?: AbortSignal): Promise<Buffer> {
  if (signal?.aborted) throw new ClipError('CLIP_ABORTED', 'The operation was aborted', { cause: signal.reason });
  const { fetchBounded } = await import('./client');
  return fetchBounded(url, options, signal);
}
