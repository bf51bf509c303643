/**
 * Lab scenario for qcow2 disks (issue 15): an ext4 image made in L1,
 * converted to qcow2 by qemu-img, with an overlay on it made by tshyve-img;
 * the guest boots with the overlay as its disk, checks a file of the base,
 * writes one, syncs and powers off. L1 then checks the overlay with
 * qemu-img, that the base did not change, and reads the guest's file from
 * the overlay through qemu-img (not through tshyve's own code).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { ext4WithPayload, guestCmd, hostReads, tshyve, vmArgs, type BootResult } from './linux-driver.js';
import { Vm, restoreArgs, tshyvectl, type Phase } from './snapshot-scenarios.js';

const IMG = join(ROOT, 'dist', 'bundle', 'cli', 'tshyve-img.js');

/** What L1 found in the images after the guest's run. */
export interface Qcow2Host {
  /** `qemu-img check` of the overlay: its exit status and output */
  checkCode: number | null; check: string;
  /** sha256 of the base image file before the boot and after it */
  baseBefore: string; baseAfter: string;
  /** the overlay converted to raw by qemu-img: sha256 of payload.bin in it, and from-guest.txt */
  payloadSha256: string; fromGuest: string;
  /** the overlay's backing file as `qemu-img info` reports it */
  backing: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export const qcow2Scenarios: Record<string, () => Promise<BootResult>> = {
  async 'virtio-blk-qcow2-overlay'() {
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-qcow2-'));
    const content = join(dir, 'content');
    mkdirSync(content);
    const payload = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 31 + (i >> 8)) & 0xff));
    writeFileSync(join(content, 'payload.bin'), payload);
    const raw = join(dir, 'base.raw'), base = join(dir, 'base.qcow2'), overlay = join(dir, 'overlay.qcow2');
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, raw, '32M']);
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', raw, base]);
    // a relative backing name: resolved against the overlay's directory, as QEMU does
    execFileSync(process.execPath, [IMG, 'create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', overlay], { cwd: dir });
    const baseBefore = sha256(readFileSync(base));
    const cmd = guestCmd([
      'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt',
      'echo GUEST_SHA256=$(sha256sum /mnt/payload.bin | cut -d" " -f1)',
      'echo written-on-a-qcow2-overlay > /mnt/from-guest.txt && sync && umount /mnt && echo GUEST_WROTE=yes',
      'poweroff -f',
    ]);
    const r = await tshyve(vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `3,virtio-blk,${overlay}`]));
    const check = spawnSync('qemu-img', ['check', overlay], { encoding: 'utf8' });
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', overlay], { encoding: 'utf8' })) as { 'backing-filename'?: string };
    const flat = join(dir, 'flat.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', overlay, flat]);
    let inImage = Buffer.alloc(0);
    try {
      inImage = execFileSync('debugfs', ['-R', 'cat /payload.bin', flat], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 8 << 20 });
    } catch { /* an empty read: the check names it */ }
    const qcow2: Qcow2Host = {
      checkCode: check.status, check: check.stdout + check.stderr,
      baseBefore, baseAfter: sha256(readFileSync(base)),
      payloadSha256: sha256(inImage), fromGuest: hostReads(flat, '/from-guest.txt'),
      backing: info['backing-filename'] ?? '',
    };
    return { ...r, name: 'virtio-blk-qcow2-overlay', expectedSha256: sha256(payload), qcow2 };
  },
};

/** What L1 found around the checkpoints of `virtio-blk-qcow2-checkpoint` and `nvme-qcow2-checkpoint`. */
export interface Qcow2CheckpointHost {
  /** sha256 of the disk's content (converted to raw by qemu-img): the internal checkpoint's snapshot, after run A, when run B started */
  snapshot: string; afterA: string; restoredB: string;
  /** the external checkpoint: sha256 of the base file's bytes when it was taken, after run B was killed; its content then and when run C started */
  baseFileAtExt: string; baseFileAfterB: string; baseContentAtExt: string; restoredC: string;
  /** the overlay of the qcow2 disk, as `qemu-img info` reports it */
  overlayBacking: string; overlayBackingFormat: string;
  /** `qemu-img check` exit status of the qcow2 disk after each kill -9, and of the overlay */
  checkAfterA: number | null; checkAfterB: number | null; checkOverlay: number | null;
  /** the qemu-img snapshots of the disk after run A */
  snapshots: string;
}

/** The disk device of a qcow2 checkpoint scenario, and the guest's names for the disk and for the (virtio-blk) mailbox. */
interface CheckpointDisk { name: string; dev: 'virtio-blk' | 'nvme'; disk: string; mbox: string }

/**
 * A guest on a qcow2 disk (virtio-blk or an NVMe namespace) and a raw
 * virtio-blk mailbox disk it polls for the host's go-ahead, so that each
 * checkpoint is taken while its disk is quiet. Run A: STEP1 written;
 * internal checkpoint; STEP2 written; kill -9. Run B: -r (the disk reverted:
 * the guest sees STEP1's files); STEP2 again; external checkpoint; STEP3 in
 * the overlays; kill -9. Run C: -r of the external one on the base (the
 * guest sees run B's STEP2); STEP3; power-off. Every SEEN line is what the
 * guest read back from the disk.
 */
