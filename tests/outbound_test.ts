// Network rule: every byte these tests send goes to loopback. Made-up hostnames ("*.test") are
// mapped to 127.0.0.1 by a stub resolver that refuses any other name, so the system resolver is
// never asked; a "forbidden" target is always a loopback server that counts connections, to prove
// the refusal happened before connecting.
import assert from "node:assert/strict";
import { type AddressVerdict, classifyAddress } from "../src/security/address.ts";
import {
  checkUrlSyntax,
  type OutboundOptions,
  RefusedUrlError,
  safeFetch,
} from "../src/security/outbound.ts";

// Test-only CA and a certificate for "public.test" signed by it (EC P-256, valid until 2126).
// Generated with openssl for this file; the key protects nothing.
const TEST_CA = `-----BEGIN CERTIFICATE-----
MIIBnDCCAUOgAwIBAgIURpDw7yb8tmxMQHvDLkytsQfxXoowCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQb3V0Ym91bmRfdGVzdCBDQTAgFw0yNjExMjgxMzI5NTNaGA8y
MTI2MTEwNDEzMjk1M1owGzEZMBcGA1UEAwwQb3V0Ym91bmRfdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABL56E8NvIHVo3Vn2GYf4Bi/r7soZUKE8SKl5
jGnEYcANP6E+tvd0wr8MbAi7fttMCn6sqBOMD+4vZtHeqJymANyjYzBhMB0GA1Ud
DgQWBBSDT87x/qX0vfvZuwBohvPJjb8AQzAfBgNVHSMEGDAWgBSDT87x/qX0vfvZ
uwBohvPJjb8AQzAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwICBDAKBggq
hkjOPQQDAgNHADBEAiA4GcCwnxZSrDUFFJf9/RyBC9K//mYvTDXGMLOEDeYTPQIg
Y5rK2b0qzi8cACVSuF8hIaoqVgcm570jKhj3kU6pm0k=
-----END CERTIFICATE-----
`;
const PUBLIC_TEST_CERT = `-----BEGIN CERTIFICATE-----
MIIBrzCCAVWgAwIBAgIUMB/xvHYbm8it6TdMfJTQjIaot7cwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQb3V0Ym91bmRfdGVzdCBDQTAgFw0yNjExMjgxMzI5NTNaGA8y
MTI2MTEwNDEzMjk1M1owFjEUMBIGA1UEAwwLcHVibGljLnRlc3QwWTATBgcqhkjO
PQIBBggqhkjOPQMBBwNCAAT7KQnhUVttOnufvvzphqsxBhiXNK0rAqT77BshEF7n
rizNIe8SURJLRhkly7qd6YpjTotEf2xnUN3S/RweyxVPo3oweDAWBgNVHREEDzAN
ggtwdWJsaWMudGVzdDAJBgNVHRMEAjAAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMB0G
A1UdDgQWBBTXgcnn75GF5G0nfdtUTJZmZRp0vTAfBgNVHSMEGDAWgBSDT87x/qX0
vfvZuwBohvPJjb8AQzAKBggqhkjOPQQDAgNIADBFAiEA7OTk5elCM1jYbsZFoFHg
p07EiBZojAR7RVPhePZbGbUCIBJ1XjN+Wd632AqROySxBeVX/ZUVuqBAEM9hrISf
OgIY
-----END CERTIFICATE-----
`;
const PUBLIC_TEST_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5IGs69Mdvj5GkvYG
J16QQr0ItxyrjIltZfqvriJuvqahRANCAAT7KQnhUVttOnufvvzphqsxBhiXNK0r
AqT77BshEF7nrizNIe8SURJLRhkly7qd6YpjTotEf2xnUN3S/RweyxVP
-----END PRIVATE KEY-----
`;

/** Maps made-up names to loopback, counting lookups; throws for anything else. */
function stubResolver(names: Record<string, string[]>) {
  const calls: string[] = [];
  const resolve = (host: string) => {
    calls.push(host);
    const addresses = names[host];
    if (!addresses) return Promise.reject(new Error(`Test resolver has no entry for "${host}"`));
    for (const address of addresses) assert.ok(address.startsWith("127.") || address === "::1");
    return Promise.resolve(addresses);
  };
  return { resolve, calls };
}

/** Allows loopback only for the given hostnames, as if they were public; the rest as usual. */
function allowHosts(...hosts: string[]): (address: string, host: string) => AddressVerdict {
  return (address, host) => {
    const verdict = classifyAddress(address);
    if (verdict.allowed || !hosts.includes(host)) return verdict;
    assert.ok(verdict.address.startsWith("127."), "tests only ever allow loopback");
    return { allowed: true, address: verdict.address, family: 4 };
  };
}

/** A raw TCP listener on loopback that counts connections and answers "200 ok" to each. */
function tripwire() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let connections = 0;
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        connections++;
        try {
          await conn.read(new Uint8Array(4096));
          await conn.write(
            new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
          );
        } catch {
          // The client went away: still counted.
        } finally {
          conn.close();
        }
      }
    } catch {
      // Listener closed.
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get connections() {
      return connections;
    },
    async [Symbol.asyncDispose]() {
      listener.close();
      await accepting;
    },
  };
}

interface Seen {
  method: string;
  url: string;
  host: string | null;
  headers: Headers;
  body: string;
}

/** Deno.serve on 127.0.0.1 recording every request it receives. */
function recordingServer(
  handler: (req: Request, seen: Seen[]) => Response | Promise<Response> = () => new Response("ok"),
  tls?: { cert: string; key: string },
) {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {}, ...tls },
    async (req) => {
      seen.push({
        method: req.method,
        url: req.url,
        host: req.headers.get("host"),
        headers: req.headers,
        body: await req.text(),
      });
      return handler(req, seen);
    },
  );
  return {
    port: server.addr.port,
    seen,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

const base: OutboundOptions = { allowPrivate: false, timeoutMs: 3_000 };
const post: RequestInit = {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: '{"status":"completed"}',
};

async function assertRefused(promise: Promise<unknown>, pattern: RegExp) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof RefusedUrlError, `expected RefusedUrlError, got ${error}`);
    assert.match(error.message, pattern);
    return true;
  });
}

Deno.test("a loopback URL is refused before connecting, in every notation", async () => {
  await using trap = tripwire();
  const p = trap.port;
  await assertRefused(
    safeFetch(`http://127.0.0.1:${p}/cb`, post, base),
    /^Callback URL refused: 127\.0\.0\.1 is a loopback \(127\.0\.0\.0\/8\) address$/,
  );
  for (
    const url of [
      `http://127.1:${p}/`,
      `http://2130706433:${p}/`,
      `http://0x7f000001:${p}/`,
      `http://0177.0.0.1:${p}/`,
      `http://[::ffff:127.0.0.1]:${p}/`,
      `http://[::ffff:7f00:1]:${p}/`,
      `https://127.0.0.1:${p}/`,
    ]
  ) await assertRefused(safeFetch(url, post, base), /loopback \(127\.0\.0\.0\/8\)/);
  await assertRefused(safeFetch(`http://[::1]:${p}/`, post, base), /loopback \(::1\/128\)/);
  assert.equal(trap.connections, 0);
});

