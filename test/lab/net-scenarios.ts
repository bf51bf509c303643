/**
 * Lab scenarios for virtio-net. No traffic leaves L1: every address lives in
 * a network namespace of L1's own.
 *
 * - net-tap, net-tap-no-offloads: a guest on a tap (10.99.0.1/24 on the tap,
 *   the guest 10.99.0.2) pings the host side, then 64 MiB go host->guest and
 *   guest->host over TCP (busybox nc) and their sha256 is compared at both
 *   ends; the second with the guest's offloads turned off (ethtool -K).
 * - net-bridge: two guests on taps of one bridge ping each other and move a
 *   file over TCP.
 * - net-tap-checkpoint: a guest pinging the host side is checkpointed, killed
 *   and restored; the restored guest pings on and moves files both ways.
 * - net-slirp: user-mode networking (passt) in a namespace whose veth has an
 *   address and a default route: the guest's address comes from passt's
 *   DHCP; files go to a server on L1's 127.0.0.1 through the gateway address
 *   and to a server in the guest through a hostfwd port; then the same after
 *   a checkpoint, a kill -9 and a restore. passt must be gone after the kill
 *   and after the restored VM powers off.
 *
 * Each transfer is acknowledged with the sha256 the receiver computed, so a
 * sender knows its bytes arrived (and retries, bounded, until its peer listens).
 *
 * TSHYVE_LAB_NET=0 leaves them out (linux-driver.ts adds them otherwise;
 * the checks in test/linux-lab.test.ts then say they were skipped).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI } from '../helpers.js';
import { bounded } from './proc.js';
import { guestCmd, vmArgs, type BootResult } from './linux-driver.js';
import { restoreArgs, tshyvectl, Vm, type Phase } from './snapshot-scenarios.js';

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

/** `ip netns exec NS`, the prefix of a command that runs in namespace NS. */
const inNs = (ns: string) => ['ip', 'netns', 'exec', ns];

/**
 * L1's side of the transfers, with python3 in a namespace (argv: MODE ...):
 *   serve ADDR PORT [N]    accept connections for ever; read each to its end (or N
 *                          bytes), answer with the sha256 of what came, print "GOT <sha> <bytes>"
 *   send ADDR PORT FILE S  send FILE, half-close, read the answer; again each second
 *                          until the answer is FILE's sha256 (print "SENT <sha> tries=N")
 *                          or S seconds have gone (print "SEND-FAILED ...")
 */
const HOST_SIDE = [
  'import hashlib, socket, sys, time',
  'mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])',
  'if mode == "serve":',
  '    want = int(sys.argv[4]) if len(sys.argv) > 4 else -1',
  '    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(4)',
  '    while True:',
  '        c, _ = s.accept(); h = hashlib.sha256(); n = 0',
  '        while n != want:',
  '            d = c.recv(min(1 << 16, want - n) if want > 0 else 1 << 16)',
  '            if not d: break',
  '            h.update(d); n += len(d)',
  '        try: c.sendall((h.hexdigest() + "\\n").encode()); c.close()',
  '        except OSError: pass',
  '        print("GOT %s %d" % (h.hexdigest(), n), flush=True)',
  'data = open(sys.argv[4], "rb").read(); want = hashlib.sha256(data).hexdigest()',
  'end = time.time() + float(sys.argv[5]); tries = 0; last = ""',
  'while time.time() < end:',
  '    tries += 1',
  '    try:',
  '        c = socket.create_connection((addr, port), timeout=30); c.sendall(data); c.shutdown(socket.SHUT_WR); r = b""',
  '        while True:',
  '            d = c.recv(4096)',
  '            if not d: break',
  '            r += d',
  '        c.close(); last = r.decode(errors="replace").strip()',
  '        if last == want: print("SENT %s tries=%d" % (want, tries), flush=True); sys.exit(0)',
  '    except OSError as e: last = str(e)',
  '    time.sleep(1)',
  'print("SEND-FAILED %s tries=%d last=%r" % (want, tries, last), flush=True)',
].join('\n');

const hostSide = (ns: string, args: string[], timeoutMs = 600_000) => bounded([...inNs(ns), 'python3', '-c', HOST_SIDE, ...args], timeoutMs);

/**
 * Guest shell functions: /tmp/sha.sh serves `nc -ll -p PORT -e /tmp/sha.sh`
 * (it answers with the sha256 of what came and keeps it in /tmp/down.N,
 * N = 1, 2, ...); `waitfile FILE N` waits up to N/5 s for FILE; `up NAME
 * BYTES ADDR PORT` sends that many random bytes, printing NAME_SHA, and
 * the receiver's answer as NAME_REPLY (retrying while nobody listens).
 */
