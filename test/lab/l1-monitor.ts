/**
 * Host side: where a stalled L1's CPUs are. lab/run gives L1's QEMU an HMP
 * monitor on a unix socket when TSHYVE_LAB_MONITOR names one; this asks it
 * for every CPU's registers a few times and names each RIP with L1's
 * kallsyms (Debian's System.map is a stub; the lab driver copies
 * /proc/kallsyms out at its start), so a stall report says what L1 was doing.
 */
import { connect } from 'node:net';
import { existsSync, readFileSync } from 'node:fs';

/** Everything the monitor printed within `ms` of being sent `commands`. */
export function hmp(socket: string, commands: string[], ms = 3000): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const c = connect(socket);
    const end = () => { c.destroy(); resolve(got); };
    const timer = setTimeout(end, ms);
    c.on('connect', () => { for (const x of commands) c.write(`${x}\n`); });
    c.on('data', (d) => { got += d.toString('latin1'); });
    c.on('error', (e) => { clearTimeout(timer); got += `(monitor: ${e.message})`; end(); });
  });
}

/** Sorted kernel text symbols from a kallsyms listing ("addr t name\t[module]"). */
export function loadSymbols(file: string): { addr: bigint; name: string }[] {
  if (!existsSync(file)) return [];
  const syms: { addr: bigint; name: string }[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+) [tT] (\S+)(?:\s+\[(\S+)\])?/.exec(line);
    if (m) syms.push({ addr: BigInt(`0x${m[1]}`), name: m[3] ? `${m[3]}:${m[2]}` : m[2]! });
  }
  return syms.sort((x, y) => (x.addr < y.addr ? -1 : x.addr > y.addr ? 1 : 0));
}

/** `name+0xoff` for a kernel address, `user` below the kernel, `?` far from any symbol (L2's KASLR-placed kernel, say). */
export function symbolize(syms: { addr: bigint; name: string }[], rip: bigint): string {
  if (rip < 0xffff800000000000n) return 'user';
  let lo = 0, hi = syms.length - 1, best = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (syms[mid]!.addr <= rip) { best = mid; lo = mid + 1; } else hi = mid - 1;
  }
  if (best < 0 || rip - syms[best]!.addr > 0x100000n) return '?';
  return `${syms[best]!.name}+0x${(rip - syms[best]!.addr).toString(16)}`;
}

/** Several samples of each L1 CPU's RIP (and whether it is halted), one line per sample. */
export async function whereAreL1Cpus(socket: string, kallsyms: string, samples = 4): Promise<string> {
  if (!existsSync(socket)) return `(no monitor socket ${socket})`;
  const syms = loadSymbols(kallsyms);
  const lines: string[] = [];
  for (let i = 0; i < samples; i++) {
    const text = await hmp(socket, ['info registers -a'], 2000);
    // Per CPU: "RIP=... RFL=... CPL=n ... HLT=n", and later "CR3=...". A CPU
    // running L2 shows L2's registers (L2's kernel is KASLR-placed: '?').
    const cpus = text.split(/CPU#\d+/).slice(1).map((block, n) => {
      const rip = /RIP=([0-9a-f]{16})/.exec(block)?.[1];
      if (!rip) return `cpu${n} ?`;
      const cpl = /CPL=(\d)/.exec(block)?.[1], hlt = /HLT=1/.test(block), cr3 = /CR3=([0-9a-f]+)/.exec(block)?.[1];
      return `cpu${n} ${rip} ${symbolize(syms, BigInt(`0x${rip}`))} cpl${cpl} cr3=${cr3}${hlt ? ' hlt' : ''}`;
    });
    lines.push(cpus.length ? cpus.join(', ') : `(no registers: ${JSON.stringify(text.slice(-200))})`);
  }
  return lines.join('\n');
}
