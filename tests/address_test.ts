// Pure: classifies address text, never sends traffic.
import assert from "node:assert/strict";
import { classifyAddress, hostLiteral, parseIPv4Literal } from "../src/security/address.ts";

function refused(ip: string, range: string) {
  const verdict = classifyAddress(ip);
  assert.equal(verdict.allowed, false, `${ip} should be refused`);
  if (!verdict.allowed) assert.ok(verdict.reason.includes(range), `${ip}: ${verdict.reason}`);
}

function allowed(ip: string, family: 4 | 6) {
  const verdict = classifyAddress(ip);
  assert.equal(verdict.allowed, true, `${ip} should be allowed: ${JSON.stringify(verdict)}`);
  if (verdict.allowed) assert.equal(verdict.family, family);
}

Deno.test("every refused IPv4 range is refused, at both ends, with the range named", () => {
  const ranges: [string, string, string][] = [
    ["127.0.0.1", "127.255.255.255", "loopback (127.0.0.0/8)"],
    ["10.0.0.0", "10.255.255.255", "private (10.0.0.0/8)"],
    ["172.16.0.0", "172.31.255.255", "private (172.16.0.0/12)"],
    ["192.168.0.0", "192.168.255.255", "private (192.168.0.0/16)"],
    ["169.254.0.0", "169.254.255.255", "link-local (169.254.0.0/16)"],
    ["100.64.0.0", "100.127.255.255", "carrier-grade NAT (100.64.0.0/10)"],
    ["224.0.0.0", "239.255.255.255", "multicast (224.0.0.0/4)"],
    ["0.0.0.0", "0.255.255.255", "unspecified (0.0.0.0/8)"],
    ["240.0.0.0", "255.255.255.254", "reserved (240.0.0.0/4)"],
    ["192.0.2.0", "192.0.2.255", "documentation (192.0.2.0/24)"],
    ["198.18.0.0", "198.19.255.255", "benchmarking (198.18.0.0/15)"],
  ];
  for (const [first, last, reason] of ranges) {
    refused(first, reason);
    refused(last, reason);
  }
  refused("255.255.255.255", "broadcast (255.255.255.255/32)");
  refused("169.254.169.254", "cloud metadata");
  refused("169.254.169.254", "link-local (169.254.0.0/16)");
});

Deno.test("addresses just outside the refused IPv4 ranges are allowed", () => {
  for (
    const ip of [
      "8.8.8.8",
      "1.1.1.1",
      "9.255.255.255",
      "11.0.0.0",
      "172.15.255.255",
      "172.32.0.0",
      "192.167.255.255",
      "192.169.0.0",
      "100.63.255.255",
      "100.128.0.0",
      "126.255.255.255",
      "128.0.0.0",
      "169.253.255.255",
      "223.255.255.255",
      "93.184.215.14",
    ]
  ) allowed(ip, 4);
});

Deno.test("IPv4 in decimal, hex, octal and short notations parses as URL parsers do", () => {
  const loopback = 0x7f000001;
  for (
    const text of [
      "127.0.0.1",
      "2130706433",
      "0x7f000001",
      "0X7F000001",
      "0177.0.0.1",
      "0177.0.0.01",
      "0x7f.0.0.1",
      "127.1",
      "127.0.1",
      "0x7f.1",
      "017700000001",
      "127.0.0.1.",
    ]
  ) assert.equal(parseIPv4Literal(text), loopback, text);
  assert.equal(parseIPv4Literal("0"), 0);
  assert.equal(parseIPv4Literal("0x"), 0);
  assert.equal(parseIPv4Literal("4294967295"), 0xffffffff);
  for (
    const text of [
      "",
      "example.com",
      "4294967296",
      "256.0.0.1",
      "1.2.3.4.5",
      "08.0.0.1",
      "0x7g.0.0.1",
      "127.0.0.1..",
      "1.2.65536",
      "a.b.c.d",
      "1..2",
    ]
  ) assert.equal(parseIPv4Literal(text), null, text);
  // The WHATWG URL parser agrees on the forms accepted above.
  for (const text of ["2130706433", "0x7f000001", "0177.0.0.1", "127.1"]) {
    assert.equal(new URL(`http://${text}/`).hostname, "127.0.0.1", text);
  }
});

Deno.test("every IPv4 notation of a refused address is refused", () => {
  for (const text of ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1"]) {
    refused(text, "loopback (127.0.0.0/8)");
  }
  refused("0xa9fea9fe", "cloud metadata"); // 169.254.169.254
  refused("2852039166", "cloud metadata");
  refused("012.1", "private (10.0.0.0/8)");
  refused("0", "unspecified (0.0.0.0/8)");
  refused("3232235521", "private (192.168.0.0/16)");
});

