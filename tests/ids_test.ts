/** Stream id arithmetic (compareIds, idTime) against the plain split-and-Number reading. */
import assert from "node:assert/strict";
import { compareIds, idTime } from "../src/events.ts";

function reference(a: string, b: string): number {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am !== bm ? am - bm : (as ?? 0) - (bs ?? 0);
}

const sign = (n: number) => Number.isNaN(n) ? "NaN" : Math.sign(n);

Deno.test("compareIds and idTime read ids as split-and-Number does, odd ones included", () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const digits = () => String(Math.floor(random() * (random() < 0.5 ? 10 : 1e14)));
  const id = () => {
    const r = random();
    if (r < 0.05) return digits();
    if (r < 0.1) return `${digits()}-`;
    if (r < 0.15) return `-${digits()}`;
    if (r < 0.2) return `0${digits()}-00${digits()}`;
    if (r < 0.25) return `${digits()}-x${digits()}`;
    if (r < 0.3) return `${"9".repeat(17)}-${digits()}`;
    if (r < 0.35) return `${digits()}-${digits()}-${digits()}`;
    if (r < 0.4) return "";
    return `${digits()}-${digits()}`;
  };
  const fixed = ["0-0", "0-1", "1-0", "1764597600000-0", "1764597600000-12", "1764597600001-3"];
  for (const a of fixed) {
    for (const b of fixed) assert.equal(sign(compareIds(a, b)), sign(reference(a, b)), `${a} ${b}`);
  }
  for (let i = 0; i < 50_000; i++) {
    const a = id();
    // Half the pairs share the ms part, so the sequence decides.
    const b = random() < 0.5 ? `${a.split("-")[0]}-${digits()}` : id();
    assert.equal(sign(compareIds(a, b)), sign(reference(a, b)), `${a} vs ${b}`);
    const time = Number(a.split("-")[0]);
    assert.ok(Object.is(idTime(a), time) || (Number.isNaN(time) && Number.isNaN(idTime(a))), a);
  }
  assert.ok(compareIds("1764597600000-9", "1764597600000-10") < 0, "numeric, not text, order");
  assert.equal(idTime("1764597600000-3"), 1764597600000);
});
