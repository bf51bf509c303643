/**
 * Privileges: no_new_privs (nothing exec'd could gain any; Landlock and
 * seccomp require it), every capability dropped from the bounding set and
 * from the effective, permitted, inheritable and ambient sets, and with a
 * user named, that user's uid and gid (and only its gid as group).
 * Credentials belong to a thread: each step is made on every thread.
 */
import { readFileSync } from 'node:fs';
import { UserError, HostError } from '../../errors.js';
import { errno, libc } from '../libc.js';
import { onEveryThread, onEveryThreadInTurn, type Call } from './native.js';
import { syscallNr } from './syscalls.js';

const PR_CAPBSET_DROP = 24, PR_SET_NO_NEW_PRIVS = 38, PR_CAP_AMBIENT = 47, PR_CAP_AMBIENT_CLEAR_ALL = 4;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

export interface TargetUser { name: string; uid: number; gid: number }

/** The user `-o sandbox.user=NAME` names (a name, or a numeric uid[:gid]). */
export function lookUpUser(name: string): TargetUser {
  const num = /^(\d+)(?::(\d+))?$/.exec(name);
  if (num) return { name, uid: Number(num[1]), gid: Number(num[2] ?? num[1]) };
  const pw = libc.getpwnam(name);
  if (!pw) throw new UserError(`sandbox.user: no user named '${name}'`);
  return { name, ...pw };
}

export function setNoNewPrivs(): void {
  const prctl = syscallNr('prctl');
  onEveryThread('no_new_privs', prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/** Empty the bounding and ambient sets (while the threads still hold CAP_SETPCAP). */
export function dropBoundingSet(): void {
  if (!hasCap(8 /* CAP_SETPCAP */)) return; // not root: the bounding set cannot be changed, and gives nothing without exec
  const prctl = syscallNr('prctl');
  const last = Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8'));
  const drops: Call[] = Array.from({ length: last + 1 }, (_, cap) => [prctl, PR_CAPBSET_DROP, cap, 0, 0, 0]);
  onEveryThreadInTurn(`emptying the bounding set (capabilities 0-${last}) and the ambient set`,
    [...drops, [prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0]]);
}

/** Switch to `user` (glibc's setres*id reach every thread); the kernel then clears the capabilities of a uid that is not 0. */
export function switchUser(user: TargetUser): void {
  const gids = Buffer.alloc(4);
  gids.writeUInt32LE(user.gid);
  if (libc.setgroups(1, gids) !== 0) throw new HostError(`sandbox.user=${user.name}: setgroups: errno ${errno()}`, 'ESANDBOX');
  if (libc.setresgid(user.gid, user.gid, user.gid) !== 0) throw new HostError(`sandbox.user=${user.name}: setresgid(${user.gid}): errno ${errno()}`, 'ESANDBOX');
  if (libc.setresuid(user.uid, user.uid, user.uid) !== 0) throw new HostError(`sandbox.user=${user.name}: setresuid(${user.uid}): errno ${errno()}`, 'ESANDBOX');
}

/** Effective, permitted and inheritable capabilities all empty, on every thread. */
export function dropCapabilities(): void {
  const hdr = Buffer.alloc(8);
  hdr.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  const data = Buffer.alloc(24); // two struct __user_cap_data_struct { effective, permitted, inheritable }: all zero
  onEveryThread('capset', syscallNr('capset'), libc.bufferAddress(hdr), libc.bufferAddress(data));
}

function hasCap(cap: number): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/thread-self/status', 'utf8'));
  return m !== null && (BigInt(`0x${m[1]}`) & (1n << BigInt(cap))) !== 0n;
}
