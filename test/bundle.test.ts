/**
 * The bundled commands (scripts/bundle.mjs, what package.json's bin runs):
 * every worker a bundle starts is a bundle of its own beside it, every
 * module outside the bundle is an npm package or a Node built-in, and
 * debug.timing shows where the bundled tshyve's start-up went (its vCPU
 * thread included).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROOT, CLI, GUESTS, kvmUnavailable, runCli } from './helpers.js';

const BUNDLE = join(ROOT, 'dist', 'bundle');
const files = readdirSync(BUNDLE, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.js')).map((f) => join(BUNDLE, f));

test('the commands and the worker threads are bundled', () => {
  for (const name of ['cli/tshyve.js', 'cli/tshyvectl.js', 'cli/tshyve-img.js', 'workers/vcpu-worker.js', 'workers/host-eventfd-worker.js',
    'workers/devices-virtio-blk-io-thread.js', 'workers/devices-nvme-io-thread.js', 'workers/devices-virtio-net-io-thread.js']) {
    assert.ok(existsSync(join(BUNDLE, name)), `dist/bundle/${name} is missing`);
  }
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> };
  for (const bin of Object.values(pkg.bin)) assert.ok(existsSync(join(ROOT, bin)), `bin ${bin} is missing`);
});

test('every worker URL in a bundle names a bundled worker', () => {
  let urls = 0;
  for (const file of files) {
    for (const m of readFileSync(file, 'utf8').matchAll(/new URL\("([^"]+)", import\.meta\.url\)/g)) {
      urls++;
      assert.match(m[1]!, /^\.\.\/workers\/[\w-]+\.js$/, `${file}: ${m[1]}`);
      assert.ok(existsSync(fileURLToPath(new URL(m[1]!, `file://${file}`))), `${file}: ${m[1]} does not exist`);
    }
    // every other use would name a place in dist/bundle, not in the source tree (packageRootFrom searches upwards: any depth will do)
    const text = readFileSync(file, 'utf8');
    assert.equal(text.split('import.meta.url').length - 1,
      [...text.matchAll(/new URL\("[^"]+", import\.meta\.url\)/g)].length + text.split('packageRootFrom(import.meta.url)').length - 1, file);
  }
  assert.ok(urls >= 5, `only ${urls} worker URLs found`);
});

test('bundles import only npm packages and Node built-ins', () => {
  for (const file of files) {
    for (const m of readFileSync(file, 'utf8').matchAll(/^import .*?from "([^"]+)";$/gm)) {
      assert.doesNotMatch(m[1]!, /^\.|^\//, `${file} imports ${m[1]}`);
    }
    assert.equal(dirname(dirname(file)), BUNDLE, `${file} is not one folder deep`);
  }
});

test('debug.timing: the bundled tshyve tells where its start-up went', { skip: kvmUnavailable() }, async () => {
  assert.equal(CLI, join(BUNDLE, 'cli', 'tshyve.js'));
  const r = await runCli(['-m', '16M', '-l', 'com1,stdio', '-o', `boot.raw=${join(GUESTS, 'long.bin')}`, '-o', 'debug.timing=1', 'bundled']);
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stdout, /LONG OK/);
  const m = /vCPUs running ([\d.]+) ms after process start \((.*)\)/.exec(r.stderr);
  assert.ok(m, r.stderr);
  const steps = m[2]!.split(', ').map((s) => s.split(' ')[0]);
  assert.deepEqual(steps, ['node', 'modules', 'kvm', 'devices', 'boot', 'vcpu0:spawn', 'vcpu0:loaded', 'vcpu0:started', 'parked', 'sandbox']);
  const total = m[2]!.split(', ').reduce((t, s) => t + Number(s.split(' ')[1]), 0);
  assert.ok(Math.abs(total - Number(m[1])) < 5, `the steps add up to ${total} ms, not ${m[1]}`);
});
