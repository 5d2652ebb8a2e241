/**
 * SSRF-safe outbound HTTP for callbacks: a URL whose host is, or resolves to, a refused address
 * (loopback, private, link-local, metadata, ...) is never connected to.
 *
 * Pinning: every hop resolves its host once, checks every address, and the connection goes to
 * exactly those checked addresses, so a DNS answer that changes between the check and the connect
 * (DNS rebinding) has nothing to act on. Deno's `fetch` cannot be told which address to dial while
 * keeping TLS verification against the hostname (`Deno.createHttpClient`'s `proxy.transport:
 * "tcp"` speaks proxy-style plain HTTP even for https URLs, and rewriting an https URL to the IP
 * would verify the certificate against the IP). Node's `http(s).request` can: its `lookup` option
 * replaces name resolution, while the Host header, SNI and certificate check keep using the
 * hostname. So requests go through `node:http`/`node:https` with a `lookup` that only ever answers
 * the checked addresses. An IP literal host is checked as is and connected to directly.
 */
import { request as httpRequest } from "node:http";
import type { IncomingMessage, RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import { lookup as dnsLookup } from "node:dns/promises";
import { Readable } from "node:stream";
import { Buffer } from "node:buffer";
import { UnrecoverableError } from "../errors.ts";
import { type AddressVerdict, classifyAddress, hostLiteral } from "./address.ts";

export interface OutboundOptions {
  /** Skip the address check (development, tests): every address is allowed. */
  allowPrivate: boolean;
  /**
   * Resolves a hostname to IP addresses. Default: the system resolver (getaddrinfo, so
   * /etc/hosts applies, as it would for any client), IPv4 and IPv6.
   */
  resolve?: (host: string) => Promise<string[]>;
  /** Redirects followed, each hop checked like the first; default 3. */
  maxRedirects?: number;
  /**
   * Follow only 307/308 within the same origin (method, body and headers kept) and refuse any
   * other redirect, instead of following like fetch. For signed deliveries: a 301/302/303 would
   * turn the POST into a bodiless GET whose 2xx says nothing about delivery, and another origin
   * should not receive the signed message.
   */
  strictRedirects?: boolean;
  /** Deadline for the whole exchange, redirects and response body included. */
  timeoutMs: number;
  signal?: AbortSignal;
  /**
   * Decides on each address a hop would connect to. Default: `classifyAddress`, or allow all
   * when `allowPrivate`. Tests use it to allow one loopback hostname and not another.
   */
  check?: (address: string, host: string) => AddressVerdict;
  /** Root certificates (PEM) trusted for https instead of the defaults, as Node's `ca`. */
  caCerts?: string[];
}

/** Why a URL was refused: an address it resolves to, a redirect, or the URL itself. */
export type RefusalKind = "address" | "redirect" | "url";

/** A callback URL that must not be fetched. Unrecoverable: retrying cannot change the answer. */
export class RefusedUrlError extends UnrecoverableError {
  readonly kind: RefusalKind;
  constructor(
    readonly url: string,
    readonly reason: string,
    options?: ErrorOptions & { kind?: RefusalKind },
  ) {
    super(`Callback URL refused: ${reason}`, options);
    this.name = "RefusedUrlError";
    this.kind = options?.kind ?? "url";
  }
}

/** A callback host that does not resolve (or resolves to nothing). Retryable: DNS may recover. */
export class HostNotFoundError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "HostNotFoundError";
  }
}

/**
 * A short reason for an outbound failure that names no host, address or URL, for what the
 * public reads (task views and timelines); the error's message keeps the detail for the log.
 * Refusals say what was refused, not which address: `refused: private address` tells a reader
 * nothing about internal names or the network behind them.
 */
export function outboundReason(error: unknown): string {
  if (error instanceof RefusedUrlError) {
    switch (error.kind) {
      case "address":
        return "refused: private address";
      case "redirect":
        return "refused: redirect";
      case "url":
        return "refused: invalid URL";
    }
  }
  if (error instanceof HostNotFoundError) return "connection failed: host not found";
  if (error instanceof Error && error.name === "TimeoutError") return "timeout";
  if (error instanceof Error && error.message.startsWith("Callback answered with an invalid")) {
    return "invalid response";
  }
  return "connection failed";
}

const _REDIRECTS = new Set([301, 302, 303, 307, 308]);
const _NULL_BODY = new Set([101, 204, 205, 304]);
/** Headers that must not follow a redirect to another origin (as fetch does for Authorization). */
const _CREDENTIAL_HEADERS = ["authorization", "cookie", "proxy-authorization"];
/** Headers the connection owns; a caller's value would contradict the pinned request. */
const _HOP_HEADERS = ["host", "connection", "content-length", "transfer-encoding", "keep-alive"];

function _article(text: string): string {
  return /^[aeiou]/i.test(text) ? "an" : "a";
}

function _isLocalhostName(host: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, "");
  return name === "localhost" || name.endsWith(".localhost");
}

