/**
 * Lab scenarios for the NVMe controller (issue 16), with Debian's kernel
 * and its own nvme driver, in two boots:
 *
 * - nvme-disks (-c 2): two NVMe controllers and a virtio-blk disk. On the
 *   first controller an ext4 image made on the host (on L1's tmpfs: 9p has
 *   no fallocate, so no holes could be punched): the guest checks a file by
 *   checksum, writes one the host reads back after power-off, deletes a
 *   large file and runs fstrim (the image's st_blocks must drop), and reads
 *   from each vCPU so that both hardware queues carry I/O. The second
 *   controller is `ro` and must refuse a write; the virtio-blk disk is read.
 *   A third controller's namespace is a qcow2 overlay (qemu-img's) of a raw
 *   base: the guest reads the base's data through it, writes 1 MiB and
 *   discards another written MiB (deallocate on qcow2); afterwards the host
 *   finds the overlay clean (`qemu-img check`), the write in it and the base
 *   unchanged.
 * - nvme-snapshot: a guest writing files to its NVMe disk (its I/O doorbells
 *   KVM ioeventfds: the stats count those that were exits) is paused,
 *   checkpointed (the disk copied with it), killed, restored from the
 *   checkpoint and its copy of the disk, finishes its writes and checks
 *   every file's checksum against what it computed when writing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestCmd, hostReads, tshyve, vmArgs, type BootResult } from './linux-driver.js';
import { Vm, restoreArgs, tshyvectl, type Phase } from './snapshot-scenarios.js';

/** Each NVMe controller's block device into the shell variable its serial names (serials are names: NVA, NVR...). */
const NVME_BY_SERIAL = 'for c in /sys/class/nvme/nvme*; do eval "$(tr -d " " < $c/serial)=$(basename $c)n1"; done';
/** `m`: the md5 of stdin or of the files named (the command line has room for little: ~1500 bytes of script) */
const MD5 = 'm() { md5sum "$@" | cut -d" " -f1; }';

/** What the host found in the nvme-disks scenario's qcow2 overlay and its base afterwards. */
export interface NvmeQcow2Host {
  /** `qemu-img check` of the overlay: exit status and output */
  checkCode: number | null; check: string;
  /** md5 of the base's first MiB (the guest reads it through the overlay), and of the MiB at 4 MiB in the overlay afterwards */
  baseMd5: string; writtenMd5: string;
  /** sha256 of the base file before and after the boot */
  baseBefore: string; baseAfter: string;
}

/** Files the snapshot scenario's guest writes: enough that it is still writing when the pause lands (each tshyvectl takes seconds in L1). */
export const FILES = 150;

