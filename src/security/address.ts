/**
 * Classifies IP addresses for outbound requests (callbacks): only globally routable unicast
 * addresses are allowed. Pure: parses text, never resolves or connects.
 *
 * IPv6 is checked against an allow-list (global unicast 2000::/3) so ranges assigned later are
 * refused by default; IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64,
 * 6to4) are judged by the IPv4 address they reach.
 */

export type AddressVerdict =
  | { allowed: true; address: string; family: 4 | 6 }
  | { allowed: false; address: string; reason: string };

/** [first address, prefix length, reason], most specific first where ranges overlap. */
const _V4_REFUSED: [string, number, string][] = [
  ["255.255.255.255", 32, "broadcast (255.255.255.255/32)"],
  ["169.254.169.254", 32, "cloud metadata service, link-local (169.254.0.0/16)"],
  ["0.0.0.0", 8, "unspecified (0.0.0.0/8)"],
  ["10.0.0.0", 8, "private (10.0.0.0/8)"],
  ["100.64.0.0", 10, "carrier-grade NAT (100.64.0.0/10)"],
  ["127.0.0.0", 8, "loopback (127.0.0.0/8)"],
  ["169.254.0.0", 16, "link-local (169.254.0.0/16)"],
  ["172.16.0.0", 12, "private (172.16.0.0/12)"],
  ["192.0.0.0", 24, "IETF protocol assignment (192.0.0.0/24)"],
  ["192.0.2.0", 24, "documentation (192.0.2.0/24)"],
  ["192.88.99.0", 24, "6to4 relay anycast (192.88.99.0/24)"],
  ["192.168.0.0", 16, "private (192.168.0.0/16)"],
  ["198.18.0.0", 15, "benchmarking (198.18.0.0/15)"],
  ["198.51.100.0", 24, "documentation (198.51.100.0/24)"],
  ["203.0.113.0", 24, "documentation (203.0.113.0/24)"],
  ["224.0.0.0", 4, "multicast (224.0.0.0/4)"],
  ["240.0.0.0", 4, "reserved (240.0.0.0/4)"],
];

const _V4_TABLE = _V4_REFUSED.map(([first, bits, reason]) => ({
  network: _parseDotted(first)!,
  mask: bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0,
  reason,
}));

/** Why an IPv4 address (as a 32-bit number) is refused, or null when it is public. */
function _v4Reason(value: number): string | null {
  for (const { network, mask, reason } of _V4_TABLE) {
    if (((value & mask) >>> 0) === network) return reason;
  }
  return null;
}

function _parseDotted(text: string): number | null {
  const parts = text.split(".");
  if (parts.length !== 4) return null;
  let value = 0;
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part) || Number(part) > 255) return null;
    value = value * 256 + Number(part);
  }
  return value;
}

function _v4Text(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/**
 * Parses an IPv4 host the way WHATWG URL parsers (browsers, Deno's `URL`) do: one to four parts
 * separated by dots (one trailing dot allowed), each decimal, hex (`0x`) or octal (leading `0`);
 * the last part fills the remaining bytes, so "127.1" is 127.0.0.1 and "2130706433" is too.
 * Returns the address as an unsigned 32-bit number, or null when the text is not such a literal.
 */
export function parseIPv4Literal(host: string): number | null {
  const parts = host.split(".");
  if (parts.length > 1 && parts[parts.length - 1] === "") parts.pop();
  if (parts.length === 0 || parts.length > 4) return null;
  const numbers: number[] = [];
  for (const part of parts) {
    let digits = part;
    let radix = 10;
    if (/^0x/i.test(part)) {
      digits = part.slice(2);
      radix = 16;
    } else if (part.length > 1 && part.startsWith("0")) {
      digits = part.slice(1);
      radix = 8;
    }
    const pattern = radix === 16 ? /^[0-9a-f]*$/i : radix === 8 ? /^[0-7]*$/ : /^[0-9]+$/;
    if (!pattern.test(digits)) return null;
    numbers.push(digits === "" ? 0 : parseInt(digits, radix));
  }
  const last = numbers.pop()!;
  if (numbers.some((n) => n > 255)) return null;
  if (last >= 256 ** (4 - numbers.length)) return null;
  let value = 0;
  numbers.forEach((n, i) => value += n * 256 ** (3 - i));
  return value + last;
}

/** Parses IPv6 text (no brackets; a zone such as "%eth0" is ignored) into eight 16-bit groups. */
function _parseIPv6(text: string): number[] | null {
  const address = text.replace(/%[^%]+$/, "");
  if (!/^[0-9a-f:.]+$/i.test(address)) return null;
  const halves = address.split("::");
  if (halves.length > 2) return null;
  const groupsOf = (half: string): number[] | null => {
    if (half === "") return [];
    const groups: number[] = [];
    const pieces = half.split(":");
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i];
      if (piece.includes(".")) {
        // An embedded dotted IPv4 address may only be the last piece.
        const v4 = i === pieces.length - 1 ? _parseDotted(piece) : null;
        if (v4 === null) return null;
        groups.push(v4 >>> 16, v4 & 0xffff);
      } else {
        if (!/^[0-9a-f]{1,4}$/i.test(piece)) return null;
        groups.push(parseInt(piece, 16));
      }
    }
    return groups;
  };
  const head = groupsOf(halves[0]);
  const tail = halves.length === 2 ? groupsOf(halves[1]) : [];
  if (head === null || tail === null) return null;
  if (halves.length === 1) return head.length === 8 ? head : null;
  // The embedded IPv4 check above allows "::" before it; "::" must stand for at least one group.
  if (head.length + tail.length > 7) return null;
  return [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
}

