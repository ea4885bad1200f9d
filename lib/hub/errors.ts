import { ClipError } from '../errors';
import { formatReference, type HubReference } from './reference';

/** A model that could not be fetched or converted: CLIP_MODEL_LOAD_FAILED naming the repo, revision and cause. */
export function hubLoadFailed(reference: HubReference, cause: string, error?: unknown): ClipError {
  return new ClipError(
    'CLIP_MODEL_LOAD_FAILED',
    `Could not load the model ${formatReference(reference)} (repo ${reference.repo}, revision ${reference.revision}): ${cause}`,
    { cause: error },
  );
}

/** A hub answer other than 2xx. */
export class HubHttpError extends Error {
  constructor(
    readonly status: number,
    readonly url: string,
    readonly errorCode: string | undefined,
  ) {
    super(`HTTP ${status} from ${url}${errorCode ? ` (${errorCode})` : ''}`);
  }
}

/** The connection failed (refused, reset, DNS, TLS, timeout): no answer from the hub at all. */
export function isNetworkError(error: unknown): boolean {
  if (error instanceof HubHttpError) return false;
  const e = error as { name?: string; message?: string; cause?: { code?: string }; code?: string } | null;
  if (!e) return false;
  if (e.name === 'TypeError' && e.message === 'fetch failed') return true;
  if (e.name === 'TimeoutError') return true;
  const code = e.code ?? e.cause?.code;
  return typeof code === 'string' && /^(E[A-Z]+|UND_ERR_[A-Z_]+)$/.test(code) && code !== 'ENOSPC' && code !== 'EDQUOT';
}

/** The file system is out of space (or quota). */
export function isDiskFull(error: unknown): boolean {
  const code = (error as { code?: string } | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** A person-readable cause for a failed hub exchange. */
export function describeHubError(error: unknown, settings: { endpoint: string; token?: string }): string {
  if (error instanceof HubHttpError || typeof (error as { statusCode?: unknown })?.statusCode === 'number') {
    const status = error instanceof HubHttpError ? error.status : (error as { statusCode: number }).statusCode;
    const code = error instanceof HubHttpError ? error.errorCode : undefined;
    if (status === 401 || status === 403) {
      return (
        `access denied (HTTP ${status}${code ? `, ${code}` : ''}): the repository is gated or private; ` +
        (settings.token
          ? 'the token in HF_TOKEN has no access to it (accept its terms on the hub with that account)'
          : 'accept its terms on the hub and set HF_TOKEN to an access token')
      );
    }
    if (status === 404) {
      return code === 'RevisionNotFound' || code === 'EntryNotFound'
        ? `not found on ${settings.endpoint} (HTTP 404, ${code})`
        : `no such model repository on ${settings.endpoint} (HTTP 404${code ? `, ${code}` : ''})`;
    }
    return `the hub answered HTTP ${status}${code ? ` (${code})` : ''}`;
  }
  if (isDiskFull(error)) return `disk full (${(error as Error).message})`;
  if (isNetworkError(error)) {
    const e = error as { cause?: { code?: string; message?: string }; code?: string; message?: string };
    const detail = e.cause?.code ?? e.code ?? e.cause?.message ?? e.message;
    return (
      `network error reaching ${settings.endpoint} (${detail}); set HF_ENDPOINT for a mirror, ` +
      'HTTPS_PROXY for a proxy, or HF_HUB_OFFLINE=1 to use only what is cached'
    );
  }
  return (error as Error)?.message ?? String(error);
}
