/**
 * bhyve's command line -> the configuration tree (bhyve_config(5)).
 *
 * Follows FreeBSD 14 bhyverun.c: getopt(3) with the option string
 * "aehuwxACDHIPSWYk:f:o:p:G:c:s:m:l:K:U:r:" (combined flags `-AHP`, attached
 * values `-m512M`, parsing stops at the first non-option or `--`), options
 * applied in order so later ones win, then one positional VM name. PCI and
 * LPC devices come from their registries (pci/device.ts, devices/platform.ts).
 */
import { resolve as resolvePath } from 'node:path';
import { UserError } from '../errors.js';
import { findPciDevice, pciDeviceNames } from '../pci/device.js';
import { lpcDevice, lpcDeviceNames } from '../devices/platform.js';
import '../devices/all.js';
import { parseFwCfgItemOption } from '../devices/fw-cfg/user-items.js';
import { applyConfigFile, applyConfigOption, quote } from '../config/config-file.js';
import { parseMemSize } from '../config/size.js';
import { parseMigrationAddress, type MigrationAddress } from '../migration/transport.js';
import { ConfigTree, type ConfigTreeWriter } from '../config/tree.js';
import {
  DEFAULT_MEMORY_SIZE, parsePciLegacyConfig, resolveCpus, resolveMemBytes, validateUuid, validateVmName,
} from '../config/options.js';

export interface ParsedArgs {
  config: ConfigTree;
  /** `-r FILE`: resume from this snapshot (the CLI decides what to do with it). */
  restoreFile?: string;
  /** `-R HOST,PORT` or `-R unix:PATH`: wait there for a migration instead of booting. */
  migrateFrom?: MigrationAddress;
  /** `-h`: print usage() and exit 0. Parsing stopped at `-h`. */
  help?: boolean;
  /** `-s help` / `-l help`: print the supported PCI / LPC devices and exit 0. */
  list?: 'pci' | 'lpc';
}

export interface ParseOptions {
  /** Reserved: no bhyve option reads the environment today. */
  env?: NodeJS.ProcessEnv;
  /** Directory relative `-k` paths are resolved against (default: process.cwd()). */
  cwd?: string;
}

/** LPC devices bhyve has that tshyve does not emulate yet. */
const LPC_UNSUPPORTED = ['tpm', 'pc-testdev'];

/** What `-l help` lists. */
export function supportedLpcDevices(): string[] {
  return lpcDeviceNames();
}

/** Boolean flags: option letter -> [config key, value]. `null` = accepted no-op. */
const FLAGS: Record<string, [string, string] | null> = {
  a: ['x86.x2apic', 'false'],
  A: ['acpi_tables', 'true'],
  C: ['memory.guest_in_core', 'true'],
  D: ['destroy_on_poweroff', 'true'],
  e: ['x86.strictio', 'true'],
  H: ['x86.vmexit_on_hlt', 'true'],
  I: null, // used to add an I/O APIC; one is always present now (bhyve ignores it too)
  P: ['x86.vmexit_on_pause', 'true'],
  S: ['memory.wired', 'true'],
  u: ['rtc.use_localtime', 'false'],
  w: ['x86.strictmsr', 'false'],
  W: ['virtio_msix', 'false'],
  x: ['x86.x2apic', 'true'],
  Y: ['x86.mptable', 'false'],
};

/** Options that take an argument and that tshyve implements. */
const WITH_ARG = new Set(['c', 'f', 'k', 'l', 'm', 'o', 'r', 'R', 's', 'U']);

/** bhyve options tshyve does not implement yet (all take an argument). */
const UNSUPPORTED: Record<string, string> = {
  G: 'GDB debug server',
  K: 'keyboard layout',
  n: 'NUMA domains',
  p: 'vCPU pinning',
};

/** Defaults applied after parsing when the key is absent (bhyve sets these before parsing). */
const DEFAULTS: ReadonlyArray<[string, string]> = [
  ['memory.size', DEFAULT_MEMORY_SIZE],
  ['acpi_tables', 'true'],
  ['x86.strictmsr', 'true'],
];

