/**
 * Landlock (Linux 5.13+, system calls 444-446): the file system as the VM
 * still needs it once it runs. A ruleset lists the accesses it handles
 * (every one this kernel's ABI knows); whatever a rule does not grant
 * beneath one of its paths is then refused (EACCES), for every thread.
 * Descriptors opened before stay as they were: /dev/kvm, taps, disks.
 */
import { fstatSync } from 'node:fs';
import { errno, libc, O_CLOEXEC, O_PATH } from '../libc.js';
import { syscallNr } from './syscalls.js';

const CREATE_RULESET_VERSION = 1;
const RULE_PATH_BENEATH = 1;

/** LANDLOCK_ACCESS_FS_* */
export const FS = {
  EXECUTE: 1 << 0, WRITE_FILE: 1 << 1, READ_FILE: 1 << 2, READ_DIR: 1 << 3, REMOVE_DIR: 1 << 4, REMOVE_FILE: 1 << 5,
  MAKE_CHAR: 1 << 6, MAKE_DIR: 1 << 7, MAKE_REG: 1 << 8, MAKE_SOCK: 1 << 9, MAKE_FIFO: 1 << 10, MAKE_BLOCK: 1 << 11,
  MAKE_SYM: 1 << 12, REFER: 1 << 13, TRUNCATE: 1 << 14, IOCTL_DEV: 1 << 15,
} as const;
/** the rights a rule on a file (not a directory) may hold */
const FILE_RIGHTS = FS.EXECUTE | FS.WRITE_FILE | FS.READ_FILE | FS.TRUNCATE | FS.IOCTL_DEV;
/** everything each ABI version handles: 1 has 13 rights, 2 adds REFER, 3 TRUNCATE, 5 IOCTL_DEV */
const fsRightsOf = (abi: number): number => (1 << 13) - 1 | (abi >= 2 ? FS.REFER : 0) | (abi >= 3 ? FS.TRUNCATE : 0) | (abi >= 5 ? FS.IOCTL_DEV : 0);
/** LANDLOCK_ACCESS_NET_BIND_TCP (ABI 4) */
const NET_TCP_BIND = 1;
/** LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (ABI 6): no connecting to abstract sockets outside the sandbox */
const SCOPE_ABSTRACT_UNIX = 1;

export const READ = FS.READ_FILE | FS.READ_DIR;
export const READ_WRITE = READ | FS.WRITE_FILE | FS.TRUNCATE;

export interface PathRule { path: string; access: number }

/** The kernel's Landlock ABI version; 0 when it has none (or it is turned off at boot). */
export function landlockAbi(): number {
  const v = libc.syscall(syscallNr('landlock_create_ruleset'), 0n, 0, CREATE_RULESET_VERSION);
  return v < 0 ? 0 : v;
}

/**
 * A ruleset fd ready for landlock_restrict_self (on every thread). Paths that
 * do not exist are skipped. TCP connect is not handled: the sandbox's reserved
 * sockets connect a migration (reserve.ts), and seccomp lets no other TCP
 * socket be made; binding a TCP port is refused.
 */
export function buildRuleset(abi: number, rules: PathRule[]): number {
  const handled = fsRightsOf(abi);
  const attr = Buffer.alloc(24);
  attr.writeBigUInt64LE(BigInt(handled), 0);
  if (abi >= 4) attr.writeBigUInt64LE(BigInt(NET_TCP_BIND), 8);
  if (abi >= 6) attr.writeBigUInt64LE(BigInt(SCOPE_ABSTRACT_UNIX), 16);
  const size = abi >= 6 ? 24 : abi >= 4 ? 16 : 8;
  const fd = libc.syscall(syscallNr('landlock_create_ruleset'), libc.bufferAddress(attr), size, 0);
  if (fd < 0) throw new Error(`landlock_create_ruleset: errno ${errno()}`);
  try {
    for (const r of rules) addPathRule(fd, r, handled);
  } catch (e) {
    libc.close(fd);
    throw e;
  }
  return fd;
}

function addPathRule(rulesetFd: number, rule: PathRule, handled: number): void {
  const fd = libc.open(rule.path, O_PATH | O_CLOEXEC);
  if (fd < 0) return; // not here (/lib64 on some systems): nothing to allow
  try {
    const isDir = fstatSync(fd).isDirectory();
    const access = rule.access & handled & (isDir ? ~0 : FILE_RIGHTS);
    if (access === 0) return;
    const attr = Buffer.alloc(12); // struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } packed
    attr.writeBigUInt64LE(BigInt(access), 0);
    attr.writeInt32LE(fd, 8);
    if (libc.syscall(syscallNr('landlock_add_rule'), rulesetFd, RULE_PATH_BENEATH, libc.bufferAddress(attr), 0) < 0) {
      throw new Error(`landlock_add_rule ${rule.path}: errno ${errno()}`);
    }
  } finally {
    libc.close(fd);
  }
}