Deno.test("with allowPrivate the loopback server is reached, body and headers intact", async () => {
  await using server = recordingServer((req) =>
    Response.json({ got: req.method }, { status: 201, headers: { "x-reply": "yes" } })
  );
  const response = await safeFetch(`http://127.0.0.1:${server.port}/cb?x=1`, {
    ...post,
    headers: { ...post.headers, authorization: "Bearer t" },
  }, { ...base, allowPrivate: true });
  assert.equal(response.status, 201);
  assert.equal(response.headers.get("x-reply"), "yes");
  assert.equal(response.url, `http://127.0.0.1:${server.port}/cb?x=1`);
  assert.deepEqual(await response.json(), { got: "POST" });
  assert.equal(server.seen.length, 1);
  const [request] = server.seen;
  assert.equal(request.body, '{"status":"completed"}');
  assert.equal(request.headers.get("content-type"), "application/json");
  assert.equal(request.headers.get("authorization"), "Bearer t");
  assert.equal(request.url, `http://127.0.0.1:${server.port}/cb?x=1`);
});

Deno.test("a name that resolves to loopback is refused before connecting", async () => {
  await using trap = tripwire();
  const { resolve, calls } = stubResolver({ localhost: ["127.0.0.1"] });
  await assertRefused(
    safeFetch(`http://localhost:${trap.port}/cb`, post, { ...base, resolve }),
    /^Callback URL refused: host "localhost" resolves to 127\.0\.0\.1, a loopback \(127\.0\.0\.0\/8\) address$/,
  );
  assert.deepEqual(calls, ["localhost"]);
  assert.equal(trap.connections, 0);
});