const GUEST_LIB = [
  "cat > /tmp/sha.sh <<'EOF'",
  '#!/bin/sh',
  's=$(sha256sum | cut -c1-64)',
  'echo $s',
  "n=$(ls /tmp | grep -c '^down\\.')",
  'echo $s > /tmp/down.$((n + 1))',
  'EOF',
  'chmod +x /tmp/sha.sh',
  'waitfile() { i=0; while [ ! -e "$1" ]; do i=$((i + 1)); [ $i -gt $2 ] && return 1; sleep 0.2; done; }',
  'up() { head -c $2 /dev/urandom > /tmp/up.bin; echo $1_SHA=$(sha256sum /tmp/up.bin | cut -c1-64); R=; ' +
    'for i in $(seq 40); do R=$(nc -w 5 $3 $4 < /tmp/up.bin) && [ -n "$R" ] && break; sleep 1; done; echo $1_REPLY=$R; }',
];

/** A file of `bytes` random bytes in `dir`, and its sha256. */
function randomFile(dir: string, name: string, bytes: number): { path: string; sha: string } {
  const data = randomBytes(bytes);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, sha: createHash('sha256').update(data).digest('hex') };
}

/** How many of busybox ping's reply lines from `addr` are in `text`. */
const pingReplies = (text: string, addr: string): number => text.split(`bytes from ${addr}: seq=`).length - 1;

/** `vmArgs` under another VM name (two VMs at once need two control sockets and two MACs). */
const named = (args: string[], name: string): string[] => [...args.slice(0, -1), name];

/** Two guests on tap1 and tap2 of one bridge (in a namespace of L1's) ping each other; A sends B 16 MiB. */
async function bridge(): Promise<BootResult> {
  const ns = 'tshv-br';
  sh(`ip netns del ${ns} 2>/dev/null; ip netns add ${ns} && ip -n ${ns} link add br0 type bridge && ` +
    `for t in tap1 tap2; do ip -n ${ns} tuntap add $t mode tap && ip -n ${ns} link set $t master br0 && ip -n ${ns} link set $t up; done && ` +
    `ip -n ${ns} link set br0 up`);
  const pingUntil = (addr: string) => `ok=1; for i in $(seq 120); do ping -c 1 -W 1 ${addr} >/dev/null && { ok=0; break; }; done; echo PING_FIRST=$ok`;
  const a = guestCmd([
    ...GUEST_LIB,
    'ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0',
    pingUntil('10.98.0.3'),
    'echo PING_REPLIES=$(ping -c 3 -W 5 10.98.0.3 | grep -c "bytes from 10.98.0.3")',
    'up A2B 16777216 10.98.0.3 5005',
    'poweroff -f',
  ]);
  const b = guestCmd([
    ...GUEST_LIB,
    'ip link set eth0 up && ip addr add 10.98.0.3/24 dev eth0',
    'nc -ll -p 5005 -e /tmp/sha.sh &',
    pingUntil('10.98.0.2'),
    'waitfile /tmp/down.1 1500 && echo B_GOT=$(cat /tmp/down.1)',
    'poweroff -f',
  ]);
  const vm = (what: string, cmd: string, tap: string, mac: string) =>
    new Vm(what, named(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `3,virtio-net,${tap},mac=${mac}`]), what), 300_000, inNs(ns));
  const t0 = Date.now();
  const phases = await Promise.all([vm('netA', a, 'tap1', '02:00:00:00:0a:01').done, vm('netB', b, 'tap2', '02:00:00:00:0a:02').done]);
  const [ra, rb] = phases;
  return {
    name: 'net-bridge', code: ra.code === null || rb.code === null ? null : ra.code, stdout: ra.stdout, stderr: ra.stderr,
    ms: Date.now() - t0, phases,
  };
}

/** passt processes in L1 that have not ended ("pid comm state"; an exited one that nobody reaped does not count). */
function passtProcs(): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const m = /^\d+ \((.*)\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      if (m && m[1]!.startsWith('passt') && m[2] !== 'Z') found.push(`${pid} ${m[1]} ${m[2]}`);
    } catch { /* gone meanwhile */ }
  }
  return found;
}

/** The passt processes still there after up to 10 s (passt leaves a moment after its socket closes). */
async function passtLeft(): Promise<string[]> {
  const t0 = Date.now();
  while (passtProcs().length && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 200));
  return passtProcs();
}

