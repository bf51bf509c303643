/**
 * The seccomp program, run by a BPF interpreter over calls: what must be
 * refused is, what tshyve uses is not, and arguments are checked where the
 * call alone would say too little.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildFilter, encode, evaluate, RET } from './bpf.js';
import { ALLOWED } from './allowed.js';
import { REFUSED } from './refused.js';
import { SYSCALLS, syscallNr } from './syscalls.js';

const prog = buildFilter({ allow: ALLOWED });
const nr = syscallNr;
const run = (name: string, args: (number | bigint)[] = []) => evaluate(prog, { nr: nr(name), args });

test('every call of the allow-list is known, allowed, and none is one the sandbox must refuse', () => {
  for (const n of ALLOWED) {
    assert.ok(SYSCALLS[n] !== undefined, n);
    assert.ok(!REFUSED.includes(n), `${n} is measured but must be refused`);
  }
  for (const n of ['futex', 'read', 'pwritev', 'epoll_pwait', 'mmap']) assert.equal(run(n), RET.ALLOW, n);
  assert.ok(encode(prog).length <= 4096 * 8);
});

test('what must be refused traps (reported, then EPERM or the end of tshyve), as does any call off the list', () => {
  for (const n of REFUSED) assert.equal(run(n), RET.TRAP, n);
  for (const n of ['execve', 'ptrace', 'mount', 'bpf', 'perf_event_open', 'keyctl', 'io_uring_setup', 'kexec_load', 'unshare', 'setns', 'init_module']) {
    assert.equal(run(n), RET.TRAP, n);
  }
  assert.equal(run('acct'), RET.TRAP);
  assert.equal(evaluate(prog, { nr: 467 }), RET.TRAP, 'a call newer than the table');
});

test('clone: threads yes, processes no; clone3 says ENOSYS so glibc uses clone', () => {
  const CLONE_THREAD_FLAGS = 0x3d0f00; // glibc's pthread_create
  assert.equal(run('clone', [CLONE_THREAD_FLAGS]), RET.ALLOW);
  assert.equal(run('clone', [17 /* SIGCHLD: fork */]), RET.TRAP);
  assert.equal(run('clone', [0x4111 /* CLONE_VM|CLONE_VFORK|SIGCHLD: posix_spawn */]), RET.TRAP);
  assert.equal(run('clone3'), RET.ERRNO | 38);
  assert.equal(run('fork'), RET.TRAP);
  assert.equal(run('vfork'), RET.TRAP);
});

test('sockets: unix ones only (a migration\'s TCP sockets are reserved before lock-down); the high half of the argument counts', () => {
  assert.equal(run('socket', [1, 1, 0]), RET.ALLOW);
  assert.equal(run('socket', [2, 1, 0]), RET.TRAP);
  assert.equal(run('socket', [10, 1, 0]), RET.TRAP);
  assert.equal(run('socket', [16 /* netlink */, 3, 0]), RET.TRAP);
  assert.equal(run('socket', [17 /* packet */, 3, 0]), RET.TRAP);
  assert.equal(run('socket', [(1n << 32n) | 1n]), RET.TRAP);
});

test('the SIGSYS handler cannot be replaced; TIOCSTI is refused, KVM ioctls are not', () => {
  assert.equal(run('rt_sigaction', [31]), RET.TRAP);
  assert.equal(run('rt_sigaction', [12]), RET.ALLOW);
  assert.equal(run('ioctl', [5, 0x5412]), RET.TRAP);
  assert.equal(run('ioctl', [5, 0xae80 /* KVM_RUN */]), RET.ALLOW);
});

test('only x86_64 calls: another architecture or an x32 number kills the process', () => {
  assert.equal(evaluate(prog, { nr: 11, arch: 0x40000003 /* i386 */ }), RET.KILL_PROCESS);
  assert.equal(evaluate(prog, { nr: 0x40000000 | nr('read') }), RET.KILL_PROCESS);
});
