/**
 * The STATE frame's payload: the snapshot format's parts (config, the VM's
 * KVM state, one per vCPU, one per device), each its own JSON document
 * behind a 40-byte header: kind (u8), a zero byte, its index among its kind
 * (u16), its length (u32), its SHA-256. Each part is serialized once and its
 * checksum taken over those bytes (one JSON document checksummed part by
 * part serialized everything twice on each side), and a part is parsed
 * only once its length, place and checksum are right. Untrusted input:
 * kinds in order, indexes consecutive, bounded counts, nothing left over.
 */
import { createHash } from 'node:crypto';
import { SnapshotError, StateReader } from '../snapshot/state.js';
import { MAX_DEVICES } from '../snapshot/persist.js';
import { parseDocument, readConfigPart, stateBody, type SnapshotParts, type VmState } from '../snapshot/file.js';

export const PART_HEADER = 40;
/** Part kinds, in the order they come. */
export const PART = { config: 1, vm: 2, vcpus: 3, devices: 4 } as const;
type PartName = keyof typeof PART;
const NAMES = Object.fromEntries(Object.entries(PART).map(([k, v]) => [v, k])) as Record<number, PartName>;
/** Most parts of each kind. */
const MAX: Record<PartName, number> = { config: 1, vm: 1, vcpus: 1024, devices: MAX_DEVICES };

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** One part as it is on the wire (the checksum as sent, not checked). */
export interface RawPart { kind: number; index: number; sha: Buffer; body: Buffer }

export function encodeState(parts: SnapshotParts): Buffer {
  const b = stateBody(parts);
  const list: [number, number, unknown][] = [
    [PART.config, 0, b.config], [PART.vm, 0, b.vm],
    ...parts.vcpus.map((w, i): [number, number, unknown] => [PART.vcpus, i, w.obj]),
    ...parts.devices.map((w, i): [number, number, unknown] => [PART.devices, i, w.obj]),
  ];
  return joinParts(list.map(([kind, index, v]) => {
    const body = Buffer.from(JSON.stringify(v));
    return { kind, index, sha: sha256(body), body };
  }));
}

/** Parts into a payload, their checksums as given. */
export function joinParts(parts: readonly RawPart[]): Buffer {
  const out = Buffer.allocUnsafe(parts.reduce((n, p) => n + PART_HEADER + p.body.length, 0));
  let at = 0;
  for (const p of parts) {
    out[at] = p.kind;
    out[at + 1] = 0;
    out.writeUInt16LE(p.index, at + 2);
    out.writeUInt32LE(p.body.length, at + 4);
    p.sha.copy(out, at + 8, 0, 32);
    p.body.copy(out, at + PART_HEADER);
    at += PART_HEADER + p.body.length;
  }
  return out;
}

const bad = (why: string): never => { throw new SnapshotError(`the migration state: ${why}`); };

/** A payload's parts, framing checked (lengths, kinds, order, indexes), checksums not yet. */
export function splitParts(payload: Buffer): RawPart[] {
  const parts: RawPart[] = [];
  const count = new Map<number, number>();
  let last = 0;
  for (let at = 0; at < payload.length;) {
    if (payload.length - at < PART_HEADER) bad(`a part header cut short at byte ${at}`);
    const kind = payload[at]!, index = payload.readUInt16LE(at + 2), len = payload.readUInt32LE(at + 4);
    const name = NAMES[kind];
    if (!name) bad(`a part of unknown kind ${kind} at byte ${at}`);
    if (payload[at + 1] !== 0) bad(`a part header with reserved bits set at byte ${at}`);
    if (kind < last) bad(`part '${name}' after '${NAMES[last]}'`);
    const n = count.get(kind) ?? 0;
    if (index !== n) bad(`part '${name}' ${index} where ${n} was due`);
    if (n >= MAX[name!]) bad(`more than ${MAX[name!]} '${name}' parts`);
    if (len > payload.length - at - PART_HEADER) bad(`part '${name}' ${index} of ${len} bytes runs past the end`);
    parts.push({ kind, index, sha: payload.subarray(at + 8, at + PART_HEADER), body: payload.subarray(at + PART_HEADER, at + PART_HEADER + len) });
    count.set(kind, n + 1);
    last = kind;
    at += PART_HEADER + len;
  }
  for (const k of [PART.config, PART.vm]) if (!count.has(k)) bad(`part '${NAMES[k]}' is missing`);
  return parts;
}

/** Read a STATE payload: framing, each part's checksum, each part's JSON; the fields are checked by their owners on restore. */
export function decodeState(payload: Buffer): VmState {
  const out: { config?: Map<string, string>; vm?: StateReader; vcpus: StateReader[]; devices: StateReader[] } = { vcpus: [], devices: [] };
  for (const p of splitParts(payload)) {
    const name = NAMES[p.kind]!;
    if (!sha256(p.body).equals(p.sha)) bad(`checksum of part '${name}' does not match (${name} ${p.index}: damaged)`);
    const doc = parseDocument(p.body.toString('utf8'), `the migration state's part '${name}' ${p.index}`, 'a tshyve VM state part');
    if (name === 'config') out.config = readConfigPart(new StateReader({ config: doc }, 'state'));
    else if (name === 'vm') out.vm = new StateReader(doc, 'state.vm');
    else out[name].push(new StateReader(doc, `state.${name}[${p.index}]`));
  }
  return { config: out.config!, vm: out.vm!, vcpus: out.vcpus, devices: out.devices };
}
