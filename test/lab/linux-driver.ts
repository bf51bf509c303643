/**
 * Runs inside the nested lab (L1, real KVM): boots Debian's cloud kernel
 * under tshyve in several configurations and writes what happened to
 * RESULTS (a JSON file in the scratch export), for test/linux-lab.test.ts
 * on the host to check. One node process drives every scenario because
 * each process start costs seconds under TCG.
 *
 *   node dist/test/lab/linux-driver.js RESULTS.json [--skip=a,b] [scenario ...]
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { bounded } from './proc.js';
import { writeFileSync, mkdtempSync, mkdirSync, statSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, CLI } from '../helpers.js';
import { snapshotScenarios } from './snapshot-scenarios.js';
import { netScenarios } from './net-scenarios.js';
import { nvmeScenarios } from './nvme-scenarios.js';
import { migrationScenarios } from './migration-scenarios.js';
import { qcow2CheckpointScenarios, qcow2Scenarios } from './qcow2-scenarios.js';
import { firmwareScenarios } from './firmware-scenarios.js';

/** How often the driver says it is alive; the host's watchdog allows a few missed. */
export const BEAT_MS = 20_000;

export const GUEST = join(ROOT, 'lab', 'out', 'guest');
export interface BootResult {
  name: string; code: number | null; stdout: string; stderr: string; ms: number; tcp?: string;
  /** virtio-blk: checksum of the file put in the image, and what the host read back afterwards */
  expectedMd5?: string; hostReadBack?: string;
  /** virtio-net: sha256 of the file the host sent (of each, space-separated, when it sent several); qcow2: of the file in the base image */
  expectedSha256?: string;
  /** virtio-net slirp: passt processes seen while the VM ran, after it was killed, after the restored one ended */
  passt?: { during: string[]; afterKill: string[]; afterEnd: string[] };
  /** qcow2 overlay: what L1 found in the images afterwards */
  qcow2?: import('./qcow2-scenarios.js').Qcow2Host;
  /** nvme-disks: the NVMe namespace on a qcow2 overlay, as the host found it afterwards */
  nvmeQcow2?: import('./nvme-scenarios.js').NvmeQcow2Host;
  /** qcow2 checkpoints: what L1 found in the images around them */
  qcow2Ckpt?: import('./qcow2-scenarios.js').Qcow2CheckpointHost;
  /** allocated 512-byte blocks of the image before and after the guest's fstrim */
  blocksBefore?: number; blocksAfter?: number;
  /** per-disk sha256 before and after, for the multi-disk check */
  hashes?: { name: string; before: string; after: string }[];
  /** virtio-console: what the host read from the console port's socket */
  hvc?: string;
  /** save/restore scenarios: each tshyve and tshyvectl run */
  phases?: import('./snapshot-scenarios.js').Phase[];
  /** the migration scenario's results */
  migration?: import('./migration-scenarios.js').MigrationLab;
  /** why the first attempt was discarded (it hung, or the guest triple-faulted); this is the second */
  retried?: string;
}

export function tshyve(args: string[], timeoutMs = 120_000, onStart?: (child: ChildProcess) => void): Promise<BootResult & { name: '' }> {
  const p = bounded([process.execPath, CLI, ...args], timeoutMs);
  onStart?.(p.child);
  return p.done.then(({ code, stdout, stderr, ms }) => ({ name: '', code, stdout, stderr, ms }));
}

export const vmArgs = (cpus: number, run: string, com1 = 'stdio', extra: string[] = []) => [
  '-c', String(cpus), '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', `com1,${com1}`,
  '-o', `boot.kernel=${join(GUEST, 'vmlinuz')}`, '-o', `boot.initrd=${join(GUEST, 'initrd.img')}`,
  '-o', `boot.cmdline=console=ttyS0 quiet tshyve.run=${run}`, ...extra, `lab${cpus}`,
];

/** Connect to the guest's com1 over TCP, retrying until tshyve listens; collect what it prints. */
function tcpCollect(port: number, until: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const deadline = Date.now() + timeoutMs;
    const attempt = () => {
      let connected = false;
      const s = connect(port, '127.0.0.1', () => { connected = true; });
      s.on('data', (d) => { got += d; if (until.test(got)) { s.destroy(); resolve(got); } });
      s.on('error', () => {});
      // Not listening yet: try again; once connected, the end of the stream is the answer.
      s.on('close', () => {
        if (connected || Date.now() > deadline) resolve(got); else setTimeout(attempt, 200);
      });
    };
    attempt();
  });
}