/**
 * Run a guest in `ns` until `ready` and its pings of `gw` have 3 replies,
 * checkpoint it there (pings in flight), kill it, call `afterKill`, and
 * start its restore. Returns the phases so far (checkpoint, run) and the
 * restored VM (none when the guest never got ready: its run is the last phase).
 */
async function checkpointKillRestore(args: string[], ns: string, sock: string, ck: string, gw: string, ready: (out: string) => boolean,
  afterKill: () => Promise<void>): Promise<{ phases: Phase[]; restored?: Vm }> {
  const phases: Phase[] = [];
  const a = new Vm('run', args, 300_000, inNs(ns));
  if (!await a.until((o) => ready(o) && pingReplies(o, gw) >= 3, 240_000)) {
    a.child.kill('SIGKILL');
    phases.push(await a.done);
    return { phases };
  }
  const m0 = a.stdout.length;
  phases.push(await tshyvectl([`--socket=${sock}`, `--checkpoint=${ck}`]));
  const m1 = a.stdout.length;
  a.child.kill('SIGKILL');
  phases.push({ ...(await a.done), marks: [m0, m1] });
  await afterKill();
  return { phases, restored: new Vm('restore', restoreArgs(args, ck), 300_000, inNs(ns)) };
}

/** A guest on tap0 pinging the host side, checkpointed, killed, restored: it pings on, then 16 MiB go each way. */
async function tapCheckpoint(): Promise<BootResult> {
  tapNamespace();
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-netck-'));
  const sock = join(dir, 'ctl.sock'), ck = join(dir, 'ck.json');
  const down = randomFile(dir, 'down.bin', 16 << 20);
  const cmd = guestCmd([
    ...GUEST_LIB,
    'ip link set eth0 up && ip addr add 10.99.0.2/24 dev eth0',
    'nc -ll -p 5001 -e /tmp/sha.sh &',
    'ping -i 0.2 10.99.0.1 &',
    // the host sends once the guest is restored
    'waitfile /tmp/down.1 1500 && echo DOWN_SHA=$(cat /tmp/down.1)',
    'up UP 16777216 10.99.0.1 5003',
    'poweroff -f',
  ]);
  const args = vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', '3,virtio-net,tap0', '-o', `control.path=${sock}`]);
  const server = hostSide(NS, ['serve', '10.99.0.1', '5003']);
  const t0 = Date.now();
  const { phases, restored } = await checkpointKillRestore(args, NS, sock, ck, '10.99.0.1', () => true, async () => {});
  let tcp = '';
  if (restored) {
    const send = hostSide(NS, ['send', '10.99.0.2', '5001', down.path, '240']);
    const [rb, s] = await Promise.all([restored.done, send.done]);
    phases.push(rb);
    tcp += s.stdout + s.stderr;
  }
  server.child.kill('SIGKILL');
  const sv = await server.done;
  const last = phases.at(-1)!;
  return {
    name: 'net-tap-checkpoint', code: last.code, stdout: last.stdout, stderr: last.stderr, ms: Date.now() - t0, phases,
    expectedSha256: down.sha, tcp: `${tcp}${sv.stdout}${sv.stderr}`,
  };
}

/** The slirp scenario's namespaces: tshv-slirp (veth0 10.77.0.2/24, default route via 10.77.0.1) and tshv-gw (veth1 10.77.0.1/24). */
function slirpNamespaces(ns: string, gw: string): void {
  sh(`ip netns del ${ns} 2>/dev/null; ip netns del ${gw} 2>/dev/null; ip netns add ${ns} && ip netns add ${gw} && ` +
    `ip link add veth0 netns ${ns} type veth peer name veth1 netns ${gw} && ` +
    `ip -n ${ns} addr add 10.77.0.2/24 dev veth0 && ip -n ${gw} addr add 10.77.0.1/24 dev veth1 && ` +
    `ip -n ${ns} link set lo up && ip -n ${ns} link set veth0 up && ip -n ${gw} link set veth1 up && ` +
    `ip -n ${ns} route add default via 10.77.0.1 && ` +
    // passt answers the guest's pings through ICMP echo sockets, as the user it runs as (nobody)
    `ip netns exec ${ns} sysctl -qw net.ipv4.ping_group_range="0 2147483647"`);
}

/**
 * slirp (passt): DHCP; 8 MiB to L1's 127.0.0.1:5003 through the gateway
 * address and 8 MiB from L1's 127.0.0.1:5080 to the guest's port 8080
 * (hostfwd); then, pinging the gateway, checkpointed, killed (passt must
 * go), restored (a new passt) and the same two transfers again; passt must
 * go when the restored VM powers off.
 */
