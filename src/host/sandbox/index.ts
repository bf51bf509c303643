/**
 * The sandbox, what Capsicum's capability mode does for bhyve: once the VM
 * is built and its files are open, and before the guest's first instruction,
 * tshyve gives up what it no longer needs, in this order (each layer is its
 * own module; docs/security.md says what each stops):
 *   1. the SIGSYS handler that reports refused calls (native.ts);
 *   2. no_new_privs, the bounding set emptied (privileges.ts);
 *   3. Landlock: the file system limited to what the VM still uses (landlock.ts);
 *   4. with sandbox.user, that user's uid and gid;
 *   5. every capability dropped;
 *   6. the seccomp filter, on every thread (bpf.ts, seccomp.ts, allowed.ts).
 * Before all of them it reserves a few TCP sockets for a migration to
 * HOST,PORT (reserve.ts): no new one can be made after.
 * `-o sandbox=off` turns it off (a warning); `sandbox.violation=error` makes
 * a refused system call fail with EPERM instead of ending tshyve.
 */
import { readdirSync, readlinkSync, fstatSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ConfigTree } from '../../config/tree.js';
import { UserError } from '../../errors.js';
import { log } from '../../log.js';
import { F_GETFL, libc } from '../libc.js';
import { ALLOWED } from './allowed.js';
import { buildFilter, type Insn } from './bpf.js';
import { buildRuleset, FS, landlockAbi, READ, READ_WRITE, type PathRule } from './landlock.js';
import { onEveryThread, installSigsysHandler, PACKAGE_ROOT } from './native.js';
import { dropBoundingSet, dropCapabilities, lookUpUser, setNoNewPrivs, switchUser, type TargetUser } from './privileges.js';
import { prepareProbe } from './probe.js';
import { SocketReserve } from './reserve.js';
import { installFilter } from './seccomp.js';
import { SYSCALLS, syscallNr } from './syscalls.js';

export interface SandboxOptions {
  violation: 'kill' | 'error';
  user?: TargetUser;
  /** test only: try what the sandbox must refuse, after lock-down (probe.ts) */
  probe: boolean;
}

/** What is in force, for --get-stats and info. */
export interface SandboxStatus {
  on: boolean;
  /** the layers in force, in words: `no_new_privs,capabilities,landlock(abi 7),seccomp(kill)` */
  layers: string;
  /** the TCP sockets a migration to HOST,PORT connects (reserve.ts); none with the sandbox off */
  reserve?: SocketReserve;
}

export const SANDBOX_OFF: SandboxStatus = { on: false, layers: 'none' };

/** The sandbox's options from the config; undefined when it is off (with the warning line). */
export function sandboxOptions(config: ConfigTree): SandboxOptions | undefined {
  if (!config.getBool('sandbox', true)) {
    log('warn', 'the sandbox is off (-o sandbox=off): a bug in a device model is a bug in the host');
    return undefined;
  }
  const violation = config.get('sandbox.violation') ?? 'kill';
  if (violation !== 'kill' && violation !== 'error') throw new UserError(`sandbox.violation: '${violation}' is not kill or error`);
  const userName = config.get('sandbox.user');
  return {
    violation,
    user: userName === undefined ? undefined : lookUpUser(userName),
    probe: config.getBool('sandbox.probe', false),
  };
}

/** Where the VM writes once it runs. */
export interface SandboxDirs {
  /** checkpoints and suspends go here (and below) */
  snapshotDir?: string;
  /** the control socket's directory: its socket is removed from it at exit */
  controlDir?: string;
}

/**
 * Lock the process down (see the top of this file). Every thread is
 * covered, those node started before included. Throws HostError (one line)
 * when a layer the kernel has cannot be put in force.
 */
export function lockDown(opts: SandboxOptions, dirs: SandboxDirs): SandboxStatus {
  const { reserve, program } = prepareLockDown(opts);
  const layers = ['no_new_privs'];
  const open = openFiles();
  const probe = opts.probe ? prepareProbe(open.map((r) => r.path), dirs.snapshotDir) : undefined;
  const abi = landlockAbi();
  if (abi === 0) log('warn', 'sandbox: this kernel has no Landlock (Linux 5.13+ with landlock in its LSM list): the file system is not limited');
  else {
    const fd = buildRuleset(abi, [...fileRules(dirs), ...open]);
    try {
      onEveryThread('landlock_restrict_self', syscallNr('landlock_restrict_self'), fd, 0);
    } finally {
      libc.close(fd);
    }
    layers.push(`landlock(abi=${abi})`);
  }
  if (opts.user) {
    switchUser(opts.user);
    layers.push(`user(${opts.user.uid}:${opts.user.gid})`);
  }
  dropCapabilities();
  layers.push('capabilities');
  installFilter(program);
  layers.push(`seccomp(${opts.violation})`);
  probe?.();
  return { on: true, layers: layers.join(','), reserve };
}

