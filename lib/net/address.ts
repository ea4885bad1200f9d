import net from 'node:net';

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
