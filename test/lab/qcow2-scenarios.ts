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
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { guestCmd, hostReads, tshyve, vmArgs, type BootResult } from './linux-driver.js';

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