Deno.test("every resolved address is checked, not only the first", async () => {
  await using trap = tripwire();
  const { resolve } = stubResolver({ "mixed.test": ["127.0.0.2", "127.0.0.1"] });
  // 127.0.0.2 stands in for a public address; 127.0.0.1 is refused.
  const check = (address: string): AddressVerdict =>
    address === "127.0.0.2" ? { allowed: true, address, family: 4 } : classifyAddress(address);
  await assertRefused(
    safeFetch(`http://mixed.test:${trap.port}/`, post, { ...base, resolve, check }),
    /host "mixed\.test" resolves to 127\.0\.0\.1, a loopback/,
  );
  assert.equal(trap.connections, 0);
});

Deno.test("the connection goes to the checked address; Host keeps the hostname", async () => {
  await using server = recordingServer();
  // A rebinding resolver: the first answer passes the check, later ones would not.
  let answers = 0;
  const resolve = (host: string) => {
    assert.equal(host, "pinned.test");
    return Promise.resolve(answers++ === 0 ? ["127.0.0.1"] : ["127.0.0.9"]);
  };
  const check = (address: string, host: string) => {
    assert.equal(address, "127.0.0.1", "only the first answer may ever be checked");
    return allowHosts("pinned.test")(address, host);
  };
  const response = await safeFetch(`http://pinned.test:${server.port}/cb`, post, {
    ...base,
    resolve,
    check,
  });
  assert.equal(await response.text(), "ok");
  assert.equal(answers, 1);
  assert.equal(server.seen[0].host, `pinned.test:${server.port}`);
});

Deno.test("https is pinned to the checked address and verified against the hostname", async () => {
  await using server = recordingServer(undefined, {
    cert: PUBLIC_TEST_CERT,
    key: PUBLIC_TEST_KEY,
  });
  const { resolve, calls } = stubResolver({
    "public.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
  });
  const options = {
    ...base,
    resolve,
    check: allowHosts("public.test", "other.test"),
    caCerts: [TEST_CA],
  };
  const response = await safeFetch(`https://public.test:${server.port}/cb`, post, options);
  assert.equal(response.status, 200);
  assert.equal(await response.text(), "ok");
  assert.equal(server.seen[0].host, `public.test:${server.port}`);
  // Same address, but the certificate does not name other.test: TLS fails, nothing is sent.
  await assert.rejects(
    safeFetch(`https://other.test:${server.port}/cb`, post, options),
    /other\.test/,
  );
  // Without the test CA the certificate is not trusted.
  await assert.rejects(
    safeFetch(`https://public.test:${server.port}/cb`, post, { ...options, caCerts: undefined }),
  );
  assert.equal(server.seen.length, 1);
  assert.deepEqual(calls, ["public.test", "other.test", "public.test"]);
});