export function usage(progname = 'tshyve'): string {
  const pad = ' '.repeat(progname.length);
  return [
    `Usage: ${progname} [-AaCDeHhIPSuWwxY]`,
    `       ${pad} [-c [[cpus=]numcpus][,sockets=n][,cores=n][,threads=n]]`,
    `       ${pad} [-f name,[string|file]=data] [-k config_file] [-l lpc] [-m mem] [-o var=value]`,
    `       ${pad} [-r file] [-R host,port | -R unix:path] [-s pci] [-U uuid] vmname`,
    `       ${progname} -l help | -s help`,
    '       -A: create ACPI tables (always done; accepted for compatibility)',
    '       -a: local APIC is in xAPIC mode (the default)',
    '       -C: include guest memory in core file',
    '       -c: number of CPUs and/or topology specification',
    '       -D: destroy on power-off',
    '       -e: exit on unhandled I/O access',
    '       -f: a fw_cfg item for the firmware (opt/NAME,string=S or opt/NAME,file=PATH)',
    '       -H: vmexit from the guest on HLT',
    '       -h: help',
    '       -I: ignored (an I/O APIC is always present)',
    '       -k: key=value flat config file',
    '       -l: LPC device configuration (com1..com4, bootrom,ROMFILE[,VARFILE], fwcfg,qemu)',
    '       -m: memory size (K, M, G, T suffixes; a plain number < 1M is MiB)',
    '       -o: set config \'var\' to \'value\'',
    '       -P: vmexit from the guest on pause',
    '       -r: path to checkpoint file',
    '       -R: wait on host,port (or unix:path) for a migration and run the guest it brings',
    '       -S: guest memory cannot be swapped',
    '       -s: <slot,driver,configinfo> PCI slot config',
    '       -U: UUID',
    '       -u: RTC keeps UTC time',
    '       -W: force virtio to use single-vector MSI',
    '       -w: ignore unimplemented MSRs',
    '       -x: local APIC is in x2APIC mode',
    '       -Y: disable MPtable generation',
    `       not supported yet: ${Object.entries(UNSUPPORTED).map(([c, what]) => `-${c} (${what})`).join(', ')}`,
    '',
  ].join('\n');
}

/**
 * Parse bhyve's command line (without the program name, i.e.
 * `process.argv.slice(2)`) into a configuration tree. Throws UserError with a
 * one-line message on any bad input.
 */
export function parseBhyveArgs(argv: string[], opts: ParseOptions = {}): ParsedArgs {
  const config = new ConfigTree();
  const result: ParsedArgs = { config };
  const cwd = opts.cwd ?? process.cwd();

  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') { i++; break; }
    if (a.length < 2 || a[0] !== '-') break;
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      if (c in FLAGS) {
        const f = FLAGS[c];
        if (f) config.set(f[0], f[1]);
        continue;
      }
      if (c === 'h') { result.help = true; return result; }
      if (c in UNSUPPORTED) throw new UserError(`option -${c} is not supported by tshyve yet (${UNSUPPORTED[c]})`);
      if (!WITH_ARG.has(c)) throw new UserError(`unknown option -${printable(c)} (see ${'`'}tshyve -h${'`'})`);
      let optarg: string;
      if (j + 1 < a.length) {
        optarg = a.slice(j + 1);
      } else {
        if (i + 1 >= argv.length) throw new UserError(`option -${c} requires an argument`);
        optarg = argv[++i]!;
      }
      const stop = applyOption(config, result, c, optarg, cwd);
      if (stop) return result;
      break; // the rest of this word was the argument
    }
  }

  const positional = argv.slice(i);
  if (positional.length > 1) {
    throw new UserError(`unexpected argument ${quote(positional[1]!)} after VM name ${quote(positional[0]!)} (options must come before the name)`);
  }
  if (positional.length === 1) config.set('name', positional[0]!);
  const name = config.get('name');
  if (name === undefined) {
    if (result.restoreFile === undefined) throw new UserError('missing VM name (usage: tshyve [options] vmname)');
  } else {
    validateVmName(name);
  }

  for (const [k, v] of DEFAULTS) config.setDefault(k, v);
  resolveMemBytes(config);
  const topo = resolveCpus(config);
  config.setDefault('cpus', String(topo.cpus));
  const uuid = config.get('uuid');
  if (uuid !== undefined) validateUuid(uuid);
  return result;
}

/** Apply one option with an argument. Returns true when parsing should stop (help lists). */
function applyOption(config: ConfigTree, result: ParsedArgs, c: string, optarg: string, cwd: string): boolean {
  switch (c) {
    case 'c':
      parseTopologyOption(config, optarg);
      return false;
    case 'f':
      parseFwCfgItemOption(config, optarg);
      return false;
    case 'k':
      applyConfigFile(config, resolvePath(cwd, optarg));
      return false;
    case 'l':
      if (optarg === 'help') { result.list = 'lpc'; return true; }
      parseLpcOption(config, optarg);
      return false;
    case 'm':
      parseMemSize(optarg); // validate now; bhyve stores the string
      config.set('memory.size', optarg);
      return false;
    case 'o':
      applyConfigOption(config, optarg);
      return false;
    case 'r':
      result.restoreFile = optarg;
      return false;
    case 'R':
      result.migrateFrom = parseMigrationAddress(optarg);
      return false;
    case 's':
      if (optarg === 'help') { result.list = 'pci'; return true; }
      parsePciSlotOption(config, optarg);
      return false;
    case 'U':
      validateUuid(optarg);
      config.set('uuid', optarg);
      return false;
    default:
      throw new Error(`unhandled option -${c}`);
  }
}

function printable(c: string): string {
  return /^[\x21-\x7e]$/.test(c) ? c : JSON.stringify(c);
}

// ---------------------------------------------------------------- -c

