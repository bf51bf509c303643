/**
 * The seccomp filter as a classic BPF program: the architecture checked
 * first (x86_64 only, x32 numbers refused), then the system calls whose
 * arguments matter (clone without CLONE_THREAD, sockets of families the VM
 * does not use, SIGSYS's handler replaced, TIOCSTI), then the allow-list,
 * most frequent first; anything else traps (SIGSYS: native/sandbox.c
 * reports it, then EPERM or the end of the process).
 */
import { syscallNr } from './syscalls.js';

// linux/filter.h, linux/seccomp.h, linux/audit.h
const LD_W_ABS = 0x20, JEQ_K = 0x15, JGE_K = 0x35, JSET_K = 0x45, RET_K = 0x06;
export const RET = { KILL_PROCESS: 0x80000000, TRAP: 0x00030000, ERRNO: 0x00050000, ALLOW: 0x7fff0000 } as const;
const AUDIT_ARCH_X86_64 = 0xc000003e;
const X32_SYSCALL_BIT = 0x40000000;
/** struct seccomp_data: nr, arch, instruction pointer, then six 64-bit arguments (the low half first) */
const OFF_NR = 0, OFF_ARCH = 4;
const argLow = (i: number): number => 16 + 8 * i;
const argHigh = (i: number): number => 20 + 8 * i;

const CLONE_THREAD = 0x10000;
const AF_UNIX = 1;
const SIGSYS = 31;
const TIOCSTI = 0x5412;
const ENOSYS = 38;

export interface Insn { code: number; jt: number; jf: number; k: number }

export interface FilterSpec {
  /** system calls allowed whatever their arguments, most frequent first */
  allow: readonly string[];
}

const ld = (off: number): Insn => ({ code: LD_W_ABS, jt: 0, jf: 0, k: off });
const ret = (k: number): Insn => ({ code: RET_K, jt: 0, jf: 0, k });
const jeq = (k: number, jt: number, jf: number): Insn => ({ code: JEQ_K, jt, jf, k });

/** A block run when the loaded number is `nr`: `body` must end in returns (it is skipped otherwise, the number still loaded). */
function onCall(nr: number, body: Insn[]): Insn[] {
  return [jeq(nr, 0, body.length), ...body];
}

/** Allow when the low half of argument `arg` is one of `values` and the high half is 0, else trap. */
function argIn(arg: number, values: number[]): Insn[] {
  const body: Insn[] = [ld(argHigh(arg)), jeq(0, 0, values.length + 1), ld(argLow(arg))];
  values.forEach((v, i) => body.push(jeq(v, values.length - i, 0)));
  body.push(ret(RET.TRAP), ret(RET.ALLOW));
  return body;
}

export function buildFilter(spec: FilterSpec): Insn[] {
  const p: Insn[] = [
    ld(OFF_ARCH),
    jeq(AUDIT_ARCH_X86_64, 1, 0),
    ret(RET.KILL_PROCESS),
    ld(OFF_NR),
    { code: JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
    ret(RET.KILL_PROCESS),
  ];
  // clone: threads only (glibc's pthread_create passes CLONE_THREAD; fork and posix_spawn do not).
  p.push(...onCall(syscallNr('clone'), [ld(argLow(0)), { code: JSET_K, jt: 0, jf: 1, k: CLONE_THREAD }, ret(RET.ALLOW), ret(RET.TRAP)]));
  // clone3's flags are in memory BPF cannot read: glibc falls back to clone on ENOSYS.
  p.push(...onCall(syscallNr('clone3'), [ret(RET.ERRNO | ENOSYS)]));
  p.push(...onCall(syscallNr('socket'), argIn(0, [AF_UNIX])));
  // The handler that reports refusals stays: replacing SIGSYS's action is itself refused.
  p.push(...onCall(syscallNr('rt_sigaction'), [ld(argLow(0)), jeq(SIGSYS, 0, 1), ret(RET.TRAP), ret(RET.ALLOW)]));
  // No faking input on a terminal (the stdio console's).
  p.push(...onCall(syscallNr('ioctl'), [ld(argLow(1)), jeq(TIOCSTI, 0, 1), ret(RET.TRAP), ret(RET.ALLOW)]));
  const special = new Set(['clone', 'clone3', 'socket', 'rt_sigaction', 'ioctl']);
  for (const name of spec.allow) {
    if (special.has(name)) continue;
    p.push(jeq(syscallNr(name), 0, 1), ret(RET.ALLOW));
  }
  p.push(ret(RET.TRAP));
  // ioctl's block is reached late in the chain: it is the hottest call (KVM_RUN), so it goes first after the arch check.
  return hoist(p, 'ioctl');
}

/** Move the block of `name` right after the arch check (blocks are self-contained: offsets are relative). */
function hoist(p: Insn[], name: string): Insn[] {
  const nr = syscallNr(name);
  const at = p.findIndex((i) => i.code === JEQ_K && i.k === nr && i.jt === 0 && i.jf > 1);
  if (at < 0) return p;
  const block = p.slice(at, at + 1 + p[at]!.jf);
  // the body reloads arguments: the number is loaded again after it for the rest of the chain
  return [...p.slice(0, 6), ...block, ld(OFF_NR), ...p.slice(6, at), ...p.slice(at + block.length)];
}

/** struct sock_filter[] */
export function encode(p: Insn[]): Buffer {
  if (p.length > 4096) throw new Error(`seccomp filter of ${p.length} instructions (at most 4096)`);
  const b = Buffer.alloc(p.length * 8);
  p.forEach((i, n) => {
    if (i.jt > 255 || i.jf > 255) throw new Error(`seccomp filter jump too long at ${n}`);
    b.writeUInt16LE(i.code, n * 8);
    b.writeUInt8(i.jt, n * 8 + 2);
    b.writeUInt8(i.jf, n * 8 + 3);
    b.writeUInt32LE(i.k >>> 0, n * 8 + 4);
  });
  return b;
}

/** Run the program over one call, as the kernel would (for tests). */
export function evaluate(p: Insn[], call: { nr: number; arch?: number; args?: (number | bigint)[] }): number {
  const data = Buffer.alloc(64);
  data.writeUInt32LE(call.nr >>> 0, OFF_NR);
  data.writeUInt32LE((call.arch ?? AUDIT_ARCH_X86_64) >>> 0, OFF_ARCH);
  (call.args ?? []).forEach((a, i) => data.writeBigUInt64LE(BigInt.asUintN(64, BigInt(a)), 16 + 8 * i));
  let acc = 0;
  for (let pc = 0; pc < p.length;) {
    const i = p[pc]!;
    switch (i.code) {
      case LD_W_ABS: acc = data.readUInt32LE(i.k); pc++; break;
      case JEQ_K: pc += 1 + (acc === i.k >>> 0 ? i.jt : i.jf); break;
      case JGE_K: pc += 1 + (acc >= i.k >>> 0 ? i.jt : i.jf); break;
      case JSET_K: pc += 1 + ((acc & i.k) !== 0 ? i.jt : i.jf); break;
      case RET_K: return i.k >>> 0;
      default: throw new Error(`unknown BPF opcode ${i.code}`);
    }
  }
  throw new Error('BPF program fell off its end');
}
