/** Sends a batch; returns one outcome per item, in order: its value, or its own Error. */
export type SendBatch<I, O> = (items: I[]) => Promise<(O | Error)[]>;

export interface BatcherOptions {
  /** A batch goes out as soon as it holds this many items. */
  max: number;
  /** Runs `flush` later in the current turn (default: queueMicrotask). */
  schedule?: (flush: () => void) => void;
}

interface Queued<I, O> {
  item: I;
  resolve(value: O): void;
  reject(error: unknown): void;
}

/**
 * Turns the calls made in one turn of the event loop into one: `add` queues an item, and the
 * queue goes to `send` in a microtask (after the callbacks already queued: the continuations of
 * the replies that arrived with this turn's I/O), or at once when it holds `max` items. No timer:
 * a lone item is sent in its own turn, and with ioredis' auto-pipelining (which writes at the
 * turn's setImmediate) reaches Redis as soon as it would have without the batcher.
 *
 * Each caller gets its own outcome: its item's value or Error as `send` returns them, or the
 * error `send` threw (for every item of that batch: none of them is known to have succeeded).
 */
export class Batcher<I, O> {
  #queue: Queued<I, O>[] = [];
  readonly #schedule: (flush: () => void) => void;

  constructor(readonly send: SendBatch<I, O>, readonly options: BatcherOptions) {
    this.#schedule = options.schedule ?? queueMicrotask;
  }

  /** Queues `item` for the next batch; resolves with its own outcome. */
  add(item: I): Promise<O> {
    const { promise, resolve, reject } = Promise.withResolvers<O>();
    this.#queue.push({ item, resolve, reject });
    if (this.#queue.length >= this.options.max) this.#flush();
    else if (this.#queue.length === 1) this.#schedule(() => this.#flush());
    return promise;
  }

  #flush(): void {
    const batch = this.#queue;
    if (batch.length === 0) return;
    this.#queue = [];
    void this.#deliver(batch);
  }

  async #deliver(batch: Queued<I, O>[]): Promise<void> {
    let outcomes: (O | Error)[];
    try {
      outcomes = await this.send(batch.map((q) => q.item));
      if (outcomes.length !== batch.length) {
        throw new Error(`A batch of ${batch.length} got ${outcomes.length} outcomes`);
      }
    } catch (error) {
      for (const q of batch) q.reject(error);
      return;
    }
    batch.forEach((q, i) => {
      const outcome = outcomes[i];
      if (outcome instanceof Error) q.reject(outcome);
      else q.resolve(outcome);
    });
  }
}
