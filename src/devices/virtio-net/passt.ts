/**
 * User-mode networking, bhyve's `slirp` backend, through passt (Debian's
 * package `passt`): `-s N,virtio-net,slirp[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...`.
 * tshyve makes an AF_UNIX stream socketpair and starts `passt --fd 3
 * --foreground --quiet` with the other end as its fd 3; frames then go
 * both ways length-prefixed (stream-backend.ts). passt answers the
 * guest's DHCP, ARP and NDP with the host's own addresses, and carries its
 * TCP, UDP and ICMP over host sockets. Each hostfwd rule becomes a `-t`
 * or `-u` port forward. passt ends when the socket closes (the VM ends);
 * a restore starts a new one.
 *
 * Start-up is waited for (a few ms), so a missing passt, a port that is
 * taken or a rule passt refuses is one line at start-up (UserError, exit 4).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, openSync, readSync, unlinkSync, mkdtempSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { ConfigNode } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { errno, F_GETFL, F_SETFL, libc, O_NONBLOCK } from '../../host/libc.js';
import { log } from '../../log.js';
import { registerNetBackend } from './backend.js';
import { StreamFrameBackend } from './stream-backend.js';

export interface HostForward {
  proto: 'tcp' | 'udp';
  /** '' for every address */
  hostAddr: string;
  hostPort: number;
  guestPort: number;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function port(s: string, rule: string, what: string): number {
  const n = /^\d{1,5}$/.test(s) ? Number(s) : NaN;
  if (!(n >= 1 && n <= 65535)) throw new UserError(`${what}: '${rule}': ${s === '' ? 'no port' : `'${s}' is not a port (1-65535)`}`);
  return n;
}

/**
 * One rule, bhyve's (libslirp's) `PROTO:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`.
 * passt forwards to the one address it gives the guest, so GUESTADDR must
 * be empty. HOSTADDR is IPv4 or empty (every address).
 */
export function parseHostForward(rule: string, what = 'hostfwd'): HostForward {
  const m = /^(tcp|udp):([^:]*):([^-]*)-([^:]*):(.*)$/.exec(rule.trim());
  if (!m) throw new UserError(`${what}: '${rule}' is not a forwarding rule (tcp|udp:[HOSTADDR]:HOSTPORT-:GUESTPORT)`);
  const [, proto, hostAddr, hostPort, guestAddr, guestPort] = m as unknown as [string, 'tcp' | 'udp', string, string, string, string];
  if (hostAddr !== '' && !IPV4.test(hostAddr)) throw new UserError(`${what}: '${rule}': '${hostAddr}' is not an IPv4 address`);
  if (guestAddr !== '') throw new UserError(`${what}: '${rule}': a guest address cannot be chosen with passt (it forwards to the address it gives the guest); leave it empty`);
  return { proto, hostAddr, hostPort: port(hostPort, rule, what), guestPort: port(guestPort, rule, what) };
}

/** The rules under `hostfwd.N` (in N order); a value may hold several, `;`-separated, as bhyve's config does. */
export function hostForwards(node: ConfigNode): HostForward[] {
  const fw = node.node('hostfwd');
  const where = node.path ? `${node.path}.hostfwd` : 'hostfwd';
  const values: [string, string][] = fw?.value !== undefined ? [[where, fw.value]] : [];
  if (fw) {
    const keys = [...fw.children.keys()];
    for (const k of keys) if (!/^\d+$/.test(k)) throw new UserError(`${where}.${k}: the index must be a number`);
    for (const k of keys.sort((a, b) => Number(a) - Number(b))) values.push([`${where}.${k}`, fw.children.get(k)!.value ?? '']);
  }
  return values.flatMap(([w, v]) => v.split(';').filter((r) => r.trim() !== '').map((r) => parseHostForward(r, w)));
}

/** passt's options for the rules: `-t [ADDR/]HOSTPORT:GUESTPORT`, `-u` for udp. */
export function passtForwardArgs(rules: HostForward[]): string[] {
  return rules.flatMap((r) => [r.proto === 'tcp' ? '-t' : '-u', `${r.hostAddr ? `${r.hostAddr}/` : ''}${r.hostPort}:${r.guestPort}`]);
}