/** An ext4 image made on the host holding payload.bin (`len` bytes of (i * mul) & 0xff), and its md5. */
export function ext4WithPayload(prefix: string, len: number, mul: number): { dir: string; img: string; md5: string } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const content = join(dir, 'content');
  mkdirSync(content);
  const payload = Buffer.from(Array.from({ length: len }, (_, i) => (i * mul) & 0xff));
  writeFileSync(join(content, 'payload.bin'), payload);
  const img = join(dir, 'disk.img');
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, img, '32M']);
  return { dir, img, md5: createHash('md5').update(payload).digest('hex') };
}

/** Shell lines for the guest's init to run, as its tshyve.cmd= kernel argument (base64). */
export function guestCmd(lines: string[]): string {
  return Buffer.from(lines.join('\n') + '\n').toString('base64');
}

/** Guest lines of the ext4 round trip: mount /dev/vda, print payload.bin's md5, write `text` to from-guest.txt, sync, unmount. */
function ext4RoundTrip(text: string): string[] {
  return [
    'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt',
    'echo GUEST_MD5=$(md5sum /mnt/payload.bin | cut -d" " -f1)',
    `echo ${text} > /mnt/from-guest.txt && sync && umount /mnt && echo GUEST_WROTE=yes`,
  ];
}

/** A file of an ext4 image, as the host reads it with debugfs ('' when it cannot). */
export function hostReads(img: string, file: string): string {
  try {
    return execFileSync('debugfs', ['-R', `cat ${file}`, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

const scenarios: Record<string, () => Promise<BootResult>> = {
  async 'boot-1cpu-poweroff'() {
    return { ...(await tshyve(vmArgs(1, 'poweroff'))), name: 'boot-1cpu-poweroff' };
  },
  async 'boot-2cpu-poweroff'() {
    return { ...(await tshyve(vmArgs(2, 'poweroff'))), name: 'boot-2cpu-poweroff' };
  },
  async 'boot-1cpu-reboot'() {
    return { ...(await tshyve(vmArgs(1, 'reboot'))), name: 'boot-1cpu-reboot' };
  },
  async 'boot-1cpu-halt'() {
    const cmd = guestCmd(['halt -f']);
    return { ...(await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`))), name: 'boot-1cpu-halt' };
  },
  // x86.irqchip=user (user-space local APICs and IOAPIC): timer ticks, IPIs, MSI-X of a device on the device thread
  ...Object.fromEntries([1, 2].map((cpus) => [`irqchip-user-${cpus}cpu`, async (): Promise<BootResult> => {
    const cmd = guestCmd([
      'echo NPROC=$(nproc)',
      'sleep 1; echo LOC=$(grep LOC: /proc/interrupts | tr -s " ")',
      'echo HWRNG=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")',
      'poweroff -f',
    ]);
    const r = await tshyve(vmArgs(cpus, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', '4,virtio-rnd', '-o', 'x86.irqchip=user']));
    return { ...r, name: `irqchip-user-${cpus}cpu` };
  }])),
  async 'virtio-rnd'() {
    const cmd = guestCmd([
      'echo RNG_CURRENT=$(cat /sys/class/misc/hw_random/rng_current)',
      'echo HWRNG=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")',
      'poweroff -f',
    ]);
    return { ...(await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', '4,virtio-rnd']))), name: 'virtio-rnd' };
  },
  async 'virtio-blk-ext4'() {
    // An ext4 image made on the host with a file in it; the guest checks the
    // file, writes another and syncs; the host reads that one back.
    const { img, md5 } = ext4WithPayload('tshyve-blk-', 100_000, 7);
    const cmd = guestCmd([...ext4RoundTrip('written-by-the-guest'), 'poweroff -f']);
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `5,virtio-blk,${img}`, '-o', 'debug.stats=1']));
    const hostReadBack = hostReads(img, '/from-guest.txt');
    return { ...r, name: 'virtio-blk-ext4', expectedMd5: md5, hostReadBack };
  },
  async 'virtio-legacy'() {
    // Transitional virtio-blk and virtio-rnd, and a guest told to use the
    // legacy (0.9.5) interface: the same ext4 round trip as virtio-blk-ext4,
    // /dev/hwrng, and evidence of which interface the driver took.
    const { img, md5 } = ext4WithPayload('tshyve-legacy-', 100_000, 13);
    // The lab guest's init loads virtio_pci with insmod, which ignores
    // virtio_pci.force_legacy=1 on the kernel command line: load it again
    // with the parameter. The devices, bound by the modern driver at boot,
    // are reset and probed again through the legacy interface.
    const cmd = guestCmd([
      'rmmod virtio_pci && insmod /lib/modules/$(grep "/virtio_pci\\.ko" /etc/modules.order) force_legacy=1',
      'echo FORCE_LEGACY=$(cat /sys/module/virtio_pci/parameters/force_legacy)',
      'for i in $(seq 100); do [ -b /dev/vda ] && [ -e /dev/hwrng ] && break; sleep 0.1; done',
      ...ext4RoundTrip('written-by-a-legacy-driver'),
      'echo HWRNG=$(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")',
      // bit 32 of the negotiated features is VIRTIO_F_VERSION_1: 0 on the legacy interface
      'for d in /sys/bus/virtio/devices/virtio*; do echo VDEV=$(cat $d/device):v1=$(cut -c33 $d/features); done',
      'echo PCI_IDS=$(cat /sys/bus/pci/devices/*/device | tr "\\n" " ")',
      // the legacy probe claims BAR 0 under this name; the modern one never does
      'echo LEGACY_IO=$(grep -c virtio-pci-legacy /proc/ioports)',
      'poweroff -f',
    ]);
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio',
      ['-s', `5,virtio-blk,${img},legacy`, '-s', '4,virtio-rnd,legacy', '-o', 'debug.stats=1']));
    const hostReadBack = hostReads(img, '/from-guest.txt');
    return { ...r, name: 'virtio-legacy', expectedMd5: md5, hostReadBack };
  },
  async 'virtio-blk-fstrim'() {
    // A large file deleted in the guest and fstrim: the host image must shrink.
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-trim-'));
    const content = join(dir, 'content');
    mkdirSync(content);
    writeFileSync(join(content, 'big.bin'), randomBytes(24 << 20));
    const img = join(dir, 'disk.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-d', content, img, '64M']);
    const blocksBefore = statSync(img).blocks;
    const cmd = guestCmd([
      'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && rm /mnt/big.bin && sync',
      'fstrim -v /mnt; echo FSTRIM_EXIT=$?',
      'umount /mnt; poweroff -f',
    ]);
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `5,virtio-blk,${img}`]));
    return { ...r, name: 'virtio-blk-fstrim', blocksBefore, blocksAfter: statSync(img).blocks };
  },
  async 'virtio-blk-three-disks'() {
    // Three disks, the third read-only: the guest writes a marker to each raw
    // disk; the read-only one must refuse and stay bit-identical on the host.
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-3d-'));
    const names = ['a.img', 'b.img', 'c.img'];
    const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
    for (const n of names) writeFileSync(join(dir, n), randomBytes(4 << 20));
    const before = names.map((n) => sha(join(dir, n)));
    const cmd = guestCmd([
      'for d in vda vdb vdc; do',
      '  echo DISK_$d=$(cat /sys/block/$d/ro 2>/dev/null)',
      '  if echo marker-$d | dd of=/dev/$d bs=512 seek=1 conv=sync,fsync 2>/dev/null; then echo WRITE_$d=ok; else echo WRITE_$d=refused; fi',
      'done',
      'poweroff -f',
    ]);
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', [
      '-s', `5,virtio-blk,${join(dir, 'a.img')}`, '-s', `6,virtio-blk,${join(dir, 'b.img')}`, '-s', `7,virtio-blk,${join(dir, 'c.img')},ro`,
    ]));
    const hashes = names.map((n, i) => ({ name: n, before: before[i]!, after: sha(join(dir, n)) }));
    return { ...r, name: 'virtio-blk-three-disks', hashes };
  },
  async 'virtio-intx'() {
    // pci=nomsi: the drivers fall back to INTx, routed by the DSDT's _PRT;
    // the disk's I/O thread then hands each interrupt to the main thread.
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-intx-'));
    const img = join(dir, 'disk.img');
    const disk = randomBytes(1 << 20);
    writeFileSync(img, disk);
    const cmd = guestCmd([
      'echo HWRNG=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d " \\n")',
      'echo BLK_MD5=$(dd if=/dev/vda bs=64k iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)',
      'echo IRQ=$(grep -c virtio /proc/interrupts)',
      'poweroff -f',
    ]);
    const r = await tshyve(vmArgs(1, `hello pci=nomsi tshyve.cmd=${cmd}`, 'stdio', ['-s', '4,virtio-rnd', '-s', `5,virtio-blk,${img}`]));
    return { ...r, name: 'virtio-intx', expectedMd5: createHash('md5').update(disk).digest('hex') };
  },
  async 'virtio-console'() {
    // A port on a unix socket: the guest writes a line the host reads from
    // the socket, the host answers and the guest reads that.
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-vcon-'));
    const sock = join(dir, 'port1.sock');
    const cmd = guestCmd([
      'for i in $(seq 50); do [ -e /dev/vport0p0 ] && break; sleep 0.2; done',
      'echo PORT_NAME=$(cat /sys/class/virtio-ports/vport0p0/name)',
      'exec 3<>/dev/vport0p0',
      'echo from-guest >&3',
      'read -t 30 line <&3; echo GOT=$line',
      'for i in $(seq 50); do [ -e /dev/hvc0 ] && break; sleep 0.2; done',
      'echo via-hvc0 > /dev/hvc0 && echo HVC0=written',
      'sleep 1; poweroff -f',
    ]);
    const consoleSock = join(dir, 'console.sock');
    let hostGot = '';
    let hvc = '';
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `6,virtio-console,port1=${sock},console=${consoleSock}`]), 240_000, () => {
      const attemptConsole = () => {
        const c = connect(consoleSock);
        c.on('error', () => setTimeout(attemptConsole, 200));
        c.on('data', (d) => { hvc += d; });
      };
      attemptConsole();
      const attempt = () => {
        const c = connect(sock);
        c.on('error', () => setTimeout(attempt, 200));
        c.on('data', (d) => {
          hostGot += d;
          if (hostGot.includes('from-guest\n')) c.write('from-host\n');
        });
      };
      attempt();
    });
    return { ...r, name: 'virtio-console', tcp: hostGot, hvc };
  },
  async 'boot-verbose'() {
    // the full kernel log, for warnings about the platform
    const args = vmArgs(1, 'poweroff').map((a) => a.replace('console=ttyS0 quiet', 'console=ttyS0 loglevel=5'));
    return { ...(await tshyve(args)), name: 'boot-verbose' };
  },
  async 'tcp-console'() {
    const port = 47000 + Math.floor(Math.random() * 1000);
    let tcp: Promise<string> | undefined;
    const r = await tshyve(vmArgs(1, 'poweroff', `tcp=127.0.0.1:${port}`), 240_000, () => {
      tcp = tcpCollect(port, /CPUS=\d+/, 60_000);
    });
    return { ...r, name: 'tcp-console', tcp: await tcp };
  },
  ...snapshotScenarios,
  ...netScenarios,
  ...nvmeScenarios,
  ...migrationScenarios,
  ...qcow2Scenarios,
  ...qcow2CheckpointScenarios,
  ...firmwareScenarios,
};

/** Why this result is the lab's failure rather than the scenario's: a hang, or a triple fault no scenario provokes. */
export function failedByTheLab(r: BootResult): string | undefined {
  if (r.code === null) return `HUNG after ${r.ms} ms (console tail: ${JSON.stringify(r.stdout.slice(-200))})`;
  const tf = [r, ...(r.phases ?? [])].find((p) => p.code === 3 && /triple fault/.test(p.stderr));
  if (tf) return `the guest triple-faulted (${tf.stderr.trim().slice(-400)})`;
  return undefined;
}

async function main(): Promise<void> {
  const [out, ...args] = process.argv.slice(2);
  if (!out) throw new Error('usage: linux-driver RESULTS.json [--skip=a,b] [scenario ...]');
  const skip = new Set(args.filter((a) => a.startsWith('--skip=')).flatMap((a) => a.slice(7).split(',')));
  const names = args.filter((a) => !a.startsWith('--skip='));
  const results: BootResult[] = [];
  // L1's kernel symbols, for the host's stall report (test/lab/l1-monitor.ts).
  try { execFileSync('sh', ['-c', `grep ' [tT] ' /proc/kallsyms > ${JSON.stringify(`${out}.kallsyms`)}`]); } catch { /* the report says '?' */ }
  // A line every BEAT_MS tells the host that L1 still runs (test/linux-lab.test.ts).
  setInterval(() => process.stdout.write('[beat]\n'), BEAT_MS).unref();
  for (const n of (names.length ? names : Object.keys(scenarios)).filter((x) => !skip.has(x))) {
    const f = scenarios[n];
    if (!f) throw new Error(`unknown scenario ${n}`);
    let r = await f();
    const why = failedByTheLab(r);
    if (why) {
      // Run once more, and say so (the line reaches the test output and the
      // result keeps the reason). Two things the nested lab does now and then
      // that no scenario asks for: a boot that hangs until the timeout, and a
      // guest that triple-faults in the middle of a run (lab/README.md,
      // Caveats: the cause is not known). A second failure, or a wrong
      // result, fails the test.
      process.stdout.write(`[lab] ${n}: ${why}; running it again\n`);
      r = { ...(await f()), retried: why };
    }
    results.push(r);
    process.stdout.write(`[lab] ${n}: exit ${r.code} in ${r.ms} ms\n`);
    writeFileSync(out, JSON.stringify(results, null, 1));
  }
}

// Run as a program (in the lab); imported, it only lends its helpers.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main().catch((e) => { console.error(e); process.exit(1); });
