// A stand-in for the Hugging Face hub on 127.0.0.1: the routes the model download uses (model info at a
// revision, the file tree, resolve/<revision>/<file> with ETag, X-Linked-Etag, X-Repo-Commit and Range).
import { createHash } from 'node:crypto';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';

export interface FakeRepo {
  /** commit sha -> file path -> content */
  commits: Record<string, Record<string, Buffer>>;
  /** branch or tag -> commit sha */
  refs: Record<string, string>;
  /** Answer 401 without `Authorization: Bearer <token>`. */
  token?: string;
}

export interface FakeHub {
  url: string;
  /** Every request: `METHOD path [range]`. */
  requests: string[];
  /** The next download of this file sends `bytes` bytes and then drops the connection. */
  cut?: { file: string; bytes: number };
  /** Downloads of this file wait for `until` before they answer. */
  hold?: { file: string; until: Promise<void> };
  close(): Promise<void>;
}

const isLfs = (file: string) => /\.(safetensors|bin|h5|msgpack)$/.test(file);
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const gitSha1 = (data: Buffer) => createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');

/** A commit sha made from a label, for readable tests. */
export function fakeCommit(label: string): string {
  return createHash('sha1').update(label).digest('hex');
}

export async function startFakeHub(repos: Record<string, FakeRepo>): Promise<FakeHub> {
  const hub: FakeHub = { url: '', requests: [], close: () => Promise.resolve() };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    hub.requests.push(`${req.method} ${url.pathname}${req.headers.range ? ` ${req.headers.range}` : ''}`);
    const fail = (status: number, code: string) => {
      res.writeHead(status, { 'content-type': 'application/json', 'x-error-code': code });
      res.end(JSON.stringify({ error: code }));
    };
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/(revision|tree)\/([^/]+)$/.exec(url.pathname);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const repoId = decodeURIComponent((api ?? resolve)?.[1] ?? '');
    const repo = repos[repoId];
    if (!repo) return fail(404, 'RepoNotFound');
    if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) return fail(401, 'GatedRepo');
    const revision = decodeURIComponent((api ? api[3] : resolve![2]) ?? '');
    const commit = repo.commits[revision] ? revision : repo.refs[revision];
    if (!commit) return fail(404, 'RevisionNotFound');
    const files = repo.commits[commit];
    if (api?.[2] === 'revision') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          _id: repoId,
          id: repoId,
          sha: commit,
          private: false,
          siblings: Object.keys(files).map((rfilename) => ({ rfilename })),
        }),
      );
      return;
    }
    if (api?.[2] === 'tree') {
      const entries = Object.entries(files).map(([path, data]) => ({
        type: 'file',
        path,
        size: data.length,
        oid: gitSha1(data),
        ...(isLfs(path) ? { lfs: { oid: sha256(data), size: data.length, pointerSize: 134 } } : {}),
      }));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(entries));
      return;
    }
    const name = decodeURIComponent(resolve![3]);
    const data = files[name];
    if (!data) return fail(404, 'EntryNotFound');
    const etag = isLfs(name) ? sha256(data) : gitSha1(data);
    const headers: Record<string, string | number> = {
      etag: `"${etag}"`,
      'x-repo-commit': commit,
      'accept-ranges': 'bytes',
      ...(isLfs(name) ? { 'x-linked-etag': `"${etag}"`, 'x-linked-size': data.length } : {}),
    };
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      if (start >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` });
        return res.end();
      }
      headers['content-range'] = `bytes ${start}-${data.length - 1}/${data.length}`;
    }
    headers['content-length'] = data.length - start;
    res.writeHead(range ? 206 : 200, headers);
    if (req.method === 'HEAD') return res.end();
    if (hub.hold && hub.hold.file === name) {
      void hub.hold.until.then(() => res.end(data.subarray(start)));
      return;
    }
    if (hub.cut && hub.cut.file === name) {
      const { bytes } = hub.cut;
      hub.cut = undefined;
      res.write(data.subarray(start, start + bytes), () => res.destroy());
      return;
    }
    res.end(data.subarray(start));
  });
  // As a forward proxy: CONNECT tunnels (what proxy clients open, for http: targets too) lead to this server.
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    hub.requests.push(`CONNECT ${req.url}`);
    const upstream = net.connect((server.address() as AddressInfo).port, '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hub.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  hub.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return hub;
}
