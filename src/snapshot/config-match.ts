/**
 * Is this command line the VM the snapshot was taken of? What the guest
 * can see must match (vCPUs, RAM, devices and their guest-visible options);
 * where things are on the host may differ (backend paths, the VM's name,
 * the kernel, which a restore does not load, tshyve's tuning knobs).
 */
import { SnapshotError } from './state.js';

/** Keys that do not describe the guest's machine. */
const IGNORED: RegExp[] = [
  /^name$/, /^boot\./, /^control\./, /^debug\./, /^config\./, /^snapshot\./, /^kvm\.device$/,
  /^x86\.(halt_check_ms|posted_writes|shadow_regs|allow_emulated_kvm)$/, /^virtio\.(ioeventfd|irqfd|workers)$/,
  /^rtc\.use_localtime$/,
];
/** Keys whose presence matters but whose value is a host path. */
const PATHS: RegExp[] = [/^lpc\.com\d\.path$/, /^pci\.\d+\.\d+\.\d+\.path$/, /^pci\.\d+\.\d+\.\d+\.port\.\d+\.path$/];

export function guestVisibleConfig(entries: Iterable<[string, string]>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of entries) {
    if (IGNORED.some((re) => re.test(k))) continue;
    out.set(k, PATHS.some((re) => re.test(k)) ? '(a path)' : v);
  }
  return out;
}

/** Throws SnapshotError naming the first difference. */
export function checkConfigMatches(snapshot: Map<string, string>, current: Iterable<[string, string]>): void {
  const a = guestVisibleConfig(snapshot), b = guestVisibleConfig(current);
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const x = a.get(k), y = b.get(k);
    if (x === y) continue;
    const show = (v: string) => (v === '(a path)' ? k : `${k}=${v}`);
    throw new SnapshotError(x === undefined
      ? `this command line has ${show(y!)}, the snapshot's VM had no ${k}`
      : y === undefined
        ? `the snapshot's VM had ${show(x)}, this command line has no ${k}`
        : `the snapshot was taken with ${k}=${x}, this command line has ${k}=${y}`, 'EMISMATCH');
  }
}