let prepared: { reserve: SocketReserve; program: Insn[] } | undefined;

/**
 * lockDown's first steps, which limit nothing the VM's files need (the
 * migration reserve, the SIGSYS handler, no_new_privs, the bounding set,
 * the seccomp program built): done by lockDown if not done before. A
 * migration's destination does them while RAM comes in, since its disks
 * open only at the switchover and the rest must wait for them (building
 * the program is cold code, ~20 ms even where user space is fast).
 */
export function prepareLockDown(opts: SandboxOptions): { reserve: SocketReserve; program: Insn[] } {
  if (prepared) return prepared;
  const reserve = SocketReserve.make();
  installSigsysHandler(SYSCALLS, opts.violation === 'kill');
  setNoNewPrivs();
  dropBoundingSet();
  return prepared = { reserve, program: buildFilter({ allow: [...ALLOWED, ...RARE] }) };
}

/**
 * Calls on paths the measurement did not reach, each harmless (no new
 * access: files are Landlock's): discard and write-zeroes (fallocate),
 * nocache disks (fadvise64), flushes, sleeps and clocks without the vDSO,
 * socket I/O of other kinds, vectored I/O node may choose.
 */
const RARE: readonly string[] = [
  'fallocate', 'fadvise64', 'sync_file_range', 'unlinkat', 'rename', 'renameat2', 'nanosleep', 'clock_nanosleep', 'clock_gettime',
  'clock_getres', 'gettimeofday', 'restart_syscall', 'mremap', 'poll', 'ppoll', 'epoll_pwait2', 'getrusage', 'membarrier', 'dup',
  'dup3', 'sendmsg', 'recvmsg', 'sendto', 'statfs', 'fstatfs', 'readlinkat', 'faccessat', 'faccessat2', 'getppid', 'preadv2',
  'pwritev2', 'timerfd_create', 'timerfd_settime', 'timerfd_gettime', 'lstat', 'stat', 'sched_getparam', 'sched_getscheduler',
];


function fileRules(dirs: SandboxDirs): PathRule[] {
  const real = (p: string): string => { try { return realpathSync(p); } catch { return p; } };
  const rules: PathRule[] = [
    // What node still loads: tshyve's own code (device models and the migration code load lazily), its packages, node's libraries.
    ...['dist', 'build', 'package.json', 'node_modules'].map((p) => ({ path: real(join(PACKAGE_ROOT, p)), access: READ })),
    { path: real(dirname(process.execPath)), access: READ },
    ...['/usr/lib', '/lib', '/lib64', '/usr/lib64'].map((path) => ({ path, access: READ })),
    { path: `/proc/${process.pid}`, access: READ },
    ...['/dev/urandom', '/dev/random', '/dev/zero'].map((path) => ({ path, access: FS.READ_FILE })),
    { path: '/dev/null', access: FS.READ_FILE | FS.WRITE_FILE },
  ];
  if (dirs.controlDir) rules.push({ path: dirs.controlDir, access: FS.REMOVE_FILE });
  if (dirs.snapshotDir) rules.push({ path: dirs.snapshotDir, access: READ_WRITE | FS.MAKE_REG | FS.REMOVE_FILE });
  return rules;
}

/**
 * Every regular file and block device the process holds open (the disks,
 * their backing files, a console's output file), with the access it was
 * opened with: a device thread may open it again by name.
 */
function openFiles(): PathRule[] {
  const rules: PathRule[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    let path: string;
    try {
      path = readlinkSync(`/proc/self/fd/${fd}`);
      const st = fstatSync(fd);
      if (!st.isFile() && !st.isBlockDevice()) continue;
    } catch { continue; } // closed meanwhile (the directory's own fd)
    // a /proc file (guest RAM's pagemap) is read through its fd only, never opened again by name
    if (!path.startsWith('/') || path.endsWith(' (deleted)') || path.startsWith('/proc/')) continue;
    const mode = libc.fcntlInt(fd, F_GETFL, 0) & 3;
    rules.push({ path, access: mode === 0 ? FS.READ_FILE : mode === 1 ? FS.WRITE_FILE | FS.TRUNCATE : READ_WRITE & ~FS.READ_DIR });
  }
  return rules;
}