/** Scheme, credentials and host present; null when acceptable. */
function _shapeProblem(url: URL): string | null {
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `scheme "${url.protocol.replace(/:$/, "")}" is not http or https`;
  }
  if (url.username !== "" || url.password !== "") return "credentials in the URL are not allowed";
  if (url.hostname === "") return "the URL has no host";
  return null;
}

/**
 * Checks a callback URL without resolving it, for ingest: http(s) only, no credentials, and,
 * unless `allowPrivate`, no host that is a refused IP literal in any notation URL parsers accept
 * ("127.1", "0x7f000001", "[::ffff:127.0.0.1]") or a localhost name. Returns why the URL is
 * refused, or null. A domain name still has to pass {@linkcode safeFetch}'s resolution check.
 */
export function checkUrlSyntax(url: string, allowPrivate: boolean): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "not a valid URL";
  }
  const problem = _shapeProblem(parsed);
  if (problem !== null || allowPrivate) return problem;
  const literal = hostLiteral(parsed.hostname);
  if (literal !== null) {
    const verdict = classifyAddress(literal);
    return verdict.allowed
      ? null
      : `${verdict.address} is ${_article(verdict.reason)} ${verdict.reason} address`;
  }
  if (_isLocalhostName(parsed.hostname)) return `host "${parsed.hostname}" is a loopback name`;
  return null;
}

async function _systemResolve(host: string): Promise<string[]> {
  const answers = await dnsLookup(host, { all: true, verbatim: true });
  return answers.map((answer) => answer.address);
}

interface _Target {
  url: URL;
  /** Hostname without IPv6 brackets, as Node wants it. */
  hostname: string;
  addresses: { address: string; family: 4 | 6 }[];
}

/** Resolves a hop's host once and checks every address; throws RefusedUrlError on any refusal. */
async function _checkTarget(url: URL, options: OutboundOptions): Promise<_Target> {
  const problem = _shapeProblem(url);
  if (problem !== null) throw new RefusedUrlError(url.href, problem);
  const check = options.check ??
    ((address: string) => {
      const verdict = classifyAddress(address);
      if (verdict.allowed || !options.allowPrivate) return verdict;
      // allowPrivate: any parseable address goes.
      return {
        allowed: true,
        address: verdict.address,
        family: verdict.address.includes(":") ? 6 : 4,
      };
    }) as (address: string, host: string) => AddressVerdict;
  const host = url.hostname;
  const literal = hostLiteral(host);
  let resolved: string[];
  if (literal !== null) {
    resolved = [literal];
  } else {
    try {
      resolved = await (options.resolve ?? _systemResolve)(host);
    } catch (cause) {
      throw new HostNotFoundError(`Could not resolve callback host "${host}"`, { cause });
    }
    if (resolved.length === 0) {
      throw new HostNotFoundError(`Callback host "${host}" resolves to no address`);
    }
  }
  const addresses: _Target["addresses"] = [];
  for (const address of resolved) {
    const verdict = check(address, host);
    if (!verdict.allowed) {
      const what = literal !== null
        ? `${verdict.address} is`
        : `host "${host}" resolves to ${verdict.address},`;
      throw new RefusedUrlError(
        url.href,
        `${what} ${_article(verdict.reason)} ${verdict.reason} address`,
        { kind: "address" },
      );
    }
    addresses.push({ address: verdict.address, family: verdict.family });
  }
  const hostname = host.startsWith("[") ? host.slice(1, -1) : host;
  return { url, hostname, addresses };
}

/** Sends one request to a checked target; resolves when the response head arrives. */
function _send(
  target: _Target,
  request: { method: string; headers: Headers; body: Uint8Array | null },
  options: { signal: AbortSignal; caCerts?: string[] },
): Promise<IncomingMessage> {
  const { url, hostname, addresses } = target;
  const headers: Record<string, string> = {};
  request.headers.forEach((value, name) => {
    if (!_HOP_HEADERS.includes(name)) headers[name] = value;
  });
  if (request.body !== null) headers["content-length"] = String(request.body.byteLength);
  const requestOptions: RequestOptions & { ca?: string[] } = {
    hostname,
    port: url.port === "" ? undefined : Number(url.port),
    path: `${url.pathname}${url.search}`,
    method: request.method,
    headers,
    agent: false, // no pooled sockets: each hop connects to its own checked address
    // The pin: Node asks this instead of DNS, and gets only the addresses checked above.
    lookup: ((
      _host: string,
      lookupOptions: { all?: boolean },
      callback: (...args: unknown[]) => void,
    ) => {
      if (lookupOptions?.all) callback(null, addresses);
      else callback(null, addresses[0].address, addresses[0].family);
    }) as RequestOptions["lookup"],
  };
  if (url.protocol === "https:" && options.caCerts) requestOptions.ca = options.caCerts;
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;

  return new Promise((resolve, reject) => {
    if (options.signal.aborted) return reject(options.signal.reason);
    const req = send(requestOptions);
    const onAbort = () => req.destroy(options.signal.reason);
    options.signal.addEventListener("abort", onAbort, { once: true });
    req.once("response", (res) => {
      options.signal.removeEventListener("abort", onAbort);
      resolve(res);
    });
    req.once("error", (error) => {
      options.signal.removeEventListener("abort", onAbort);
      reject(error);
    });
    req.end(request.body === null ? undefined : Buffer.from(request.body));
  });
}