Deno.test("every refused IPv6 range is refused, whatever the spelling", () => {
  refused("::1", "loopback (::1/128)");
  refused("0:0:0:0:0:0:0:1", "loopback (::1/128)");
  refused("[::1]", "loopback (::1/128)");
  refused("::", "unspecified (::/128)");
  refused("0::0", "unspecified (::/128)");
  refused("fe80::1", "link-local (fe80::/10)");
  refused("FEBF:ffff::1", "link-local (fe80::/10)");
  refused("fe80::1%eth0", "link-local (fe80::/10)");
  refused("fc00::1", "unique-local (fc00::/7)");
  refused("fd12:3456:789a::1", "unique-local (fc00::/7)");
  refused("ff02::1", "multicast (ff00::/8)");
  refused("ff0e::1", "multicast (ff00::/8)");
  refused("fec0::1", "site-local (fec0::/10)");
  refused("2001:db8::1", "documentation (2001:db8::/32)");
  refused("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo (2001::/32)");
  refused("100::1", "reserved");
  refused("64:ff9b:1::1", "local-use NAT64");
});

Deno.test("IPv6 forms embedding a refused IPv4 address are refused, naming both", () => {
  const cases: [string, string][] = [
    ["::ffff:127.0.0.1", "IPv4-mapped"],
    ["::ffff:7f00:1", "IPv4-mapped"],
    ["0:0:0:0:0:ffff:7f00:0001", "IPv4-mapped"],
    ["::ffff:0:7f00:1", "reserved"], // ::ffff:0:0:0/96 (SIIT) is outside 2000::/3 as well
    ["::127.0.0.1", "IPv4-compatible"],
    ["::7f00:1", "IPv4-compatible"],
    ["64:ff9b::127.0.0.1", "NAT64"],
    ["64:ff9b::7f00:1", "NAT64"],
    ["2002:7f00:1::", "6to4"],
    ["2002:7f00:0001:1234::5", "6to4"],
  ];
  for (const [ip, kind] of cases) {
    refused(ip, kind);
    if (kind !== "reserved") refused(ip, "loopback (127.0.0.0/8)");
  }
  refused("::ffff:169.254.169.254", "cloud metadata");
  refused("::ffff:a9fe:a9fe", "cloud metadata");
  refused("::ffff:10.1.2.3", "private (10.0.0.0/8)");
  refused("64:ff9b::192.168.1.1", "private (192.168.0.0/16)");
  refused("2002:c0a8:101::1", "private (192.168.0.0/16)");
  refused("2002:0a00:0001::1", "private (10.0.0.0/8)");
  refused("::ffff:0.0.0.0", "unspecified (0.0.0.0/8)");
  const verdict = classifyAddress("::ffff:7f00:1");
  assert.deepEqual(verdict, {
    allowed: false,
    address: "::ffff:7f00:1",
    reason: "IPv4-mapped (::ffff:0:0/96) form of 127.0.0.1, a loopback (127.0.0.0/8)",
  });
});

Deno.test("public IPv6 addresses, and embeddings of public IPv4, are allowed", () => {
  allowed("2606:4700:4700::1111", 6);
  allowed("2a00:1450:4001:82a::200e", 6);
  allowed("[2001:4860:4860::8888]", 6);
  allowed("::ffff:8.8.8.8", 6);
  allowed("64:ff9b::8.8.8.8", 6);
  allowed("2002:0808:0808::1", 6);
  refused("::8.8.8.8", "IPv4-compatible"); // deprecated form: nothing legitimate uses it
});

Deno.test("text that is not an address is refused", () => {
  for (
    const text of [
      "",
      "example.com",
      "1::2::3",
      "12345::",
      "::ffff:1.2.3",
      "1:2:3:4:5:6:7:8:9",
      "g::1",
    ]
  ) {
    refused(text, "not an IP address");
  }
});

Deno.test("hostLiteral gives canonical text for IP literals and null for names", () => {
  assert.equal(hostLiteral("[::1]"), "::1");
  assert.equal(hostLiteral("[0:0:0:0:0:ffff:7f00:1]"), "::ffff:7f00:1");
  assert.equal(hostLiteral("[::ffff:127.0.0.1]"), "::ffff:7f00:1");
  assert.equal(hostLiteral("[2001:DB8:0:0:1:0:0:1]"), "2001:db8::1:0:0:1");
  assert.equal(hostLiteral("[1:0:0:2:0:0:0:3]"), "1:0:0:2::3");
  assert.equal(hostLiteral("::1"), "::1");
  assert.equal(hostLiteral("127.1"), "127.0.0.1");
  assert.equal(hostLiteral("0x7f000001"), "127.0.0.1");
  assert.equal(hostLiteral("8.8.8.8"), "8.8.8.8");
  assert.equal(hostLiteral("example.com"), null);
  assert.equal(hostLiteral("localhost"), null);
  assert.equal(hostLiteral("1.2.3.4.example"), null);
  assert.equal(hostLiteral("[not-v6]"), null);
  // Agrees with how URL canonicalises the same hosts.
  for (const host of ["[::ffff:127.0.0.1]", "[0:0::1]", "[2001:DB8::0:1]"]) {
    assert.equal(`[${hostLiteral(host)}]`, new URL(`http://${host}/`).hostname, host);
  }
});
