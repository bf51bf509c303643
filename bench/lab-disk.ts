/**
 * Disk throughput driver. Runs INSIDE the nested lab (started by
 * bench/run.ts through `lab/run`). tshyve and QEMU (Debian's virtio-blk,
 * or with --dev nvme both VMMs' NVMe controllers; QEMU with its default
 * writeback cache, like tshyve's buffered file I/O) each boot the
 * reference guest with a raw image of their own in L1's tmpfs, and BOTH
 * stay up: the guests wait on their serial consoles, and the driver asks
 * them in turn for one pass each (a sequential 1 MiB direct-I/O dd write of
 * the whole disk, then a read of it), timed by the guest's own clock.
 *
 * Why interleaved passes and not one boot per measurement: L1 runs under
 * TCG on a shared machine and its speed drifts by up to 2x over a minute,
 * so boots a minute apart differ by more than the VMMs do. Passes a second
 * apart share L1's conditions. The pairs run in ABBA order (so a slow
 * trend favours neither), and each round boots the VMMs in the other order
 * (the VM booted second ran a few per cent faster in a tshyve-against-
 * tshyve control).
 *
 *   node dist/bench/lab-disk.js OUT.json [--runs ROUNDS] [--pairs P] [--mib N] [--only tshyve|qemu] [--dev virtio-blk|nvme]
 *     [--format raw|qcow2] [--rand SECS] [--disk-opts ,queuesize=1024] [--node-args '--cpu-prof --cpu-prof-dir=DIR'] [--kvm-stats]
 *
 * --rand SECS adds 4 KiB random I/O to every pass, after the dd's: the
 * guest's randio (lab/guest-tools/randio.c, in the reference initrd) reads
 * for SECS seconds, then writes for SECS seconds, O_DIRECT at random 4 KiB
 * offsets of the whole disk with RAND_DEPTH requests in flight (Linux AIO).
 *
 * --format qcow2 gives both VMMs a fresh qcow2 image each round, made by
 * qemu-img (64 KiB clusters), large enough for every pass to begin with a
 * write of N MiB no pass wrote before: that write allocates every cluster
 * it touches (the first-write figure), then the pass writes and reads the
 * first N MiB, allocated by the first pass, as on a raw disk.
 *
 * --kvm-stats records, per pass, the growth of each of KVM's debugfs
 * counters for that VM (exits, halt_exits, mmio_exits, irq_injections...)
 * and the VMM's guest RAM mapping (Rss and huge pages, from smaps), to
 * compare what the two guests cost L1. Reading them costs the driver some
 * CPU, so leave it off for the figures.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync, readdirSync, readFileSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, GUEST_DIR, type Vmm } from './common.js';
import { Guest } from './guest-console.js';

/** One pass of one VM: a write of the whole disk, then a read of it. */
export interface DiskPass {
  vmm: Vmm;
  round: number;
  /** index of the pair within its round; -1 for the first (cold) pass just after boot */
  pair: number;
  writeMBs: number;
  readMBs: number;
  /** qcow2: a write of clusters nothing wrote before (they are allocated) */
  allocMBs?: number;
  /** with --rand: 4 KiB random reads and writes per second (IOPS) */
  randReadIops?: number;
  randWriteIops?: number;
  /** with --kvm-stats: how much each of L1 KVM's counters for this VM (debugfs) grew over the pass */
  kvm?: Record<string, number>;
  /** with --kvm-stats: the VMM's guest RAM mapping after the pass (smaps kB) */
  ram?: Record<string, number>;
}

export interface DiskRound {
  round: number;
  /** boot order of this round */
  order: Vmm[];
  ok: boolean;
  error?: string;
  tail?: string;
}

/** The guest's disk: the device model both VMMs give it. */
export type DiskDev = 'virtio-blk' | 'nvme';

export interface DiskBench { mib: number; pairs: number; dev?: DiskDev; format: Format; randSecs?: number; randDepth?: number; rounds: DiskRound[]; passes: DiskPass[] }

export type Format = 'raw' | 'qcow2';