/** RFC 5952 text: lowercase hex, the longest run (two or more) of zero groups shortened to "::". */
function _v6Text(groups: number[]): string {
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  const head = hex.slice(0, bestStart).join(":");
  const tail = hex.slice(bestStart + bestLength).join(":");
  return `${head}::${tail}`;
}

function _article(text: string): string {
  return /^[aeiou]/i.test(text) ? "an" : "a";
}

function _embedded(kind: string, v4: number): string | null {
  const reason = _v4Reason(v4);
  if (reason === null) return null;
  return `${kind} form of ${_v4Text(v4)}, ${_article(reason)} ${reason}`;
}

/** Why an IPv6 address is refused, or null when it may be reached. */
function _v6Reason(g: number[]): string | null {
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  const low32 = (g[6] << 16 | g[7]) >>> 0;
  if (zeros(0, 8)) return "unspecified (::/128)";
  if (zeros(0, 7) && g[7] === 1) return "loopback (::1/128)";
  if (zeros(0, 5) && g[5] === 0xffff) {
    return _embedded("IPv4-mapped (::ffff:0:0/96)", low32);
  }
  if (zeros(0, 6)) {
    return _embedded("IPv4-compatible (::/96)", low32) ??
      "deprecated IPv4-compatible (::/96)";
  }
  if (g[0] === 0x64 && g[1] === 0xff9b) {
    if (zeros(2, 6)) return _embedded("NAT64 (64:ff9b::/96)", low32);
    if (g[2] === 1) return "local-use NAT64 (64:ff9b:1::/48)";
  }
  if ((g[0] & 0xfe00) === 0xfc00) return "unique-local (fc00::/7)";
  if ((g[0] & 0xffc0) === 0xfe80) return "link-local (fe80::/10)";
  if ((g[0] & 0xffc0) === 0xfec0) return "site-local (fec0::/10)";
  if ((g[0] & 0xff00) === 0xff00) return "multicast (ff00::/8)";
  if ((g[0] & 0xe000) !== 0x2000) return "reserved (outside global unicast 2000::/3)";
  if (g[0] === 0x2001 && g[1] === 0) return "Teredo (2001::/32)";
  if (g[0] === 0x2001 && g[1] === 0x0db8) return "documentation (2001:db8::/32)";
  if (g[0] === 0x3fff && (g[1] & 0xf000) === 0) return "documentation (3fff::/20)";
  if (g[0] === 0x2002) return _embedded("6to4 (2002::/16)", (g[1] << 16 | g[2]) >>> 0);
  return null;
}

/**
 * Decides whether an outbound request may go to `ip` (dotted IPv4, any IPv4 form `URL` accepts,
 * or IPv6 with or without brackets). The reason names the range, e.g. "loopback (127.0.0.0/8)";
 * text that is not an IP address is refused too.
 */
export function classifyAddress(ip: string): AddressVerdict {
  const text = ip.trim();
  const bare = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  if (bare.includes(":")) {
    const groups = _parseIPv6(bare);
    if (groups === null) return { allowed: false, address: ip, reason: "not an IP address" };
    const address = _v6Text(groups);
    const reason = _v6Reason(groups);
    return reason === null
      ? { allowed: true, address, family: 6 }
      : { allowed: false, address, reason };
  }
  const value = parseIPv4Literal(bare);
  if (value === null) return { allowed: false, address: ip, reason: "not an IP address" };
  const address = _v4Text(value);
  const reason = _v4Reason(value);
  return reason === null
    ? { allowed: true, address, family: 4 }
    : { allowed: false, address, reason };
}

/**
 * When a URL hostname is an IP literal ("[::1]", "127.1", "0x7f000001", ...) returns its canonical
 * text ("::1", "127.0.0.1"); for a domain name returns null.
 */
export function hostLiteral(host: string): string | null {
  if (host.startsWith("[") && host.endsWith("]")) {
    const groups = _parseIPv6(host.slice(1, -1));
    return groups === null ? null : _v6Text(groups);
  }
  if (host.includes(":")) {
    const groups = _parseIPv6(host);
    return groups === null ? null : _v6Text(groups);
  }
  const value = parseIPv4Literal(host);
  return value === null ? null : _v4Text(value);
}
