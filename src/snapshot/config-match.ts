/**
 * Is this command line the VM the snapshot was taken of? What the guest
 * can see must match (vCPUs, RAM, devices and their guest-visible options);
 * where things are on the host may differ (backend paths, the VM's name,
 * the kernel, which a restore does not load, tshyve's tuning knobs). Which
 * keys are which is the VM's and its devices' to say (ConfigKeyRules).
 */
import { SnapshotError, clip } from './state.js';

/**
 * Whole-key patterns (dotted; a part `N` matches a decimal number, a last
 * part `*` the rest of the key).
 */
export interface ConfigKeyRules {
  /** Keys that do not describe the guest's machine: ignored. */
  readonly hostOnly: readonly string[];
  /** Keys whose presence matters but whose value is a host path. */
  readonly hostPaths: readonly string[];
}

const PATH_VALUE = '(a path)';

/** A key pattern as a regular expression. */
export function keyPattern(pattern: string): RegExp {
  const parts = pattern.split('.');
  const re = parts.map((p, i) => (p === 'N' ? '[0-9]+' : p === '*' && i === parts.length - 1 ? '.+' : p.replace(/[^A-Za-z0-9_]/g, '\\$&')));
  return new RegExp(`^${re.join('\\.')}$`);
}

/** The keys and values a restore compares; host paths read as `(a path)`. */
export function guestVisibleConfig(entries: Iterable<[string, string]>, rules: ConfigKeyRules): Map<string, string> {
  const ignored = rules.hostOnly.map(keyPattern), paths = rules.hostPaths.map(keyPattern);
  const out = new Map<string, string>();
  for (const [k, v] of entries) {
    if (ignored.some((re) => re.test(k))) continue;
    out.set(k, paths.some((re) => re.test(k)) ? PATH_VALUE : v);
  }
  return out;
}

/** How a mismatch message names the other machine: a snapshot's, or a migration source's. */
export interface OtherMachine { had: string; tookWith: string }
const SNAPSHOT: OtherMachine = { had: 'the snapshot\'s VM had', tookWith: 'the snapshot was taken with' };

/** Throws SnapshotError naming the first difference. */
export function checkConfigMatches(snapshot: Map<string, string>, current: Iterable<[string, string]>, rules: ConfigKeyRules,
  other = SNAPSHOT): void {
  const a = guestVisibleConfig(snapshot, rules), b = guestVisibleConfig(current, rules);
  for (const k of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const x = a.get(k), y = b.get(k);
    if (x === y) continue;
    const key = clip(k), show = (v: string) => (v === PATH_VALUE ? key : `${key}=${clip(v)}`);
    throw new SnapshotError(x === undefined
      ? `this command line has ${show(y!)}, ${other.had} no ${key}`
      : y === undefined
        ? `${other.had} ${show(x)}, this command line has no ${key}`
        : `${other.tookWith} ${show(x)}, this command line has ${show(y)}`, 'EMISMATCH');
  }
}