async function slirp(): Promise<BootResult> {
  const ns = 'tshv-slirp';
  slirpNamespaces(ns, 'tshv-gw');
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-slirp-'));
  const sock = join(dir, 'ctl.sock'), ck = join(dir, 'ck.json');
  const down1 = randomFile(dir, 'down1.bin', 8 << 20), down2 = randomFile(dir, 'down2.bin', 8 << 20);
  const cmd = guestCmd([
    ...GUEST_LIB,
    "cat > /tmp/dhcp.sh <<'EOF'",
    '#!/bin/sh',
    '[ "$1" = bound ] || exit 0',
    'ifconfig $interface $ip netmask $subnet up && route add default gw $router && echo DHCP_IP=$ip DHCP_ROUTER=$router',
    'EOF',
    'chmod +x /tmp/dhcp.sh && ip link set eth0 up',
    // Through passt, the answer on a connection the guest has half-closed
    // never came (up() hung; most likely passt's handling of the guest's FIN:
    // lab/README.md), so uploads through it are answered before the guest's
    // FIN: sent with nc -e, which writes the file and reads the answer.
    "cat > /tmp/upl.sh <<'EOF'",
    '#!/bin/sh',
    'cat /tmp/up.bin; read -r r; echo $r > /tmp/up.reply',
    'EOF',
    'chmod +x /tmp/upl.sh',
    'upx() { head -c $2 /dev/urandom > /tmp/up.bin; echo $1_SHA=$(sha256sum /tmp/up.bin | cut -c1-64); rm -f /tmp/up.reply; ' +
      'for i in $(seq 40); do nc -w 5 $3 $4 -e /tmp/upl.sh; [ -s /tmp/up.reply ] && break; sleep 1; done; echo $1_REPLY=$(cat /tmp/up.reply 2>/dev/null); }',
    'udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 10 -T 2 2>/dev/null | grep ^DHCP_; echo UDHCPC=$?',
    'echo ROUTES=$(ip route | tr "\\n" ";")',
    'nc -ll -p 8080 -e /tmp/sha.sh &',
    // the gateway's address is L1's loopback, as passt maps it
    'upx UP1 8388608 10.77.0.1 5003',
    'waitfile /tmp/down.1 1500 && echo DOWN1_SHA=$(cat /tmp/down.1)',
    'ping -i 0.2 10.77.0.1 &',
    'echo CHECKPOINT-NOW',
    'waitfile /tmp/down.2 1500 && echo DOWN2_SHA=$(cat /tmp/down.2)',
    'upx UP2 8388608 10.77.0.1 5003',
    'poweroff -f',
  ]);
  const args = vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio',
    ['-s', '3,virtio-net,slirp,hostfwd=tcp:127.0.0.1:5080-:8080', '-o', `control.path=${sock}`]);
  const server = hostSide(ns, ['serve', '127.0.0.1', '5003', String(8 << 20)]);
  const send1 = hostSide(ns, ['send', '127.0.0.1', '5080', down1.path, '240']);
  const t0 = Date.now();
  const passt = { during: [] as string[], afterKill: [] as string[], afterEnd: [] as string[] };
  const { phases, restored } = await checkpointKillRestore(args, ns, sock, ck, '10.77.0.1', (o) => {
    if (!o.includes('CHECKPOINT-NOW')) return false;
    if (!passt.during.length) passt.during = passtProcs();
    return true;
  }, async () => { passt.afterKill = await passtLeft(); });
  let tcp = '';
  const s1 = await send1.done;
  tcp += s1.stdout + s1.stderr;
  if (restored) {
    const send2 = hostSide(ns, ['send', '127.0.0.1', '5080', down2.path, '240']);
    const [rb, s2] = await Promise.all([restored.done, send2.done]);
    phases.push(rb);
    tcp += s2.stdout + s2.stderr;
    passt.afterEnd = await passtLeft();
  }
  server.child.kill('SIGKILL');
  const sv = await server.done;
  const last = phases.at(-1)!;
  return {
    name: 'net-slirp', code: last.code, stdout: phases.map((p) => p.stdout).join(''), stderr: last.stderr, ms: Date.now() - t0, phases,
    expectedSha256: `${down1.sha} ${down2.sha}`, tcp: `${tcp}${sv.stdout}${sv.stderr}`, passt,
  };
}

export const netScenarios: Record<string, () => Promise<BootResult>> = NET_ENABLED ? {
  'net-tap': () => tapTransfer('net-tap', false),
  'net-tap-no-offloads': () => tapTransfer('net-tap-no-offloads', true),
  'net-bridge': bridge,
  'net-tap-checkpoint': tapCheckpoint,
  'net-slirp': slirp,
} : {};
