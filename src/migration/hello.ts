/**
 * The handshake, before anything is paused: the source says what machine
 * it runs (protocol version, vCPUs, RAM, its config, the CPUID its guest
 * was given) and the destination compares it with its own command line.
 * A difference is one line, told to both sides; the source goes on running.
 */
import type { CpuidEntry } from '../kvm/abi.js';
import { StateReader, StateWriter, SnapshotError, clip } from '../snapshot/state.js';
import { parseDocument, readConfigPart } from '../snapshot/file.js';
import { checkConfigMatches, type ConfigKeyRules } from '../snapshot/config-match.js';

/** Bumped whenever a frame's layout or meaning changes (2: END commits, no READY/COMMIT round trip). */
export const PROTOCOL_VERSION = 2;

/** What one side's VM is, as the handshake compares it. */
export interface MachineFacts {
  vcpus: number;
  ramBytes: number;
  config: Map<string, string>;
  /** vCPU 0's CPUID as the guest was given it */
  cpuid: readonly CpuidEntry[];
}

/** The CPUID registers that say which features a guest may use (and so must not lose). */
const FEATURE_REGS: [fn: number, index: number, regs: (keyof CpuidEntry)[]][] = [
  [0, 0, ['ebx', 'ecx', 'edx']], // vendor
  [1, 0, ['ecx', 'edx']],
  [7, 0, ['ebx', 'ecx', 'edx']],
  [0xd, 0, ['eax', 'edx']], // XSAVE components
  [0xd, 1, ['eax']],
  [0x80000001, 0, ['ecx', 'edx']],
  [0x80000007, 0, ['edx']],
];

export function encodeHello(f: MachineFacts, live: boolean): Buffer {
  const w = new StateWriter().u32('protocol', PROTOCOL_VERSION).u32('vcpus', f.vcpus).u64('ramBytes', f.ramBytes).bool('live', live);
  w.obj_('config', (cw) => { for (const [k, v] of f.config) cw.str(k, v); });
  w.arr('cpuid', FEATURE_REGS, (ew, [fn, index, regs]) => {
    const e = f.cpuid.find((x) => x.function === fn && x.index === index);
    ew.u32('function', fn).u32('index', index);
    for (const r of ['eax', 'ebx', 'ecx', 'edx'] as const) ew.u32(r, regs.includes(r) ? (e?.[r] ?? 0) >>> 0 : 0);
  });
  return Buffer.from(JSON.stringify(w.obj));
}

export interface Hello { facts: MachineFacts; live: boolean }

/** Read a HELLO strictly; SnapshotError (one line) on anything malformed, or another protocol. */
export function decodeHello(payload: Buffer): Hello {
  const r = new StateReader(parseDocument(payload.toString('utf8'), 'the source\'s HELLO', 'a migration handshake'), 'hello');
  const version = r.u32('protocol');
  if (version !== PROTOCOL_VERSION) throw new SnapshotError(`the source speaks migration protocol ${version}, this tshyve ${PROTOCOL_VERSION}`, 'EMISMATCH');
  const cpuid = r.arr('cpuid', FEATURE_REGS.length).map((e): CpuidEntry => ({
    function: e.u32('function'), index: e.u32('index'), flags: 0, eax: e.u32('eax'), ebx: e.u32('ebx'), ecx: e.u32('ecx'), edx: e.u32('edx'),
  }));
  return { facts: { vcpus: r.u32('vcpus', 1024), ramBytes: r.safe('ramBytes'), config: readConfigPart(r), cpuid }, live: r.bool('live') };
}

/** Why the source's machine cannot come here, or undefined when it can. */
export function helloMismatch(src: MachineFacts, here: MachineFacts, rules: ConfigKeyRules): string | undefined {
  if (src.vcpus !== here.vcpus) return `the source VM has ${src.vcpus} vCPUs, this one ${here.vcpus}`;
  if (src.ramBytes !== here.ramBytes) return `the source VM has ${src.ramBytes} bytes of RAM, this one ${here.ramBytes}`;
  try {
    checkConfigMatches(src.config, here.config, rules, { had: 'the source VM has', tookWith: 'the source VM has' });
  } catch (e) {
    return (e as Error).message;
  }
  for (const [fn, index, regs] of FEATURE_REGS) {
    const a = src.cpuid.find((x) => x.function === fn && x.index === index);
    const b = here.cpuid.find((x) => x.function === fn && x.index === index);
    for (const reg of regs) {
      const x = (a?.[reg] ?? 0) >>> 0, y = (b?.[reg] ?? 0) >>> 0;
      if (x !== y) {
        return `CPU features differ: CPUID 0x${fn.toString(16)}.${index} ${reg} is 0x${x.toString(16)} on the source, 0x${y.toString(16)} here`
          + ` (bits 0x${clip(((x & ~y) >>> 0).toString(16))} missing here)`;
      }
    }
  }
  return undefined;
}
