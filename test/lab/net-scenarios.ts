/**
 * Lab scenarios for virtio-net (tap): a guest on a tap in a network
 * namespace of L1's own (10.99.0.1/24 on the tap, the guest 10.99.0.2):
 * it pings the host side, then 64 MiB go host->guest and guest->host over
 * TCP (busybox nc) and their sha256 is compared at both ends; the same with
 * the guest's offloads turned off (ethtool -K). No traffic leaves L1.
 *
 * TSHYVE_LAB_NET=0 leaves them out (linux-driver.ts adds them otherwise;
 * the checks in test/linux-lab.test.ts then say they were skipped).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from '../helpers.js';
import { bounded } from './proc.js';
import { guestCmd, vmArgs, type BootResult } from './linux-driver.js';

/** Receive one TCP connection on 10.99.0.1:5002 into the file argv[1] (no single quotes: it goes in a sh '...'). */
const RECEIVE = [
  'import socket, sys',
  's = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.99.0.1", 5002)); s.listen(1)',
  'c, _ = s.accept(); f = open(sys.argv[1], "wb")',
  'while True:',
  '    d = c.recv(1 << 16)',
  '    if not d: break',
  '    f.write(d)',
].join('\n');

export const NET_ENABLED = process.env.TSHYVE_LAB_NET !== '0';
const NS = 'tshv-net';
const sh = (cmd: string): string => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

/** A namespace with tap0 up at 10.99.0.1/24 (made again each time). */
function tapNamespace(): void {
  sh(`ip netns del ${NS} 2>/dev/null; ip netns add ${NS} && ip -n ${NS} link set lo up && ` +
    `ip -n ${NS} tuntap add tap0 mode tap && ip -n ${NS} addr add 10.99.0.1/24 dev tap0 && ip -n ${NS} link set tap0 up`);
}

async function tapTransfer(name: string, offloadsOff: boolean): Promise<BootResult> {
  tapNamespace();
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-net-'));
  const file = join(dir, 'to-guest.bin');
  const data = randomBytes(64 << 20);
  writeFileSync(file, data);
  const sha = createHash('sha256').update(data).digest('hex');
  const cmd = guestCmd([
    'ip link set eth0 up && ip addr add 10.99.0.2/24 dev eth0',
    ...(offloadsOff ? ['ethtool -K eth0 tx off tso off gso off gro off sg off; echo ETHTOOL=$?'] : []),
    'ping -c 3 -W 5 10.99.0.1 >/dev/null; echo PING=$?',
    'nc -l -p 5001 > /tmp/in.bin; echo GOT_SHA=$(sha256sum /tmp/in.bin | cut -d" " -f1)',
    'head -c 67108864 /dev/urandom > /tmp/out.bin; echo SENT_SHA=$(sha256sum /tmp/out.bin | cut -d" " -f1)',
    'for i in $(seq 50); do nc 10.99.0.1 5002 < /tmp/out.bin && break; sleep 0.5; done; echo SENT=$?',
    // nc's close leaves data in the socket's send buffer: let TCP deliver it before the power goes
    'sleep 5; poweroff -f',
  ]);
  const args = ['netns', 'exec', NS, process.execPath, CLI, ...vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', '3,virtio-net,tap0'])];
  const vm = bounded(['ip', ...args], 600_000);
  // host side: send once the guest listens, then receive what it sends
  const host = bounded(['sh', '-c', [
    `for i in $(seq 120); do ip netns exec ${NS} busybox nc 10.99.0.2 5001 < ${file} && break; sleep 1; done`,
    // (not busybox nc -l: it ends the connection when its own stdin ends)
    `ip netns exec ${NS} python3 -c '${RECEIVE}' ${dir}/from-guest.bin`,
    `echo HOST_GOT_SHA=$(sha256sum ${dir}/from-guest.bin | cut -d" " -f1) HOST_GOT_BYTES=$(stat -c %s ${dir}/from-guest.bin)`,
  ].join('; ')], 600_000);
  const [r, h] = await Promise.all([vm.done, host.done]);
  return { name, code: r.code, stdout: r.stdout, stderr: r.stderr, ms: r.ms, expectedSha256: sha, tcp: h.stdout + h.stderr };
}

export const netScenarios: Record<string, () => Promise<BootResult>> = NET_ENABLED ? {
  'net-tap': () => tapTransfer('net-tap', false),
  'net-tap-no-offloads': () => tapTransfer('net-tap-no-offloads', true),
} : {};
