/**
 * A bounded reservoir of samples (the most recent `capacity`), for percentiles in logs; `observe`
 * also sees every sample (a Prometheus histogram, src/metrics/registry.ts).
 */
export class Samples {
  #values: number[] = [];
  #next = 0;
  #count = 0;
  constructor(readonly capacity = 100_000, readonly observe?: (value: number) => void) {}

  add(value: number): void {
    this.observe?.(value);
    if (this.#values.length < this.capacity) this.#values.push(value);
    else this.#values[this.#next] = value;
    this.#next = (this.#next + 1) % this.capacity;
    this.#count++;
  }

  /** Count since the last reset and percentiles of the retained samples. */
  summary(): { count: number; p50: number; p99: number; max: number } {
    const sorted = [...this.#values].sort((a, b) => a - b);
    const at = (q: number) =>
      sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : 0;
    return { count: this.#count, p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? 0 };
  }

  reset(): void {
    this.#values = [];
    this.#next = 0;
    this.#count = 0;
  }
}

/** A count since the process started (or the last reset). */
export class Counter {
  #value = 0;

  add(by = 1): void {
    this.#value += by;
  }

  get value(): number {
    return this.#value;
  }

  reset(): void {
    this.#value = 0;
  }
}