export const nvmeScenarios: Record<string, () => Promise<BootResult>> = {
  async 'nvme-disks'() {
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvme-'));
    const content = join(dir, 'content');
    mkdirSync(content);
    const payload = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 11) & 0xff));
    writeFileSync(join(content, 'payload.bin'), payload);
    writeFileSync(join(content, 'big.bin'), randomBytes(24 << 20));
    const img = join(dir, 'disk.img'), ro = join(dir, 'ro.img'), vblk = join(dir, 'vblk.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', '-d', content, img, '64M']);
    const roData = randomBytes(4 << 20), vblkData = randomBytes(2 << 20);
    writeFileSync(ro, roData);
    writeFileSync(vblk, vblkData);
    const sha = (f: string): string => createHash('sha256').update(readFileSync(f)).digest('hex');
    const roBefore = sha(ro);
    // the qcow2 namespace: an overlay of a raw base of random data
    const qbase = join(dir, 'qbase.raw'), overlay = join(dir, 'overlay.qcow2');
    const qbaseData = randomBytes(16 << 20);
    writeFileSync(qbase, qbaseData);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', qbase, '-F', 'raw', overlay]);
    const qbaseBefore = sha(qbase);
    const cmd = guestCmd([
      'for i in $(seq 100); do [ -b /dev/vda ] && [ $(ls /sys/class/nvme | wc -l) -ge 3 ] && break; sleep 0.1; done',
      NVME_BY_SERIAL, 'A=$NVA R=$NVR Q=$NVQ', MD5,
      'echo NVME_DEVS=$A,$R',
      'mkdir -p /mnt && mount -t ext4 /dev/$A /mnt',
      'echo GUEST_MD5=$(m /mnt/payload.bin)',
      'echo written-on-nvme > /mnt/from-guest.txt && sync && echo GUEST_WROTE=yes',
      'rm /mnt/big.bin && sync && fstrim -v /mnt; echo FSTRIM_EXIT=$?',
      'umount /mnt',
      'echo HW_QUEUES=$(ls -d /sys/block/$A/mq/* | wc -l)',
      'for c in 0 1; do taskset -c $c dd if=/dev/$A of=/dev/null bs=4k count=512 skip=$((c * 4096)) iflag=direct 2>/dev/null; done',
      // per-queue interrupts: nvme0q1, nvme0q2 (the admin queue is q0)
      'C=${A%n1}; grep "${C}q[1-9]" /proc/interrupts | while read irq a b rest; do echo QIRQ=${rest##* }:$((a + b)); done',
      'echo RO=$(cat /sys/block/$R/ro)',
      'if echo marker | dd of=/dev/$R bs=512 seek=1 conv=sync,fsync 2>/dev/null; then echo RO_WRITE=ok; else echo RO_WRITE=refused; fi',
      'r() { dd if=/dev/$1 bs=64k iflag=direct $2 2>/dev/null | m; }',
      'echo RO_MD5=$(r $R); echo VBLK_MD5=$(r vda); echo QBASE_MD5=$(r $Q count=16)',
      // the qcow2 overlay: 1 MiB written at 4 MiB; 1 MiB at 8 MiB written, then deallocated
      'w() { dd if=/tmp/w of=/dev/$Q bs=64k seek=$1 oflag=direct conv=fsync 2>/dev/null; }',
      'dd if=/dev/urandom of=/tmp/w bs=64k count=16 2>/dev/null; echo QW_MD5=$(m /tmp/w)',
      'w 64; echo QW_EXIT=$?',
      'w 128 && blkdiscard -o $((8 << 20)) -l $((1 << 20)) /dev/$Q; echo QDISCARD_EXIT=$?',
      'echo QREAD_MD5=$(r $Q "skip=64 count=16")',
      'poweroff -f',
    ]);
    const blocksBefore = statSync(img).blocks;
    const r = await tshyve(vmArgs(2, `hello tshyve.cmd=${cmd}`, 'stdio', [
      '-s', `5,nvme,${img},ser=NVA`, '-s', `6,nvme,${ro},ro,ser=NVR,maxq=1`, '-s', `7,virtio-blk,${vblk}`, '-s', `8,nvme,${overlay},ser=NVQ`,
    ]), 240_000);
    const check = spawnSync('qemu-img', ['check', overlay], { encoding: 'utf8' });
    const flat = join(dir, 'flat.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', overlay, flat]);
    const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');
    return {
      ...r, name: 'nvme-disks', expectedMd5: md5(payload), hostReadBack: hostReads(img, '/from-guest.txt'),
      blocksBefore, blocksAfter: statSync(img).blocks,
      hashes: [{ name: 'ro.img', before: roBefore, after: sha(ro) }, { name: `ro:${md5(roData)} vblk:${md5(vblkData)}`, before: '', after: '' }],
      nvmeQcow2: {
        checkCode: check.status, check: check.stdout + check.stderr,
        baseMd5: md5(qbaseData.subarray(0, 1 << 20)), writtenMd5: md5(readFileSync(flat).subarray(4 << 20, 5 << 20)),
        baseBefore: qbaseBefore, baseAfter: sha(qbase),
      },
    };
  },

  async 'nvme-snapshot'() {
    const dir = mkdtempSync(join(tmpdir(), 'tshyve-nvsnap-'));
    const img = join(dir, 'disk.img'), copy = join(dir, 'disk-at-ck.img');
    execFileSync('mkfs.ext4', ['-q', '-F', img, '64M']);
    const sock = join(dir, 'ctl.sock'), ck = join(dir, 'ck.json');
    const cmd = guestCmd([
      'mkdir -p /mnt && mount -t ext4 /dev/nvme0n1 /mnt',
      `i=0; while [ $i -lt ${FILES} ]; do i=$((i+1))`,
      '  dd if=/dev/urandom of=/mnt/f$i bs=64k count=2 conv=fsync 2>/dev/null',
      '  echo "$(md5sum /mnt/f$i | cut -d" " -f1)  /mnt/f$i" >> /mnt/sums; sync; echo W=$i',
      'done',
      'sync; echo 3 > /proc/sys/vm/drop_caches',
      'echo SUMS_OK=$(md5sum -c /mnt/sums 2>/dev/null | grep -c ": OK$") SUMS=$(wc -l < /mnt/sums)',
      'umount /mnt; poweroff -f',
    ]);
    const args = vmArgs(1, `hello tshyve.cmd=${cmd}`, 'stdio', ['-s', `5,nvme,${img}`, '-o', `control.path=${sock}`]);
    const phases: Phase[] = [];
    const a = new Vm('run', args);
    const writing = await a.until((o) => /^W=4$/m.test(o));
    if (writing) {
      phases.push(await tshyvectl([`--socket=${sock}`, '--pause']));
      phases.push(await tshyvectl([`--socket=${sock}`, '--get-stats']));
      phases.push(await tshyvectl([`--socket=${sock}`, `--checkpoint=${ck}`]));
      copyFileSync(img, copy);
    }
    a.child.kill('SIGKILL');
    phases.push(await a.done);
    if (!writing) return { name: 'nvme-snapshot', code: null, stdout: a.stdout, stderr: a.stderr, ms: 0, phases };
    const b = new Vm('restore', restoreArgs(args.map((x) => x.replace(img, copy)), ck));
    const rb = await b.done;
    phases.push(rb);
    return { name: 'nvme-snapshot', code: rb.code, stdout: rb.stdout, stderr: rb.stderr, ms: 0, phases };
  },
};