/**
 * `-c [[cpus=]N][,sockets=S][,cores=C][,threads=T]` (bhyve topology_parse):
 * stores the strings; validation happens in resolveCpus(). An empty argument
 * sets a 1-vCPU topology.
 */
export function parseTopologyOption(config: ConfigTree, opt: string): void {
  if (opt === '') {
    for (const k of ['sockets', 'cores', 'threads', 'cpus']) config.set(k, '1');
    return;
  }
  for (const tok of opt.split(',')) {
    const eq = tok.indexOf('=');
    if (eq < 0) {
      if (tok === '') throw new UserError(`invalid cpu topology ${quote(opt)} (empty field)`);
      config.set('cpus', tok);
      continue;
    }
    const key = tok.slice(0, eq);
    if (key !== 'cpus' && key !== 'sockets' && key !== 'cores' && key !== 'threads') {
      throw new UserError(`invalid cpu topology ${quote(opt)} (unknown setting ${quote(key)})`);
    }
    config.set(key, tok.slice(eq + 1));
  }
}

// ---------------------------------------------------------------- -s

export interface PciBdf { bus: number; slot: number; func: number }

/** `slot`, `slot:func` or `bus:slot:func`, decimal; undefined when malformed or out of range. */
export function parsePciSlot(s: string): PciBdf | undefined {
  const parts = s.split(':');
  if (parts.length > 3 || parts.some((p) => !/^[0-9]{1,3}$/.test(p))) return undefined;
  const n = parts.map(Number);
  const [bus, slot, func] = n.length === 3 ? [n[0]!, n[1]!, n[2]!]
    : n.length === 2 ? [0, n[0]!, n[1]!] : [0, n[0]!, 0];
  if (bus > 255 || slot > 31 || func > 7) return undefined;
  return { bus, slot, func };
}

/** The config node of a PCI function: `pci.B.S.F` (decimal, no leading zeros). */
export function pciNodePath(b: PciBdf): string {
  return `pci.${b.bus}.${b.slot}.${b.func}`;
}

/** `-s slot,emulation[,conf]` (bhyve pci_parse_slot). */
export function parsePciSlotOption(config: ConfigTree, opt: string): void {
  const c1 = opt.indexOf(',');
  if (c1 < 0) throw new UserError(`invalid PCI slot info field ${quote(opt)} (expected slot,emulation[,conf])`);
  const slotStr = opt.slice(0, c1);
  const rest = opt.slice(c1 + 1);
  const c2 = rest.indexOf(',');
  const emul = c2 < 0 ? rest : rest.slice(0, c2);
  const conf = c2 < 0 ? undefined : rest.slice(c2 + 1);

  const bdf = parsePciSlot(slotStr);
  if (!bdf) {
    throw new UserError(`invalid PCI slot ${quote(slotStr)} in ${quote('-s ' + opt)} (slot 0..31, function 0..7, bus 0..255)`);
  }
  const dev = findPciDevice(emul);
  if (!dev) {
    const known = pciDeviceNames();
    throw new UserError(`unknown PCI device ${quote(emul)} (known: ${known.length ? known.join(', ') : 'none'})`);
  }
  const path = pciNodePath(bdf);
  if (config.node(path) !== undefined) {
    throw new UserError(`pci slot ${bdf.bus}:${bdf.slot}:${bdf.func} already occupied`);
  }
  config.set(`${path}.device`, dev.name);
  if (conf === undefined) return;
  const writer: ConfigTreeWriter = { set: (rel, value) => config.set(`${path}.${rel}`, value) };
  try {
    if (dev.legacyConfig) dev.legacyConfig(writer, conf);
    else parsePciLegacyConfig(writer, conf);
  } catch (e) {
    if (e instanceof UserError) {
      throw new UserError(`pci ${bdf.bus}:${bdf.slot}:${bdf.func} ${dev.name}: ${e.message}`, e.code);
    }
    throw e;
  }
}

// ---------------------------------------------------------------- -l

/** `-l lpcdev[,conf]` (bhyve lpc_device_parse): device names are case-insensitive. */
export function parseLpcOption(config: ConfigTree, opt: string): void {
  const comma = opt.indexOf(',');
  const name = (comma < 0 ? opt : opt.slice(0, comma)).toLowerCase();
  const conf = comma < 0 ? undefined : opt.slice(comma + 1);
  const dev = lpcDevice(name);
  if (dev) {
    const writer: ConfigTreeWriter = { set: (rel, value) => config.set(`${dev.node}.${rel}`, value) };
    try {
      dev.lpcConfig(writer, conf);
    } catch (e) {
      if (e instanceof UserError) throw new UserError(`LPC device ${quote(name)} ${e.message} in ${quote('-l ' + opt)}`, e.code);
      throw e;
    }
    return;
  }
  if (LPC_UNSUPPORTED.includes(name)) throw new UserError(`LPC device ${quote(name)} (${quote('-l ' + opt)}) is not supported by tshyve yet`);
  throw new UserError(`unknown LPC device ${quote(name)} (known: ${lpcDeviceNames().join(', ')})`);
}
