// Bundles the commands (src/cli/tshyve*.ts) and every worker thread they
// start into dist/bundle/, so that a start-up reads and resolves a handful of
// files instead of ~80 (it matters most where every file read is slow, as
// over 9p in the nested lab). Modules loaded with import() stay in chunks of
// their own (loaded when used, as before). npm packages stay outside (koffi
// loads its native library from its own folder).
//
// Every output file sits one folder deep (cli/, workers/, chunks/), so a
// worker started with `new URL('./io-thread.js', import.meta.url)` is
// rewritten to `new URL('../workers/NAME.js', import.meta.url)`, which is
// right whichever file the module ends up in. packageRootFrom(import.meta.url)
// (the sandbox's search upwards for package.json) does not depend on the
// depth either. Any other use of import.meta.url fails the build: it would
// name the wrong place.
import { build } from 'esbuild';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SRC = join(ROOT, 'src');
const WORKER_URL = /new URL\('(\.{1,2}\/[^']+)\.js', import\.meta\.url\)/g;

function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** src/devices/nvme/io-thread.ts is workers/devices-nvme-io-thread.js. */
const workerName = (file) => relative(SRC, file).replace(/\.ts$/, '').replaceAll('/', '-');

const commands = readdirSync(join(SRC, 'cli')).filter((f) => /^tshyve[-\w]*\.ts$/.test(f)).map((f) => join(SRC, 'cli', f));
const workers = new Set();
for (const file of sources(SRC)) {
  for (const m of readFileSync(file, 'utf8').matchAll(WORKER_URL)) workers.add(resolve(dirname(file), `${m[1]}.ts`));
}

const entries = [
  ...commands.map((f) => ({ in: f, out: `cli/${relative(join(SRC, 'cli'), f).replace(/\.ts$/, '')}` })),
  ...[...workers].map((f) => ({ in: f, out: `workers/${workerName(f)}` })),
];
await build({
  entryPoints: entries,
  outdir: join(ROOT, 'dist', 'bundle'),
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: true,
  logLevel: 'warning',
  plugins: [{
    name: 'worker-urls',
    setup(b) {
      b.onLoad({ filter: /\.ts$/ }, (args) => {
        const text = readFileSync(args.path, 'utf8');
        if (!text.includes('import.meta.url')) return { contents: text, loader: 'ts' };
        let rewritten = 0;
        const contents = text.replaceAll(WORKER_URL, (_, rel) => {
          rewritten++;
          return `new URL('../workers/${workerName(resolve(dirname(args.path), `${rel}.ts`))}.js', import.meta.url)`;
        });
        if (contents.split('import.meta.url').length - 1 !== rewritten + contents.split('packageRootFrom(import.meta.url)').length - 1) {
          return { errors: [{ text: `${relative(ROOT, args.path)}: import.meta.url other than in new URL('./FILE.js', import.meta.url) would name a place in dist/bundle` }] };
        }
        return { contents, loader: 'ts' };
      });
    },
  }],
});
