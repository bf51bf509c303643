/**
 * TEST ONLY (`-o sandbox.probe=1`, docs/security.md): after lock-down, try
 * what the sandbox must refuse and print one line each, `tshyve: sandbox
 * probe: WHAT: refused (ERRNO)` or `... ALLOWED`. Refused system calls are
 * also reported by the SIGSYS handler; with sandbox.violation=kill the first
 * of them ends tshyve.
 */
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { readdirSync, readFile } from 'node:fs';
import { errno, libc, O_CLOEXEC, O_CREAT, O_EXCL, O_WRONLY } from '../libc.js';
import { syscallNr } from './syscalls.js';

const AT_FDCWD = -100;
const O_RDONLY = 0;
const errnoName = (e: number): string => Object.entries(constants.errno).find(([, v]) => v === e)?.[0] ?? `errno ${e}`;
const cstr = (s: string): Buffer => Buffer.from(`${s}\0`);

/** Chosen before lock-down (the directory cannot be read after it): a file beside the first disk that the VM does not use. */
export function prepareProbe(openPaths: string[], snapshotDir: string | undefined): () => void {
  const disk = openPaths[0];
  const beside = disk === undefined ? undefined : readdirSync(dirname(disk)).map((n) => join(dirname(disk), n)).find((p) => !openPaths.includes(p));
  const outside = join(dirname(snapshotDir ?? '/tmp/x'), `tshyve-probe-${process.pid}`);
  return () => {
    const tries: [string, () => number][] = [
      ['execve /bin/sh', () => {
        const path = cstr('/bin/sh'), argv = Buffer.alloc(16);
        argv.writeBigUInt64LE(libc.bufferAddress(path));
        return libc.syscall(syscallNr('execve'), libc.bufferAddress(path), libc.bufferAddress(argv), 0);
      }],
      ['open /etc/shadow', () => libc.open('/etc/shadow', O_RDONLY | O_CLOEXEC)],
      ...(beside ? [[`open ${beside} (beside the disk)`, () => libc.open(beside, O_RDONLY | O_CLOEXEC)] as [string, () => number]] : []),
      [`create ${outside} (outside the snapshot directory)`, () => libc.openat(AT_FDCWD, outside, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)],
      ['ptrace attach to pid 1', () => libc.syscall(syscallNr('ptrace'), 16 /* PTRACE_ATTACH */, 1, 0, 0)],
      ['mount tmpfs on /mnt', () => {
        const src = cstr('none'), target = cstr('/mnt'), type = cstr('tmpfs');
        return libc.syscall(syscallNr('mount'), libc.bufferAddress(src), libc.bufferAddress(target), libc.bufferAddress(type), 0, 0);
      }],
      ['socket AF_INET (to the outside)', () => libc.syscall(syscallNr('socket'), 2 /* AF_INET */, 1 /* SOCK_STREAM */, 0)],
      ['bpf BPF_PROG_LOAD', () => libc.syscall(syscallNr('bpf'), 5, 0, 0)],
    ];
    for (const [what, attempt] of tries) {
      const r = attempt();
      const line = r < 0 ? `refused (${errnoName(errno())})` : 'ALLOWED';
      if (r >= 0 && !what.startsWith('ptrace') && !what.startsWith('mount')) libc.close(r);
      process.stderr.write(`tshyve: sandbox probe: ${what}: ${line}\n`);
    }
    // Landlock binds each thread: the open made by libuv's pool, not by this thread, must be refused too.
    readFile('/etc/shadow', (e) => {
      process.stderr.write(`tshyve: sandbox probe: open /etc/shadow from libuv's thread pool: ${e ? `refused (${e.code})` : 'ALLOWED'}\n`);
    });
  };
}
