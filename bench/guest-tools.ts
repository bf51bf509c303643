/**
 * The migration bench's guest tool (bench/guest/gapclock.c), compiled
 * static with the host's gcc and appended to the reference guest's initrd
 * as a second cpio archive (the kernel unpacks them one after the other):
 * no download, and lab/out stays as lab/build-guest.sh made it.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { ROOT, GUEST_DIR } from './common.js';

/** Build DIR/initrd-gap.img: the reference initrd plus /bin/gapclock; returns its path. */
export function buildGapInitrd(dir: string): string {
  const tree = join(dir, 'gap-root');
  mkdirSync(join(tree, 'bin'), { recursive: true });
  execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', join(tree, 'bin', 'gapclock'), join(ROOT, 'bench', 'guest', 'gapclock.c')]);
  const cpio = execFileSync('sh', ['-c', 'find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet'], { cwd: tree, maxBuffer: 64 << 20 });
  const out = join(dir, 'initrd-gap.img');
  writeFileSync(out, Buffer.concat([readFileSync(join(GUEST_DIR, 'initrd.img')), gzipSync(cpio)]));
  return out;
}
