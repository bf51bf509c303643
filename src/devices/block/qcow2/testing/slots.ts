/** The crash test's writes: which slot comes when, and what each slot holds. */
import { randomBytes, rng } from '../testing.js';

export function slotOrder(seed: number, slots: number): number[] {
  const r = rng(seed);
  const o = Array.from({ length: slots }, (_, i) => i);
  for (let i = slots - 1; i > 0; i--) { const j = r(i + 1); [o[i], o[j]] = [o[j]!, o[i]!]; }
  return o;
}

/** Slot s's data and where in the slot it starts (some writes cover part of a cluster). */
export function slotData(seed: number, s: number, slotBytes: number): { data: Buffer; at: number } {
  const r = rng(seed * 7919 + s + 1);
  const at = r(2) === 0 ? 0 : r(slotBytes / 2) & ~511;
  const len = Math.max(512, (1 + r(slotBytes - at)) & ~511);
  return { data: randomBytes(r, Math.min(len, slotBytes - at)), at };
}
