/**
 * The seccomp filter, installed on every thread at once (TSYNC: node's
 * threads, worker_threads included, and those started later inherit it).
 */
import { HostError } from '../../errors.js';
import { errno, libc } from '../libc.js';
import { encode, type Insn } from './bpf.js';
import { syscallNr } from './syscalls.js';

const SECCOMP_SET_MODE_FILTER = 1;
const SECCOMP_FILTER_FLAG_TSYNC = 1;

/** the filters installed (once a process: a few KiB) */
const pinned: Buffer[] = [];

export function installFilter(program: Insn[]): void {
  const filter = encode(program);
  const prog = Buffer.alloc(16); // struct sock_fprog { u16 len; struct sock_filter *filter; }
  prog.writeUInt16LE(program.length, 0);
  prog.writeBigUInt64LE(libc.bufferAddress(filter), 8);
  pinned.push(filter, prog); // only their addresses reach the kernel: nothing may collect them first
  const r = libc.syscall(syscallNr('seccomp'), SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, libc.bufferAddress(prog));
  if (r < 0) throw new HostError(`sandbox: seccomp: errno ${errno()}`, 'ESANDBOX');
  // (a positive value is a thread that could not take the filter: none was installed)
  if (r > 0) throw new HostError(`sandbox: seccomp: thread ${r} could not take the filter`, 'ESANDBOX');
}