const kernel = join(GUEST_DIR, 'vmlinuz');
const initrd = join(GUEST_DIR, 'initrd.img');
const BOOT_TIMEOUT_MS = 150_000;
const PASS_TIMEOUT_MS = 90_000;
/** requests in flight for --rand (fio's iodepth) */
const RAND_DEPTH = 32;

/**
 * The guest's part: wait for "go" on the console, answer with the kernel's
 * uptime around each dd. For qcow2, the pass's first dd writes the next
 * untouched N MiB (pass n: from n * N MiB, n from 1), and its stamp comes last.
 */
function guestScript(mib: number, dev: DiskDev, format: Format, randSecs: number): string {
  const disk = dev === 'nvme' ? '/dev/nvme0n1' : '/dev/vda';
  const now = '$(cut -d" " -f1 /proc/uptime)';
  const rand = randSecs > 0 ? ` randio ${disk} read ${randSecs} ${RAND_DEPTH}; randio ${disk} write ${randSecs} ${RAND_DEPTH};` : '';
  const alloc = format === 'qcow2'
    ? ` n=$((n+1)); z=${now}; dd if=/dev/zero of=${disk} bs=1M count=${mib} seek=$((n*${mib})) oflag=direct 2>/dev/null;` : '';
  return [
    'stty -echo 2>/dev/null',
    'n=0; echo DISK-READY',
    'while read -r c; do case "$c" in',
    ` go)${alloc} a=${now}; dd if=/dev/zero of=${disk} bs=1M count=${mib} oflag=direct 2>/dev/null; b=${now};` +
      ` dd if=${disk} of=/dev/null bs=1M count=${mib} iflag=direct 2>/dev/null; c=${now}; echo "DISK-PASS $a $b $c${alloc ? ' $z' : ''}";${rand};`,
    ' q) poweroff -f;;',
    'esac; done',
  ].join('\n');
}

function command(vmm: Vmm, dev: DiskDev, img: string, mib: number, format: Format, randSecs: number, name: string, diskOpts = '', nodeArgs: string[] = [], sandbox = 'on'): [string, string[]] {
  const cmdline = `console=ttyS0 quiet tshyve.cmd=${Buffer.from(guestScript(mib, dev, format, randSecs)).toString('base64')}`;
  if (vmm === 'tshyve') {
    return [process.execPath, [...nodeArgs, CLI, '-c', '1', '-m', '512M', '-s', '0,hostbridge', '-s', '31,lpc', '-l', 'com1,stdio',
      '-s', `4,${dev},${img}${format === 'raw' ? '' : `,format=${format}`}${diskOpts}`, '-o', `boot.kernel=${kernel}`, '-o', `boot.initrd=${initrd}`, '-o', `boot.cmdline=${cmdline}`, '-o', `sandbox=${sandbox}`, name]];
  }
  // cache=writeback is QEMU's default, spelled out: tshyve's raw backend is buffered too (no O_DIRECT, flush = fdatasync)
  const drive = dev === 'nvme'
    ? ['-drive', `file=${img},if=none,id=d0,format=${format},cache=writeback`, '-device', 'nvme,drive=d0,serial=bench']
    : ['-drive', `file=${img},format=${format},if=virtio`];
  return ['qemu-system-x86_64', ['-enable-kvm', '-cpu', 'host', '-m', '512M', '-smp', '1', '-nographic', '-no-reboot',
    ...drive, '-kernel', kernel, '-initrd', initrd, '-append', cmdline]];
}

const KVM_DEBUGFS = '/sys/kernel/debug/kvm';

/** KVM's debugfs counters for the VM that process `pid` made (vCPU ones summed), or undefined. */
function kvmCounters(pid: number | undefined): Record<string, number> | undefined {
  if (pid === undefined || !existsSync(KVM_DEBUGFS)) return undefined;
  const vm = readdirSync(KVM_DEBUGFS).find((d) => d.startsWith(`${pid}-`));
  if (!vm) return undefined;
  const out: Record<string, number> = {};
  const readDir = (dir: string, prefix: string): void => {
    for (const f of readdirSync(dir)) {
      const path = join(dir, f);
      if (statSync(path).isDirectory()) {
        if (f.startsWith('vcpu')) readDir(path, 'vcpu.');
        continue;
      }
      const v = Number(readFileSync(path, 'utf8').trim());
      if (Number.isFinite(v)) out[prefix + f] = (out[prefix + f] ?? 0) + v;
    }
  };
  try { readDir(join(KVM_DEBUGFS, vm), ''); } catch { return undefined; }
  return out;
}