/** Wraps a Node response as a fetch Response; `done` runs once the body is finished or dropped. */
function _toResponse(
  res: IncomingMessage,
  context: { url: URL; method: string; signal: AbortSignal; done: () => void },
): Response {
  const { url, method, signal, done } = context;
  const onAbort = () => res.destroy(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  res.once("close", () => {
    signal.removeEventListener("abort", onAbort);
    done();
  });
  const status = res.statusCode ?? 0;
  const headers = new Headers();
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
    try {
      headers.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
    } catch {
      // A header fetch would not accept either: dropped.
    }
  }
  if (status < 200 || status > 599) {
    res.destroy();
    throw new Error(`Callback answered with an invalid status ${status}`);
  }
  let body: ReadableStream<Uint8Array> | null = null;
  if (_NULL_BODY.has(status) || method === "HEAD") res.resume();
  else body = Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>;
  const response = new Response(body, { status, statusText: res.statusMessage, headers });
  Object.defineProperty(response, "url", { value: url.href });
  return response;
}

/**
 * Fetches a callback URL without ever connecting to a refused address: the host of every hop
 * (redirects included, `redirect` in `init` is ignored) is resolved once, every address it
 * resolves to is checked, and the connection goes only to those checked addresses, while TLS is
 * still verified against the hostname. Throws RefusedUrlError before connecting when a hop is
 * refused, or when more than `maxRedirects` redirects follow one another.
 *
 * The request body is buffered (callback bodies are small) so it can be resent on a 307/308.
 * Redirects follow fetch: 303, and 301/302 after a POST, become a GET without a body; a
 * redirect to another origin drops Authorization, Cookie and Proxy-Authorization.
 */
export async function safeFetch(
  url: string,
  init: RequestInit,
  options: OutboundOptions,
): Promise<Response> {
  let current: URL;
  try {
    current = new URL(url);
  } catch (cause) {
    throw new RefusedUrlError(url, "not a valid URL", { cause });
  }
  const shape = _shapeProblem(current);
  if (shape !== null) throw new RefusedUrlError(url, shape);

  // Request normalises headers and body exactly as fetch would.
  const normalised = new Request(current, { ...init, redirect: "manual" });
  let method = normalised.method;
  const headers = new Headers(normalised.headers);
  let body: Uint8Array | null = normalised.body === null
    ? null
    : new Uint8Array(await normalised.arrayBuffer());

  const controller = new AbortController();
  const timer = setTimeout(() => {
    controller.abort(
      new DOMException(`Callback timed out after ${options.timeoutMs} ms`, "TimeoutError"),
    );
  }, options.timeoutMs);
  const outer = [options.signal, init.signal].filter((s): s is AbortSignal => !!s);
  const forward = (event: Event) => controller.abort((event.target as AbortSignal).reason);
  for (const signal of outer) {
    if (signal.aborted) controller.abort(signal.reason);
    else signal.addEventListener("abort", forward, { once: true });
  }
  let cleaned = false;
  const cleanup = () => {
    if (cleaned) return;
    cleaned = true;
    clearTimeout(timer);
    for (const signal of outer) signal.removeEventListener("abort", forward);
  };

  const maxRedirects = options.maxRedirects ?? 3;
  try {
    for (let redirects = 0;; redirects++) {
      controller.signal.throwIfAborted();
      const target = await _checkTarget(current, options);
      controller.signal.throwIfAborted();
      const res = await _send(target, { method, headers, body }, {
        signal: controller.signal,
        caCerts: options.caCerts,
      });
      const location = res.headers.location;
      if (!_REDIRECTS.has(res.statusCode ?? 0) || !location) {
        return _toResponse(res, { url: current, method, signal: controller.signal, done: cleanup });
      }
      res.destroy(); // a redirect's body is of no use; the connection is not reused anyway
      if (redirects >= maxRedirects) {
        throw new RefusedUrlError(url, `more than ${maxRedirects} redirects`, {
          kind: "redirect",
        });
      }
      let next: URL;
      try {
        next = new URL(location, current);
      } catch (cause) {
        throw new RefusedUrlError(url, `redirect to an invalid URL "${location}"`, {
          cause,
          kind: "redirect",
        });
      }
      const status = res.statusCode!;
      if (options.strictRedirects && (status < 307 || next.origin !== current.origin)) {
        throw new RefusedUrlError(
          url,
          `redirect ${status} to ${next.origin}${next.pathname} not followed (only 307/308 ` +
            "within the same origin are)",
          { kind: "redirect" },
        );
      }
      if (
        (status === 303 && method !== "HEAD") ||
        ((status === 301 || status === 302) && method === "POST")
      ) {
        method = "GET";
        body = null;
        headers.delete("content-type");
      }
      if (next.origin !== current.origin) {
        for (const name of _CREDENTIAL_HEADERS) headers.delete(name);
      }
      current = next;
    }
  } catch (error) {
    cleanup();
    throw error;
  }
}