/** The passt on PATH (or $TSHYVE_PASST), undefined when there is none. */
export function findPasst(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.TSHYVE_PASST) return env.TSHYVE_PASST;
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, 'passt');
    try { accessSync(p, constants.X_OK); return p; } catch { /* next */ }
  }
  return undefined;
}

const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0o2000000;
/** How long passt may take to start (it binds its ports in a few ms; L1's TCG is slower). */
const START_MS = 10_000;
/** What passt prints once it is configured (its ports bound); without -q. */
const READY = /^(MAC|DHCP|NDP\/DHCPv6):$/m;

function sleepMs(ms: number): void { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }

/** A child's state letter from /proc (Z once it has exited and not been reaped), '' when gone. */
function procState(pid: number): string {
  try {
    const fd = openSync(`/proc/${pid}/stat`, 'r');
    try {
      const b = Buffer.alloc(512);
      const s = b.toString('latin1', 0, readSync(fd, b));
      return /\) (\S)/.exec(s)?.[1] ?? '';
    } finally { closeSync(fd); }
  } catch { return ''; }
}

/** passt's own lines (not its complaints that there is no syslog). */
function passtLines(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !/^Failed to send \d+ bytes to syslog$/.test(l));
}

/**
 * Start passt on one end of a socketpair; returns the other end
 * (non-blocking) and the process. Waits until passt is configured, or has
 * failed: then UserError with passt's own last line.
 */
export function startPasst(rules: HostForward[], what = 'slirp', env: NodeJS.ProcessEnv = process.env): { fd: number; child: ChildProcess } {
  const bin = findPasst(env);
  if (!bin) throw new UserError(`${what}: user-mode networking needs passt, which is not on PATH (Debian/Ubuntu: apt-get install passt)`);
  const sv = Buffer.alloc(8);
  if (libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) throw new UserError(`${what}: socketpair failed: errno ${errno()}`);
  const fd = sv.readInt32LE(0), peer = sv.readInt32LE(4);
  // passt's output goes to a file read here while it starts (not a pipe: the loop does not run meanwhile).
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-passt-'));
  const errPath = join(dir, 'stderr');
  const errFd = openSync(errPath, 'w+', 0o600);
  unlinkSync(errPath);
  rmdirSync(dir);
  let child: ChildProcess;
  try {
    child = spawn(bin, ['--fd', '3', '--foreground', '--stderr', ...passtForwardArgs(rules)], { stdio: ['ignore', 'ignore', errFd, peer] });
  } finally {
    libc.close(peer);
  }
  child.on('error', () => { /* reported below from its output, or as it ends */ });
  const output = (): string => {
    const b = Buffer.alloc(64 * 1024);
    return b.toString('utf8', 0, readSync(errFd, b, 0, b.length, 0));
  };
  const t0 = Date.now();
  for (;;) {
    const state = child.pid === undefined ? '' : procState(child.pid);
    if (state === '' || state === 'Z') {
      const last = passtLines(output()).at(-1) ?? 'no message';
      closeSync(errFd);
      libc.close(fd);
      throw new UserError(`${what}: passt did not start: ${last}`);
    }
    if (READY.test(output()) || Date.now() - t0 > START_MS) break;
    sleepMs(5);
  }
  closeSync(errFd);
  child.unref();
  child.on('exit', (code, signal) => {
    if (!stopping.has(child)) log('warn', `${what}: passt ended (${signal ?? `exit ${code}`}); the guest's network is down`);
  });
  libc.fcntlInt(fd, F_SETFL, libc.fcntlInt(fd, F_GETFL, 0) | O_NONBLOCK);
  return { fd, child };
}

/** passt processes being stopped by tshyve (their end is not news). */
const stopping = new WeakSet<ChildProcess>();

registerNetBackend('slirp', {
  open: (node) => {
    const what = node.path ? `${node.path}.backend=slirp` : 'slirp';
    const { fd, child } = startPasst(hostForwards(node), what);
    return new StreamFrameBackend(fd, true, () => {
      stopping.add(child);
      // its socket is closed: it leaves by itself once it has seen traffic; this covers a guest that sent nothing
      child.kill('SIGTERM');
    });
  },
  init: (b) => ({ type: 'slirp', fd: b.fd, vnetHdr: false }),
  fromInit: (init) => new StreamFrameBackend(init.fd),
});
