/**
 * The config tree's machine-wide values as the VM and devices read them:
 * vCPU topology, memory size, a device's `key=value` option string, and the
 * checks on names and UUIDs (bhyve_config(5)). The command line that fills
 * the tree is parsed in cli/args.ts.
 */
import { UserError } from '../errors.js';
import { quote } from './config-file.js';
import { parseMemSize, scanCInteger } from './size.js';
import type { ConfigTree, ConfigTreeWriter } from './tree.js';

/** tshyve's vCPU limit (bhyve allows up to UINT16_MAX and lets vmm.ko decide). */
export const MAX_VCPUS = 255;
/** bhyve's VM_MAX_NAMELEN. */
export const MAX_VM_NAME_LEN = 32;
/** bhyve's default guest memory size. */
export const DEFAULT_MEMORY_SIZE = '256M';
/** Guest memory must be a whole number of pages (vm_alloc_memseg rejects the rest). */
export const GUEST_PAGE_SIZE = 4096;

// ---------------------------------------------------------------- cpus

/** bhyve's parse_int_value(): strtol base 0, whole string, within [min, max]. */
function parseIntValue(key: string, value: string, min: number, max: number): number {
  const n = scanCInteger(value);
  if (!n || n.end !== value.length || n.value < BigInt(min) || n.value > BigInt(max)) {
    throw new UserError(`invalid value for ${key}: ${quote(value)} (expected ${min}..${max})`);
  }
  return Number(n.value);
}

export interface CpuTopology { cpus: number; sockets: number; cores: number; threads: number }

/**
 * bhyve's calc_topology() with tshyve's limit: each value 1..MAX_VCPUS;
 * cores and threads default to 1, sockets to cpus (or 1); when cpus is given
 * it must equal sockets*cores*threads, otherwise it is that product.
 */
export function resolveCpus(config: ConfigTree): CpuTopology {
  const get = (k: string) => config.get(k);
  const cpusStr = get('cpus');
  const explicit = cpusStr !== undefined;
  let cpus = explicit ? parseIntValue('cpus', cpusStr, 1, MAX_VCPUS) : 1;
  const cores = get('cores') !== undefined ? parseIntValue('cores', get('cores')!, 1, MAX_VCPUS) : 1;
  const threads = get('threads') !== undefined ? parseIntValue('threads', get('threads')!, 1, MAX_VCPUS) : 1;
  const sockets = get('sockets') !== undefined ? parseIntValue('sockets', get('sockets')!, 1, MAX_VCPUS) : cpus;
  const product = sockets * cores * threads;
  const topo = `${sockets} sockets, ${cores} cores, ${threads} threads`;
  if (product > MAX_VCPUS) {
    throw new UserError(`topology (${topo}) gives ${product} vCPUs, more than tshyve's limit of ${MAX_VCPUS}`);
  }
  if (explicit) {
    if (cpus !== product) throw new UserError(`topology (${topo}) does not match ${cpus} vCPUs`);
  } else {
    cpus = product;
  }
  return { cpus, sockets, cores, threads };
}

// ---------------------------------------------------------------- -m

/** `memory.size` (default 256M) in bytes; must be a whole number of 4 KiB pages. */
export function resolveMemBytes(config: ConfigTree): number {
  const v = config.get('memory.size') ?? DEFAULT_MEMORY_SIZE;
  const bytes = parseMemSize(v);
  if (bytes % GUEST_PAGE_SIZE !== 0) {
    throw new UserError(`invalid memory size ${quote(v)}: not a multiple of ${GUEST_PAGE_SIZE / 1024}K`);
  }
  return bytes;
}

// ---------------------------------------------------------------- device options

/**
 * bhyve's pci_parse_legacy_config(): comma-separated `name=value` options,
 * a bare `name` meaning `name=true`; empty fields are skipped. Device
 * emulations with their own legacyConfig() can call this for the tail of
 * their option string.
 */
export function parsePciLegacyConfig(node: ConfigTreeWriter, opts: string): void {
  for (const tok of opts.split(',')) {
    if (tok === '') continue;
    const eq = tok.indexOf('=');
    const key = eq < 0 ? tok : tok.slice(0, eq);
    const value = eq < 0 ? 'true' : tok.slice(eq + 1);
    if (key === '' || key.includes('.')) throw new UserError(`invalid option name ${quote(key)} in ${quote(tok)}`);
    node.set(key, value);
  }
}

// ---------------------------------------------------------------- names

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

export function validateUuid(s: string): void {
  if (!UUID_RE.test(s)) throw new UserError(`invalid UUID ${quote(s)} (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
}

const VM_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** Letters, digits, '.', '_', '-' (not first), at most VM_MAX_NAMELEN characters. */
export function validateVmName(name: string): void {
  if (name.length > MAX_VM_NAME_LEN || !VM_NAME_RE.test(name)) {
    throw new UserError(
      `invalid VM name ${quote(name)} (letters, digits, '.', '_', '-'; must not start with '.' or '-'; at most ${MAX_VM_NAME_LEN} characters)`,
    );
  }
}