async function qcow2CheckpointScenario({ name, dev, disk: guestDisk, mbox: guestMbox }: CheckpointDisk): Promise<BootResult> {
  const { dir, img } = ext4WithPayload('tshyve-qckpt-', 4096, 7);
  const disk = join(dir, 'disk.qcow2'), mbox = join(dir, 'mbox.img'), sock = join(dir, 'ctl.sock');
  const internal = join(dir, 'int.ckp'), external = join(dir, 'ext.ckp'), overlay = `${external}.pci.0.3.0.qcow2`;
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', img, disk]);
  writeFileSync(mbox, Buffer.alloc(1 << 20));
  const post = (word: string) => { const fd = openSync(mbox, 'r+'); try { writeSync(fd, word, 0); fsyncSync(fd); } finally { closeSync(fd); } };
  const content = (file: string, snapshot?: string): string => {
    const flat = join(dir, 'flat.raw');
    execFileSync('qemu-img', ['convert', '-U', ...(snapshot ? ['-l', `snapshot.name=${snapshot}`] : []), '-O', 'raw', file, flat]);
    return sha256(readFileSync(flat));
  };
  const fileSha = (f: string) => sha256(readFileSync(f));
  const check = (f: string) => spawnSync('qemu-img', ['check', '-U', f], { encoding: 'utf8' }).status;
  const write = (n: number) => `echo step${n} > /mnt/a.txt && dd if=/dev/urandom of=/mnt/b.bin bs=64k count=4 2>/dev/null && sync && show STEP${n}`;
  const cmd = guestCmd([
    // nothing written behind the guest's back (atime, lazy inode-table init): the disk is quiet at each checkpoint
    `mkdir -p /mnt && mount -t ext4 -o noatime,noinit_itable ${guestDisk} /mnt`,
    // read back from the disk, not the page cache
    'show() { sync; echo 3 > /proc/sys/vm/drop_caches; echo "$1 A=$(cat /mnt/a.txt) B=$(md5sum /mnt/b.bin | cut -d" " -f1)"; }',
    `go() { while :; do echo 3 > /proc/sys/vm/drop_caches; [ "$(dd if=${guestMbox} bs=4 count=1 2>/dev/null)" = "$1" ] && break; usleep 200000; done; show SEEN_$1; }`,
    write(1), 'go GO_2', write(2), 'go GO_3', write(3), 'go GO_4',
    'umount /mnt && echo GUEST_DONE', 'poweroff -f',
  ]);
  const args = vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `3,${dev},${disk}`, '-s', `4,virtio-blk,${mbox}`, '-o', `control.path=${sock}`]);
  const phases: Phase[] = [];
  const end = (r: Phase, host?: Qcow2CheckpointHost): BootResult => ({ name, code: r.code, stdout: r.stdout, stderr: r.stderr, ms: r.ms, phases, qcow2Ckpt: host });
  // (the guest's tty ends lines with \r\n)
  const full = (tag: string) => (o: string) => new RegExp(`^${tag} A=\\S+ B=[0-9a-f]{32}\\r?$`, 'm').test(o);
  const kill = async (v: Vm) => { v.child.kill('SIGKILL'); const r = await v.done; phases.push(r); return r; };
  /** the restored VM is built (disks reverted) once its control socket answers */
  const built = async () => { for (let i = 0; i < 300; i++) { if ((await tshyvectl([`--socket=${sock}`, '--get-stats'])).code === 0) return true; await new Promise((r) => setTimeout(r, 200)); } return false; };

  post('WAIT');
  const a = new Vm('run A', args);
  if (!(await a.until(full('STEP1'), 240_000))) return end(await kill(a));
  phases.push(await tshyvectl([`--socket=${sock}`, `--checkpoint=${internal}`]));
  post('GO_2');
  await a.until(full('STEP2'));
  await kill(a);
  const snapshot = content(disk, 'int.ckp'), afterA = content(disk);
  const checkAfterA = check(disk);
  const snapshots = spawnSync('qemu-img', ['snapshot', '-U', '-l', disk], { encoding: 'utf8' }).stdout;

  post('WAIT');
  const b = new Vm('run B (-r internal)', restoreArgs(args, internal));
  if (!(await built())) return end(await kill(b));
  const restoredB = content(disk);
  post('GO_2');
  if (!(await b.until(full('STEP2')))) return end(await kill(b));
  phases.push(await tshyvectl([`--socket=${sock}`, `--ext-checkpoint=${external}`]));
  const baseFileAtExt = fileSha(disk), baseContentAtExt = content(disk);
  post('GO_3');
  await b.until(full('STEP3'));
  await kill(b);
  const baseFileAfterB = fileSha(disk), checkAfterB = check(disk), checkOverlay = check(overlay);
  const infoRun = spawnSync('qemu-img', ['info', '-U', '--output=json', overlay], { encoding: 'utf8' });
  const info = (infoRun.status === 0 ? JSON.parse(infoRun.stdout) : {}) as Record<string, string>;

  post('WAIT');
  const c = new Vm('run C (-r external)', restoreArgs(args, external));
  if (!(await built())) return end(await kill(c));
  const restoredC = content(disk);
  post('GO_3');
  await c.until(full('STEP3'));
  post('GO_4');
  const rc = await c.done;
  phases.push(rc);
  return end(rc, {
    snapshot, afterA, restoredB, baseFileAtExt, baseFileAfterB, baseContentAtExt, restoredC,
    overlayBacking: info['backing-filename'] ?? '', overlayBackingFormat: info['backing-filename-format'] ?? '',
    checkAfterA, checkAfterB, checkOverlay, snapshots,
  });
}

export const qcow2CheckpointScenarios: Record<string, () => Promise<BootResult>> = {
  'virtio-blk-qcow2-checkpoint': () => qcow2CheckpointScenario({ name: 'virtio-blk-qcow2-checkpoint', dev: 'virtio-blk', disk: '/dev/vda', mbox: '/dev/vdb' }),
  'nvme-qcow2-checkpoint': () => qcow2CheckpointScenario({ name: 'nvme-qcow2-checkpoint', dev: 'nvme', disk: '/dev/nvme0n1', mbox: '/dev/vda' }),
};
