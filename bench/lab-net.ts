/**
 * virtio-net driver. Runs INSIDE the nested lab (started by bench/run.ts
 * through `lab/run`). L1 gets a network namespace of its own with one tap
 * per VM (tapN at 10.99.N.1/24, the guest at 10.99.N.2) and one iperf3
 * server; the reference guest boots three times and stays up:
 *   tshyve       -s 3,virtio-net,tap1
 *   qemu         -device virtio-net-pci -netdev tap,ifname=tap2,vhost=off
 *   qemu-vhost   the same on tap3 with vhost=on (L1's vhost_net)
 * Then, round after round, each measurement runs on each guest in turn
 * (asked over its console; the order rotates from measurement to
 * measurement): TCP guest->host (iperf3 -c), host->guest (iperf3 -c -R),
 * ping at 5 a second (a request now and then: the wake-up path) and ping
 * -A (the next request as soon as the reply is in: back to back). Each VM
 * also gets one untimed round first (TCP's and the VMMs' first packets,
 * V8's first compiles). L1's speed drifts by up to 2x over minutes (see
 * lab-disk.ts), and one measurement's runs on the three VMs are seconds
 * apart, so the bench pairs them by round.
 *
 *   node dist/bench/lab-net.js OUT.json [--runs ROUNDS] [--secs S] [--pings N] [--only tshyve,qemu,qemu-vhost]
 *     [--node-args '--cpu-prof --cpu-prof-dir=DIR']
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, GUEST_DIR } from './common.js';
import { Guest } from './guest-console.js';

export const NET_VMMS = ['tshyve', 'qemu', 'qemu-vhost'] as const;
export type NetVmm = typeof NET_VMMS[number];

/** One round of one VM. Throughputs are iperf3's receiver figures; RTTs busybox ping's averages. */
export interface NetPass {
  vmm: NetVmm;
  /** -1: the untimed first pass */
  round: number;
  txMbps?: number;
  rxMbps?: number;
  pingMs?: number;
  pingFloodMs?: number;
  /** CPU time of the VMM's threads over the round's measurements (ms, by thread name, summed) */
  cpuMs?: Record<string, number>;
  error?: string;
}

export interface NetBench {
  secs: number;
  pings: number;
  vhost: string;
  booted: NetVmm[];
  bootErrors: string[];
  passes: NetPass[];
}

const NS = 'tshb-net';
const kernel = join(GUEST_DIR, 'vmlinuz');
const initrd = join(GUEST_DIR, 'initrd.img');
const BOOT_TIMEOUT_MS = 150_000;
/** iperf3 runs `secs` (and up to 10 s more to connect and end), the pings go at 5 a second */
const stepTimeoutMs = (secs: number, pings: number): number => (Math.max(secs, pings / 5) + 60) * 1000;

const sh = (cmd: string): string => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

/** The guest's part: address eth0, then a result line for each measurement asked for. */
function guestScript(n: number, secs: number, pings: number): string {
  const host = `10.99.${n}.1`;
  const iperf = (dir: string, flags: string) =>
    `echo "NET-${dir} $(iperf3 -c ${host} -t ${secs} -f m ${flags} 2>&1 | grep -E 'receiver|error' | tr '\\n' ' ')"`;
  return [
    'stty -echo 2>/dev/null',
    `ip link set eth0 up && ip addr add 10.99.${n}.2/24 dev eth0`,
    // the host side answers before the first pass (ARP, and the tap's carrier)
    `for i in $(seq 30); do ping -c 1 -W 1 ${host} >/dev/null && break; done`,
    'echo NET-READY',
    'while read -r c; do case "$c" in',
    ` tx) ${iperf('TX', '')};;`,
    ` rx) ${iperf('RX', '-R')};;`,
    ` ping) echo "NET-PING $(ping -q -c ${pings} -i 0.2 ${host} 2>&1 | tail -n 1)";;`,
    ` flood) echo "NET-FLOOD $(ping -q -A -c ${pings * 10} ${host} 2>&1 | tail -n 1)";;`,
    ' q) poweroff -f;;',
    'esac; done',
  ].join('\n');
}

