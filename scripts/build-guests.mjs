#!/usr/bin/env node
// Assembles tshyve's own small guest programs (test/guests/*.asm) into
// dist/guests/*.bin with nasm. Without nasm it says so; the tests that need
// the programs then skip with that reason.
import { readdirSync, mkdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const src = 'test/guests';
const out = 'dist/guests';
if (spawnSync('nasm', ['-v']).status !== 0) {
  console.error('build-guests: nasm is not installed (scripts/setup.sh installs it); guest-program tests will skip');
  process.exit(0);
}
mkdirSync(out, { recursive: true });
for (const f of readdirSync(src).filter((f) => f.endsWith('.asm'))) {
  const r = spawnSync('nasm', ['-f', 'bin', '-i', `${src}/`, '-o', `${out}/${f.replace(/\.asm$/, '.bin')}`, `${src}/${f}`], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(1);
}
