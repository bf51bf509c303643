/**
 * Layers depend one way (README, "Layout"): a module may import its own
 * layer and the layers below it, never one above. Test files and test
 * scaffolding are outside the rule, but production code may not import them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Lowest first. A folder not listed here fails the test: place it. */
export const LAYERS: readonly string[][] = [
  ['errors.ts', 'log.ts'],
  ['config'],
  ['host'],
  ['kvm'],
  ['memory'],
  ['bus'],
  ['snapshot'],
  ['x86'],
  ['pci'],
  ['virtio'],
  ['devices'],
  ['vcpu'],
  ['migration'],
  ['vm'],
  ['control'],
  ['cli', 'index.ts'],
];

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

function layerOf(rel: string): number {
  const top = rel.split('/')[0]!;
  const i = LAYERS.findIndex((l) => l.includes(top));
  return i;
}

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir)) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) yield* sources(p);
    else if (p.endsWith('.ts') && !p.endsWith('.d.ts')) yield p;
  }
}

const isTestOnly = (rel: string) => /\.test\.ts$/.test(rel) || /(^|\/)testing(\/|\.ts$)/.test(rel);

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s+'(\.[^']+)'|import\('(\.[^']+)'\)|new URL\('(\.[^']+)'/g)) {
    out.push((m[1] ?? m[2] ?? m[3])!);
  }
  return out;
}

test('every source folder has a layer', () => {
  const unplaced = new Set<string>();
  for (const f of sources(root)) {
    const rel = relative(root, f);
    if (layerOf(rel) < 0) unplaced.add(rel.split('/')[0]!);
  }
  assert.deepEqual([...unplaced], []);
});

test('no module imports a layer above its own, or test scaffolding', () => {
  const bad: string[] = [];
  let checked = 0;
  for (const f of sources(root)) {
    const rel = relative(root, f);
    if (isTestOnly(rel)) continue;
    const mine = layerOf(rel);
    for (const imp of imports(f)) {
      const target = relative(root, resolve(dirname(f), imp)).replace(/\.js$/, '.ts');
      checked++;
      if (target.startsWith('..')) { bad.push(`${rel} imports ${imp}, outside src`); continue; }
      if (isTestOnly(target)) { bad.push(`${rel} imports test scaffolding ${target}`); continue; }
      const theirs = layerOf(target);
      if (theirs > mine) bad.push(`${rel} (${LAYERS[mine]!.join('/')}) imports ${target} (${LAYERS[theirs]!.join('/')})`);
    }
  }
  assert.ok(checked > 100, `only ${checked} imports found: the scan is broken`);
  assert.deepEqual(bad, []);
});