function command(vmm: NetVmm, secs: number, pings: number, nodeArgs: string[]): string[] {
  const n = NET_VMMS.indexOf(vmm) + 1;
  const cmdline = `console=ttyS0 quiet tshyve.cmd=${Buffer.from(guestScript(n, secs, pings)).toString('base64')}`;
  const inNs = ['ip', 'netns', 'exec', NS];
  if (vmm === 'tshyve') {
    return [...inNs, process.execPath, ...nodeArgs, CLI, '-c', '1', '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
      '-s', `3,virtio-net,tap${n}`, '-o', `boot.kernel=${kernel}`, '-o', `boot.initrd=${initrd}`, '-o', `boot.cmdline=${cmdline}`, 'benchnet'];
  }
  return [...inNs, 'qemu-system-x86_64', '-name', 'benchnet,debug-threads=on', '-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', '1', '-nographic', '-no-reboot',
    '-device', 'virtio-net-pci,netdev=n0',
    '-netdev', `tap,id=n0,ifname=tap${n},script=no,downscript=no,vhost=${vmm === 'qemu-vhost' ? 'on' : 'off'}`,
    '-kernel', kernel, '-initrd', initrd, '-append', cmdline];
}

/** The namespace, its taps (made again each run) and their addresses. */
function network(): void {
  sh(`ip netns del ${NS} 2>/dev/null; ip netns add ${NS} && ip -n ${NS} link set lo up`);
  for (let n = 1; n <= NET_VMMS.length; n++) {
    sh(`ip -n ${NS} tuntap add tap${n} mode tap && ip -n ${NS} addr add 10.99.${n}.1/24 dev tap${n} && ip -n ${NS} link set tap${n} up`);
  }
}

/** vhost_net is there (L1's init loads it), or why not. */
function vhostState(): string {
  if (!existsSync('/dev/vhost-net')) {
    const { TSHYVE_LAB_MODULES: dir, TSHYVE_LAB_KREL: krel } = process.env;
    try { if (dir && krel) execFileSync('modprobe', ['-d', dir, '-S', krel, 'vhost_net']); } catch { /* said below */ }
  }
  return existsSync('/dev/vhost-net') ? 'vhost_net loaded' : 'no /dev/vhost-net: QEMU falls back to vhost=off';
}

/** CPU ms of each thread of process `pid`, summed by thread name. */
function threadCpu(pid: number | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  if (pid === undefined) return out;
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out[name] = (out[name] ?? 0) + (Number(f[11]) + Number(f[12])) * 10; // utime + stime, 100 Hz ticks
    }
  } catch { /* gone */ }
  return out;
}

const mbps = (s: string): number | undefined => {
  const m = /([\d.]+) ([KMG]?)bits\/sec\s+receiver/.exec(s);
  return m ? Number(m[1]) * ({ K: 1e-3, M: 1, G: 1e3 }[m[2] as 'K' | 'M' | 'G'] ?? 1e-6) : undefined;
};
const avgMs = (s: string): number | undefined => {
  const m = /min\/avg\/max = [\d.]+\/([\d.]+)\//.exec(s);
  return m ? Number(m[1]) : undefined;
};

type Metric = 'txMbps' | 'rxMbps' | 'pingMs' | 'pingFloodMs';
/** Each measurement: the console command, the result line's tag, how its value is read. */
const STEPS: [string, string, Metric, (s: string) => number | undefined][] = [
  ['tx', 'TX', 'txMbps', mbps], ['rx', 'RX', 'rxMbps', mbps], ['ping', 'PING', 'pingMs', avgMs], ['flood', 'FLOOD', 'pingFloodMs', avgMs],
];

