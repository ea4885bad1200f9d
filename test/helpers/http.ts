// An HTTP client for the tests: one request on a connection of its own (so concurrency is real), the whole answer.
import http from 'node:http';

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: any;
}

export interface RequestInit {
  /** Default: GET without a body, POST with one. */
  method?: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** Fail when no complete answer comes within this. Default: none. */
  timeoutMs?: number;
}

/** One request to `base` (`http://127.0.0.1:PORT`) + `path`. */
export function request(base: string, path: string, init: RequestInit = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    // An explicit length: Node sends a DELETE or OPTIONS body without one otherwise.
    const headers =
      init.body === undefined
        ? init.headers
        : { ...init.headers, 'content-length': String(Buffer.byteLength(init.body)) };
    const method = init.method ?? (init.body === undefined ? 'GET' : 'POST');
    const req = http.request(`${base}${path}`, { method, agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode!, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    if (init.timeoutMs !== undefined) {
      const timeoutMs = init.timeoutMs;
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    }
    // A server that answers early (413) may close before the body is written.
    req.on('error', reject);
    req.end(init.body);
  });
}

/** `POST /score` with a JSON body. */
export function postScore(base: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  return request(base, '/score', {
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json', ...headers },
  });
}