/** The process's largest mapping (guest RAM): its Rss and huge-page kB, from smaps. */
function ramMapping(pid: number | undefined): Record<string, number> | undefined {
  if (pid === undefined) return undefined;
  let best: Record<string, number> | undefined;
  let cur: Record<string, number> | undefined;
  try {
    for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
      const m = /^(\w+):\s+(\d+) kB/.exec(line);
      if (!m) { cur = {}; continue; }
      if (cur) cur[m[1]!] = Number(m[2]);
      if (cur && m[1] === 'Size' && (!best || cur.Size! > best.Size!)) best = cur;
    }
  } catch { return undefined; }
  if (!best) return undefined;
  const { Size, Rss, AnonHugePages, ShmemPmdMapped, FilePmdMapped } = best;
  return { Size: Size!, Rss: Rss!, AnonHugePages: AnonHugePages ?? 0, ShmemPmdMapped: ShmemPmdMapped ?? 0, FilePmdMapped: FilePmdMapped ?? 0 };
}

type PassFigures = Pick<DiskPass, 'writeMBs' | 'readMBs' | 'allocMBs' | 'randReadIops' | 'randWriteIops'>;

/** One pass: MB/s written and read, from the guest's uptime stamps; with `rand`, randio's IOPS. */
async function pass(g: Guest<Vmm>, mib: number, rand: boolean): Promise<PassFigures> {
  g.send('go');
  const m = await g.waitFor(/DISK-PASS ([\d.]+) ([\d.]+) ([\d.]+)(?: ([\d.]+))?/, PASS_TIMEOUT_MS);
  const [a, b, c] = m.slice(1, 4).map(Number) as [number, number, number];
  const rate = (x: number, y: number): number => mib / Math.max(y - x, 0.01);
  const p: PassFigures = { writeMBs: rate(a, b), readMBs: rate(b, c), ...(m[4] === undefined ? {} : { allocMBs: rate(Number(m[4]), a) }) };
  if (rand) {
    p.randReadIops = Number((await g.waitFor(/RANDIO read ([\d.]+)/, PASS_TIMEOUT_MS))[1]);
    p.randWriteIops = Number((await g.waitFor(/RANDIO write ([\d.]+)/, PASS_TIMEOUT_MS))[1]);
  }
  return p;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) throw new Error('usage: lab-disk OUT.json [--runs ROUNDS] [--pairs P] [--mib N]');
  const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const rounds = Number(opt('--runs') ?? 0) || 2;
  const pairs = Number(opt('--pairs') ?? 0) || 12;
  const mib = Number(opt('--mib') ?? 0) || 64;
  const only = opt('--only') as Vmm | undefined;
  const diskOpts = opt('--disk-opts') ?? '';
  const nodeArgs = (opt('--node-args') ?? '').split(' ').filter(Boolean);
  const sandbox = opt('--sandbox') ?? 'on';
  const kvmStats = args.includes('--kvm-stats');
  const dev = (opt('--dev') ?? 'virtio-blk') as DiskDev;
  const format = (opt('--format') ?? 'raw') as Format;
  const randSecs = Number(opt('--rand') ?? 0);
  if (!(randSecs >= 0 && randSecs <= 30)) throw new Error('--rand takes 0-30 seconds');
  if (format !== 'raw' && format !== 'qcow2') throw new Error(`--format takes raw or qcow2, not ${format}`);
  if (dev !== 'virtio-blk' && dev !== 'nvme') throw new Error(`--dev takes virtio-blk or nvme, not '${String(dev)}'`);
  if (kvmStats && !existsSync(KVM_DEBUGFS)) {
    try { execFileSync('mount', ['-t', 'debugfs', 'debugfs', '/sys/kernel/debug']); } catch { /* reported below */ }
    if (!existsSync(KVM_DEBUGFS)) process.stdout.write(`[bench] --kvm-stats: no ${KVM_DEBUGFS}\n`);
  }
  const measure = async (g: Guest<Vmm>): Promise<Omit<DiskPass, 'vmm' | 'round' | 'pair'>> => {
    const before = kvmStats ? kvmCounters(g.pid) : undefined;
    const p = await pass(g, mib, randSecs > 0);
    const after = before && kvmCounters(g.pid);
    if (!before || !after) return p;
    const kvm: Record<string, number> = {};
    for (const [k, v] of Object.entries(after)) if (v !== before[k]) kvm[k] = v - (before[k] ?? 0);
    return { ...p, kvm, ram: ramMapping(g.pid) };
  };
  const dir = mkdtempSync(join(tmpdir(), 'tshyve-benchdisk-'));
  const res: DiskBench = { mib, pairs, dev, format, ...(randSecs > 0 ? { randSecs, randDepth: RAND_DEPTH } : {}), rounds: [], passes: [] };
  const save = (): void => writeFileSync(out, JSON.stringify(res, null, 1));
  try {
    for (let r = 0; r < rounds; r++) {
      const order = ((r % 2 ? ['qemu', 'tshyve'] : ['tshyve', 'qemu']) as Vmm[]).filter((v) => !only || v === only);
      const round: DiskRound = { round: r, order, ok: false };
      res.rounds.push(round);
      const guests: Guest<Vmm>[] = [];
      try {
        for (const vmm of order) { // one at a time: a boot is the busiest part
          const img = join(dir, `${vmm}-${r}.img`);
          // qcow2: room for the pairs' and the first pass's new clusters, after the first N MiB
          if (format === 'qcow2') execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', img, `${mib * (pairs + 2)}M`]);
          else writeFileSync(img, Buffer.alloc(mib << 20));
          const [cmd, argv] = command(vmm, dev, img, mib, format, randSecs, `benchdisk${r}`, diskOpts, nodeArgs, sandbox);
          const g = new Guest(vmm, cmd, argv);
          guests.push(g);
          await g.waitFor(/DISK-READY/, BOOT_TIMEOUT_MS);
        }
        const log = (p: DiskPass): void => {
          res.passes.push(p); save();
          process.stdout.write(`[bench] disk round ${r + 1} ${p.pair < 0 ? 'first' : `pair ${p.pair + 1}`} ${p.vmm.padEnd(6)} write ${p.writeMBs.toFixed(1)} MB/s, read ${p.readMBs.toFixed(1)} MB/s` +
            `${p.allocMBs === undefined ? '' : `, first write ${p.allocMBs.toFixed(1)} MB/s`}` +
            `${p.randReadIops === undefined ? '' : `, 4 KiB random read ${p.randReadIops.toFixed(0)} / write ${p.randWriteIops?.toFixed(0)} IOPS`}\n`);
        };
        for (const g of guests) log({ vmm: g.vmm, round: r, pair: -1, ...await measure(g) });
        for (let j = 0; j < pairs; j++) {
          for (const g of j % 2 ? [...guests].reverse() : guests) log({ vmm: g.vmm, round: r, pair: j, ...await measure(g) });
        }
        round.ok = true;
      } catch (e) {
        round.error = e instanceof Error ? e.message : String(e);
        round.tail = guests.map((g) => `--- ${g.vmm}:\n${g.tail}`).join('\n');
        process.stdout.write(`[bench] disk round ${r + 1} FAILED: ${round.error}\n`);
      } finally {
        await Promise.all(guests.map((g) => g.close()));
        // a fresh image per round (and L1's tmpfs holds two at a time)
        for (const vmm of order) rmSync(join(dir, `${vmm}-${r}.img`), { force: true });
        save();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => { console.error(`[bench] disk driver error: ${(e as Error)?.stack ?? String(e)}`); process.exit(1); });