Deno.test("a redirect to a refused host is not followed, and never connected to", async () => {
  await using trap = tripwire();
  await using server = recordingServer((req) => {
    const target = new URL(req.url).searchParams.get("to")!;
    return new Response(null, { status: 302, headers: { location: target } });
  });
  const { resolve } = stubResolver({
    "allowed.test": ["127.0.0.1"],
    "evil.test": ["127.0.0.1"],
  });
  const options = { ...base, resolve, check: allowHosts("allowed.test") };
  const start = `http://allowed.test:${server.port}/cb?to=`;
  await assertRefused(
    safeFetch(`${start}${encodeURIComponent(`http://evil.test:${trap.port}/`)}`, post, options),
    /host "evil\.test" resolves to 127\.0\.0\.1, a loopback/,
  );
  await assertRefused(
    safeFetch(`${start}${encodeURIComponent(`http://127.0.0.1:${trap.port}/`)}`, post, options),
    /127\.0\.0\.1 is a loopback/,
  );
  await assertRefused(
    safeFetch(`${start}${encodeURIComponent(`http://0x7f.1:${trap.port}/`)}`, post, options),
    /127\.0\.0\.1 is a loopback/,
  );
  await assertRefused(
    safeFetch(`${start}${encodeURIComponent("file:///etc/passwd")}`, post, options),
    /scheme "file"/,
  );
  assert.equal(server.seen.length, 4);
  assert.equal(trap.connections, 0);
});

Deno.test("redirects are followed like fetch: 303 turns into GET, 307 keeps the body", async () => {
  await using second = recordingServer((req) => new Response(`second saw ${req.method}`));
  await using first = recordingServer((req) => {
    const status = Number(new URL(req.url).searchParams.get("status"));
    return new Response("moved", {
      status,
      headers: { location: `http://second.test:${second.port}/done` },
    });
  });
  const { resolve } = stubResolver({
    "first.test": ["127.0.0.1"],
    "second.test": ["127.0.0.1"],
  });
  const options = { ...base, resolve, check: allowHosts("first.test", "second.test") };
  const init = { ...post, headers: { ...post.headers, authorization: "Bearer t" } };

  const after303 = await safeFetch(`http://first.test:${first.port}/?status=303`, init, options);
  assert.equal(await after303.text(), "second saw GET");
  assert.equal(after303.url, `http://second.test:${second.port}/done`);
  assert.equal(second.seen[0].body, "");
  assert.equal(second.seen[0].headers.get("content-type"), null);
  assert.equal(second.seen[0].headers.get("authorization"), null, "dropped across origins");

  const after307 = await safeFetch(`http://first.test:${first.port}/?status=307`, init, options);
  assert.equal(await after307.text(), "second saw POST");
  assert.equal(second.seen[1].body, '{"status":"completed"}');
  assert.equal(second.seen[1].host, `second.test:${second.port}`);
});

Deno.test("strict redirects: only 307/308 within the same origin are followed", async () => {
  await using second = recordingServer((req) => new Response(`second saw ${req.method}`));
  await using first = recordingServer((req) => {
    const params = new URL(req.url).searchParams;
    if (params.get("done")) {
      return new Response(`first saw ${req.method} ${req.body ? "body" : ""}`);
    }
    const host = params.get("host")!;
    const port = host === "first.test" ? first.port : second.port;
    return new Response(null, {
      status: Number(params.get("status")),
      headers: { location: `http://${host}:${port}/?done=1` },
    });
  });
  const { resolve } = stubResolver({ "first.test": ["127.0.0.1"], "second.test": ["127.0.0.1"] });
  const options = {
    ...base,
    resolve,
    check: allowHosts("first.test", "second.test"),
    strictRedirects: true,
  };
  const from = (status: number, host: string) =>
    safeFetch(`http://first.test:${first.port}/?status=${status}&host=${host}`, post, options);
  for (const status of [307, 308]) {
    assert.equal(await (await from(status, "first.test")).text(), "first saw POST body");
  }
  for (const status of [301, 302, 303]) {
    await assertRefused(
      from(status, "first.test"),
      new RegExp(`redirect ${status} .* not followed`),
    );
  }
  await assertRefused(from(307, "second.test"), /redirect 307 to http:\/\/second\.test/);
  assert.equal(second.seen.length, 0, "another origin never receives the signed request");
});

Deno.test("more than maxRedirects redirects are refused", async () => {
  await using server = recordingServer((req) =>
    new Response(null, { status: 307, headers: { location: req.url } })
  );
  const { resolve } = stubResolver({ "loop.test": ["127.0.0.1"] });
  const options = { ...base, resolve, check: allowHosts("loop.test"), maxRedirects: 2 };
  await assertRefused(
    safeFetch(`http://loop.test:${server.port}/`, post, options),
    /more than 2 redirects/,
  );
  assert.equal(server.seen.length, 3);
});

Deno.test("credentials and schemes other than http(s) are refused before connecting", async () => {
  await using trap = tripwire();
  const open = { ...base, allowPrivate: true };
  await assertRefused(
    safeFetch(`http://user:pass@127.0.0.1:${trap.port}/`, post, open),
    /credentials/,
  );
  await assertRefused(safeFetch(`http://user@127.0.0.1:${trap.port}/`, post, open), /credentials/);
  await assertRefused(safeFetch(`ftp://127.0.0.1:${trap.port}/`, {}, open), /scheme "ftp"/);
  await assertRefused(safeFetch("file:///etc/passwd", {}, open), /scheme "file"/);
  await assertRefused(safeFetch("data:text/plain,hi", {}, open), /scheme "data"/);
  await assertRefused(safeFetch("not a url", {}, open), /not a valid URL/);
  assert.equal(trap.connections, 0);
});

Deno.test("a slow callback times out, and an abort signal cancels", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  await using server = recordingServer(async () => {
    await released;
    return new Response("late");
  });
  const url = `http://127.0.0.1:${server.port}/`;
  try {
    await assert.rejects(
      safeFetch(url, post, { ...base, allowPrivate: true, timeoutMs: 100 }),
      (error: Error) => error.name === "TimeoutError",
    );
    const controller = new AbortController();
    const pending = safeFetch(url, post, {
      ...base,
      allowPrivate: true,
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new Error("Stopping")), 50);
    await assert.rejects(pending, /Stopping/);
  } finally {
    release();
  }
});

Deno.test("a resolver failure is an ordinary error, not a refusal", async () => {
  const { resolve } = stubResolver({});
  await assert.rejects(
    safeFetch("http://nowhere.test/", post, { ...base, resolve }),
    (error: Error) => !(error instanceof RefusedUrlError) && /nowhere\.test/.test(error.message),
  );
});

Deno.test("checkUrlSyntax refuses forbidden literals in any notation, names pass", () => {
  for (
    const url of [
      "http://127.0.0.1/",
      "http://127.1/",
      "http://2130706433/",
      "http://0x7f000001/",
      "http://0177.0.0.1/",
      "http://[::1]/",
      "http://[::ffff:127.0.0.1]/",
      "http://[::ffff:7f00:1]/",
      "http://[64:ff9b::7f00:1]/",
      "http://[2002:7f00:1::]/",
      "http://10.1.2.3/",
      "http://169.254.169.254/latest/meta-data/",
      "http://[fe80::1]/",
      "http://[fd00::1]/",
      "http://100.64.0.1/",
      "http://0.0.0.0/",
      "http://localhost/",
      "http://api.localhost./",
    ]
  ) assert.notEqual(checkUrlSyntax(url, false), null, url);
  assert.equal(
    checkUrlSyntax("http://0x7f000001:8080/cb", false),
    "127.0.0.1 is a loopback (127.0.0.0/8) address",
  );
  assert.match(checkUrlSyntax("http://169.254.169.254/", false)!, /cloud metadata/);
  assert.equal(checkUrlSyntax("https://hooks.example.com/cb?x=1", false), null);
  assert.equal(checkUrlSyntax("http://8.8.8.8/", false), null);
  assert.equal(checkUrlSyntax("http://[2606:4700:4700::1111]/", false), null);
  // allowPrivate lifts the address rules, not the scheme and credential rules.
  assert.equal(checkUrlSyntax("http://127.0.0.1:8000/", true), null);
  assert.equal(checkUrlSyntax("http://localhost:8000/", true), null);
  assert.match(checkUrlSyntax("ftp://example.com/", true)!, /scheme "ftp"/);
  assert.match(checkUrlSyntax("https://a:b@example.com/", true)!, /credentials/);
  assert.match(checkUrlSyntax("https://a@example.com/", false)!, /credentials/);
  assert.match(checkUrlSyntax("::not a url::", false)!, /not a valid URL/);
});
