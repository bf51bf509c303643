/**
 * Where each guest range of an image lives, as `qemu-img map` reports it:
 * runs of (depth in the backing chain, present, zero, data, host offset).
 */
import type { BlockBackend } from '../backend.js';
import { FileBlockBackend } from '../file.js';
import { COMPRESSED, NORMAL, ZERO } from './entries.js';
import { Qcow2Backend } from './image.js';

export interface MapRun {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** the file holding the data (human output) */
  file?: string;
}

/** What guest byte `g` (of a cluster-aligned step) is, walking down the chain. */
function classify(b: BlockBackend | undefined, g: number, depth: number): Omit<MapRun, 'start' | 'length'> {
  if (b === undefined || g >= b.size) return { depth: Math.max(0, depth - 1), present: false, zero: true, data: false };
  if (b instanceof FileBlockBackend) return { depth, present: true, zero: false, data: true, offset: g, file: b.path };
  if (!(b instanceof Qcow2Backend)) return { depth, present: true, zero: false, data: true };
  const t = b.lookup(Math.floor(g / b.cs), 'map');
  if (t === NORMAL) return { depth, present: true, zero: false, data: true, offset: b.mapHost() + (g % b.cs), file: b.path };
  if (t === COMPRESSED) return { depth, present: true, zero: false, data: true };
  if (t === ZERO) return { depth, present: true, zero: true, data: false };
  return classify(b.backing, g, depth + 1);
}

/** The image's map, adjacent runs of the same kind (and continuing host offsets) merged. */
export function mapImage(img: BlockBackend): MapRun[] {
  const step = img instanceof Qcow2Backend ? img.cs : Math.max(512, Math.min(img.size, 1 << 20));
  const out: MapRun[] = [];
  for (let g = 0; g < img.size; g += step - (g % step)) {
    const len = Math.min(step - (g % step), img.size - g);
    const c = classify(img, g, 0);
    const last = out[out.length - 1];
    if (last && last.depth === c.depth && last.present === c.present && last.zero === c.zero && last.data === c.data &&
        last.file === c.file && (last.offset === undefined) === (c.offset === undefined) &&
        (c.offset === undefined || last.offset! + last.length === c.offset)) {
      last.length += len;
    } else {
      out.push({ start: g, length: len, ...c });
    }
  }
  return out;
}
