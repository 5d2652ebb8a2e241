/**
 * Bounds on reading request bodies, around `Deno.serve`. Deno 2.9's `Deno.serve` has no header or
 * body timeouts and no connection cap, and drains an unread request body to its end (however slow
 * or long) before the connection can close. So this guard:
 *
 * - admits at most `readsMax` body reads at once, `readsPerAddress` per client address; past either
 *   cap a request waits at most `admitWaitMs` for a slot (a burst of quick small bodies passes),
 *   then the route answers 503 without reading;
 * - gives each body read `timeoutMs` (the route stops reading, frees the slot and the bytes read so
 *   far, and answers 408);
 * - after any answer sent before the body was read to its end (refused credentials, over
 *   MAX_BODY_BYTES, timed out, over the caps) makes Deno drop the connection instead of draining
 *   it: the answer is written chunked with `connection: close`, and its stream then fails. The
 *   client reads the status and the problem body, then sees the connection reset.
 *
 * Limits of doing this inside Deno.serve (measured with Deno 2.9.6): Deno acts on the failed
 * answer when it next reads from the connection, so a client that is still sending (a refused or
 * oversized upload) is cut at once, while a client that has stopped sending keeps its idle socket
 * (no slot, no buffered bytes) until it sends again or goes away. Header deadlines are not
 * enforced: the handler only runs once the headers are complete, and Deno.serve has no option for
 * them. Both need a TCP-level guard (or a reverse proxy) in front.
 */
import type { Logger } from "../log.ts";
import { Counter } from "../metrics/samples.ts";

export interface UploadLimits {
  /** How long a body may take to arrive, from the moment the handler runs. */
  timeoutMs: number;
  /** Bodies read at once, in all. */
  readsMax: number;
  /** Bodies read at once from one client address. */
  readsPerAddress: number;
  /** How long a request past a cap waits for a slot before its 503 (default 250 ms). */
  admitWaitMs?: number;
}

type Release = () => void;

/** The failure a closing answer's stream ends with; Deno.serve reports it to `onError`. */
class ConnectionClosed extends Error {
  constructor() {
    super("Connection closed by the upload guard");
  }
}

/** How long an answer's stream stays open before it fails and takes the connection down. */
const CLOSE_DELAY_MS = 50;

interface Waiter {
  address: string;
  admitted(release: Release | null): void;
}

/** Counters of the guard's refusals since the process started. */
export interface UploadCounters {
  /** Uploads the client abandoned before the body was complete. */
  aborted: Counter;
  /** Body reads cut at the deadline. */
  timedOut: Counter;
  /** Requests answered 503 because a body-read cap was reached. */
  busy: Counter;
  /** Connections closed after an answer sent before the body was read to its end. */
  closed: Counter;
}

export class UploadGuard {
  readonly counters: UploadCounters = {
    aborted: new Counter(),
    timedOut: new Counter(),
    busy: new Counter(),
    closed: new Counter(),
  };
  #reading = 0;
  #perAddress = new Map<string, number>();
  #waiters: Waiter[] = [];
  #closing = new WeakSet<Request>();

  constructor(readonly limits: UploadLimits, readonly log: Logger) {}

  /** Bodies being read right now. */
  get reading(): number {
    return this.#reading;
  }

  /**
   * A body-read slot for a client address, waiting up to `admitWaitMs` while either cap is
   * reached; null when none came free. Call the returned function once the read has ended,
   * however it ended.
   */
  admit(address: string): Promise<Release | null> {
    const now = this.#take(address);
    const waitMs = this.limits.admitWaitMs ?? 250;
    if (now || waitMs <= 0) {
      if (!now) this.counters.busy.add();
      return Promise.resolve(now);
    }
    const { promise, resolve } = Promise.withResolvers<Release | null>();
    const timer = setTimeout(() => {
      this.#waiters = this.#waiters.filter((w) => w !== waiter);
      this.counters.busy.add();
      resolve(null);
    }, waitMs);
    const waiter: Waiter = {
      address,
      admitted: (release) => {
        clearTimeout(timer);
        resolve(release);
      },
    };
    this.#waiters.push(waiter);
    return promise;
  }

  #take(address: string): Release | null {
    const mine = this.#perAddress.get(address) ?? 0;
    if (this.#reading >= this.limits.readsMax || mine >= this.limits.readsPerAddress) return null;
    this.#reading++;
    this.#perAddress.set(address, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#reading--;
      const left = (this.#perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.#perAddress.set(address, left);
      else this.#perAddress.delete(address);
      this.#wake();
    };
  }

  /** Hands freed slots to waiters, oldest first, skipping those whose address is still full. */
  #wake(): void {
    for (let i = 0; i < this.#waiters.length && this.#reading < this.limits.readsMax;) {
      const release = this.#take(this.#waiters[i].address);
      if (!release) {
        i++;
        continue;
      }
      const [waiter] = this.#waiters.splice(i, 1);
      waiter.admitted(release);
    }
  }

  /** The answer to `request` is sent before its body was read to the end: close, do not drain. */
  closeAfter(request: Request): void {
    this.#closing.add(request);
  }

  /**
   * For Deno.serve's `onError`: stays quiet about the connections this guard closes (one error
   * line per refused upload would flood the log), logs anything else.
   */
  readonly onError = (error: unknown): Response => {
    if (!(error instanceof ConnectionClosed)) {
      this.log.error("Unhandled server error", { error: String(error) });
    }
    return new Response(null, { status: 500 });
  };

  /** Wraps a fetch handler for Deno.serve: answers marked by {@linkcode closeAfter} close. */
  wrap<A extends Deno.Addr>(
    handler: (request: Request, info: Deno.ServeHandlerInfo<A>) => Response | Promise<Response>,
  ): (request: Request, info: Deno.ServeHandlerInfo<A>) => Promise<Response> {
    const closing = this.#closing;
    const closed = this.counters.closed;
    return async function guardUploads(request, info) {
      const response = await handler(request, info);
      if (!closing.has(request)) return response;
      closed.add();
      return await closingResponse(response);
    };
  }
}

/**
 * The same answer, sent chunked and then failed on purpose: Deno writes the head and the body,
 * then drops the connection instead of draining the rest of the request body.
 */
async function closingResponse(response: Response): Promise<Response> {
  const body = new Uint8Array(await response.arrayBuffer());
  const headers = new Headers(response.headers);
  headers.delete("content-length");
  headers.set("connection", "close");
  let sent = false;
  const stream = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sent && body.byteLength) {
        sent = true;
        controller.enqueue(body);
        return;
      }
      // Fail only once the answer had time to leave: failing at once may drop it unsent.
      await new Promise((resolve) => setTimeout(resolve, CLOSE_DELAY_MS));
      controller.error(new ConnectionClosed());
    },
  });
  return new Response(stream, { status: response.status, headers });
}