/** One measurement on one guest, into its round's record. */
async function step(g: Guest<NetVmm>, p: NetPass, [cmd, tag, key, parse]: typeof STEPS[number], timeoutMs: number): Promise<void> {
  const cpu0 = threadCpu(g.pid);
  g.send(cmd);
  const line = (await g.waitFor(new RegExp(`NET-${tag} (.*)`), timeoutMs))[1]!;
  const cpu = p.cpuMs ??= {};
  for (const [k, v] of Object.entries(threadCpu(g.pid))) cpu[k] = (cpu[k] ?? 0) + v - (cpu0[k] ?? 0);
  const v = parse(line);
  if (v === undefined) p.error = `${p.error ? `${p.error} | ` : ''}${cmd}: ${line.trim().slice(0, 200)}`;
  else p[key] = v;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const outFile = args[0];
  if (!outFile) throw new Error('usage: lab-net OUT.json [--runs ROUNDS] [--secs S] [--pings N] [--only VMM,...] [--node-args ARGS]');
  const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const rounds = Number(opt('--runs') ?? 0) || 6;
  const secs = Number(opt('--secs') ?? 0) || 5;
  const pings = Number(opt('--pings') ?? 0) || 25;
  const only = opt('--only')?.split(',');
  const vmms = NET_VMMS.filter((v) => !only || only.includes(v));
  const nodeArgs = (opt('--node-args') ?? '').split(' ').filter(Boolean);

  const res: NetBench = { secs, pings, vhost: vhostState(), booted: [], bootErrors: [], passes: [] };
  const save = (): void => writeFileSync(outFile, JSON.stringify(res, null, 1));
  network();
  const server = spawn('ip', ['netns', 'exec', NS, 'iperf3', '-s'], { stdio: 'ignore' });
  const guests: Guest<NetVmm>[] = [];
  const log = (p: NetPass): void => {
    res.passes.push(p); save();
    const f = (v: number | undefined, d: number) => (v === undefined ? '-' : v.toFixed(d));
    process.stdout.write(`[bench] net ${p.round < 0 ? 'first round' : `round ${p.round + 1}`} ${p.vmm.padEnd(10)} ` +
      `guest->host ${f(p.txMbps, 0)} Mbit/s, host->guest ${f(p.rxMbps, 0)} Mbit/s, ping ${f(p.pingMs, 3)} ms, ping -A ${f(p.pingFloodMs, 3)} ms` +
      `${p.error ? ` (${p.error})` : ''}\n`);
  };
  try {
    save();
    for (const vmm of vmms) { // one at a time: a boot is the busiest part
      const [cmd, ...argv] = command(vmm, secs, pings, nodeArgs);
      const g = new Guest<NetVmm>(vmm, cmd!, argv);
      try {
        await g.waitFor(/NET-READY/, BOOT_TIMEOUT_MS);
        guests.push(g); res.booted.push(vmm);
      } catch (e) {
        res.bootErrors.push(`${vmm}: ${e instanceof Error ? e.message : String(e)}; console: ${g.tail.slice(-600)}`);
        await g.close();
      }
      save();
    }
    const timeout = stepTimeoutMs(secs, pings);
    for (let r = -1; r < rounds; r++) {
      const recs = guests.map((g): NetPass => ({ vmm: g.vmm, round: r }));
      for (const [j, st] of STEPS.entries()) {
        // rotate, and reverse every other time, so that no VM always follows the same one
        const k = (r + 1) * STEPS.length + j;
        const order = guests.map((_, i) => (i + k) % guests.length);
        for (const i of k % 2 ? order.reverse() : order) {
          try { await step(guests[i]!, recs[i]!, st, timeout); } catch (e) {
            recs[i]!.error = `${st[0]}: ${e instanceof Error ? e.message : String(e)}`;
          }
        }
      }
      for (const p of recs) log(p);
    }
  } finally {
    await Promise.all(guests.map((g) => g.close()));
    server.kill();
    save();
  }
}

main().catch((e: unknown) => { console.error(`[bench] net driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
