/**
 * The process the crash test kills: writes slot after slot of a qcow2 image
 * (each slot once, in a shuffled order, so no write overwrites another),
 * flushing every few writes and printing `F N` once writes 0..N-1 are
 * flushed. Usage: node crash-writer.js IMAGE SEED SLOTS SLOT_BYTES
 */
import { openImage } from '../../open.js';
import { slotData, slotOrder } from './slots.js';

const [path, seedArg, slotsArg, slotBytesArg] = process.argv.slice(2);
const seed = Number(seedArg), slots = Number(slotsArg), slotBytes = Number(slotBytesArg);
const img = openImage({ path: path! });
const order = slotOrder(seed, slots);
for (let i = 0; i < slots; i++) {
  const s = order[i]!;
  const { data, at } = slotData(seed, s, slotBytes);
  img.write(data, s * slotBytes + at);
  if (i % 7 === 6) {
    img.flush();
    process.stdout.write(`F ${i + 1}\n`);
  }
}
img.close();
process.stdout.write('done\n');
