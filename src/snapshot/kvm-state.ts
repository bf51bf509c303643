/**
 * Save and restore what KVM holds for the VM: per vCPU its registers,
 * segment and control registers, FPU/extended state, MSRs, local APIC,
 * pending events and MP state; for the VM the in-kernel PIC/IOAPIC, PIT
 * and kvmclock. Registers are typed fields (readable in the JSON);
 * opaque kernel structs are base64 of their exact size.
 *
 * Restore order follows Firecracker's, which Linux guests are known to
 * accept: MP state, regs, sregs, xsave, xcrs, debug regs, LAPIC, MSRs
 * (after the LAPIC, so a TSC-deadline timer is armed in the mode the LAPIC
 * is in), events last.
 */
import type { Vm, VcpuFd } from '../kvm/kvm.js';
import { SEG_NAMES, type Regs, type Sregs, type Segment } from '../kvm/abi.js';
import type { StateReader, StateWriter } from './state.js';

const MP_STATE_MAX = 8;
const IRQCHIP_IDS = [0, 1, 2] as const; // PIC master, PIC slave, IOAPIC
const VCPU_EVENTS_VALID_NMI_PENDING = 0x1, VCPU_EVENTS_VALID_SIPI_VECTOR = 0x2;
const SEG_FIELDS = ['limit', 'selector', 'type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;
/** Most MSRs one vCPU may carry in a snapshot (KVM lists about 100). */
const MSRS_MAX = 1024;

/** The MSRs of `list` this vCPU can read: KVM_GET_MSRS stops at the first it cannot. */
export function readableMsrs(v: VcpuFd, list: number[]): number[] {
  const out: number[] = [];
  let rest = list;
  while (rest.length > 0) {
    const got = v.getMsrs(rest);
    out.push(...got.map((m) => m.index));
    rest = rest.slice(got.length + 1); // skip the one that failed
  }
  return out;
}

export function saveVcpu(w: StateWriter, v: VcpuFd, msrList: number[]): void {
  w.u32('mpState', v.getMpState());
  w.obj_('regs', (rw) => { const r = v.getRegs(); for (const k of Object.keys(r) as (keyof Regs)[]) rw.u64(k, r[k]); });
  w.obj_('sregs', (sw) => writeSregs(sw, v.getSregs()));
  w.b64('xsave', v.getXsave()).b64('xcrs', v.getXcrs()).b64('debugRegs', v.getDebugRegs()).b64('lapic', v.getLapic());
  const msrs = v.getMsrs(msrList);
  w.arr('msrs', msrs, (mw, m) => { mw.u32('index', m.index).u64('data', m.data); });
  w.b64('events', v.getVcpuEvents());
}

/** Read and check one vCPU's state; returns the function that applies it. */
export function readVcpu(r: StateReader, v: VcpuFd): () => void {
  const mp = r.u32('mpState', MP_STATE_MAX);
  const rr = r.obj('regs');
  const regs = v.getRegs();
  for (const k of Object.keys(regs) as (keyof Regs)[]) regs[k] = rr.u64(k);
  const sregs = readSregs(r.obj('sregs'), v.getSregs());
  const xsave = r.b64('xsave', 4096), xcrs = r.b64('xcrs', 392), debugRegs = r.b64('debugRegs', 128), lapic = r.b64('lapic', 1024);
  const msrs = r.arr('msrs', MSRS_MAX).map((m) => ({ index: m.u32('index'), data: m.u64('data') }));
  const events = r.b64('events', 64);
  // >>> 0: the flags are a u32, and a signed OR of one with bit 31 set is negative.
  events.writeUInt32LE((events.readUInt32LE(20) | VCPU_EVENTS_VALID_NMI_PENDING | VCPU_EVENTS_VALID_SIPI_VECTOR) >>> 0, 20);
  return () => {
    v.setMpState(mp);
    v.setRegs(regs);
    v.setSregs(sregs);
    v.setXsave(xsave);
    v.setXcrs(xcrs);
    v.setDebugRegs(debugRegs);
    v.setLapic(lapic);
    const n = v.setMsrs(msrs);
    if (n !== msrs.length) throw new Error(`KVM took ${n} of ${msrs.length} MSRs (MSR 0x${msrs[n]!.index.toString(16)} refused)`);
    v.setVcpuEvents(events);
  };
}

function writeSregs(w: StateWriter, s: Sregs): void {
  for (const n of SEG_NAMES) w.obj_(n, (sw) => { sw.u64('base', s[n].base); for (const f of SEG_FIELDS) sw.u32(f, s[n][f]); });
  for (const t of ['gdt', 'idt'] as const) w.obj_(t, (tw) => { tw.u64('base', s[t].base).u32('limit', s[t].limit); });
  for (const c of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const) w.u64(c, s[c]);
  w.arr('interruptBitmap', s.interruptBitmap, (bw, x) => { bw.u64('bits', x); });
}

function readSregs(r: StateReader, s: Sregs): Sregs {
  for (const n of SEG_NAMES) {
    const sr = r.obj(n);
    const seg: Segment = { ...s[n], base: sr.u64('base') };
    for (const f of SEG_FIELDS) seg[f] = sr.u32(f, f === 'limit' || f === 'selector' ? 0xffffffff : 0xff);
    s[n] = seg;
  }
  for (const t of ['gdt', 'idt'] as const) { const tr = r.obj(t); s[t] = { base: tr.u64('base'), limit: tr.u32('limit', 0xffff) }; }
  for (const c of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer', 'apicBase'] as const) s[c] = r.u64(c);
  const ib = r.arr('interruptBitmap', s.interruptBitmap.length);
  if (ib.length !== s.interruptBitmap.length) r.fail('interruptBitmap', `${ib.length} words, expected ${s.interruptBitmap.length}`);
  s.interruptBitmap = ib.map((b) => b.u64('bits'));
  return s;
}

export function saveVmState(w: StateWriter, vm: Vm): void {
  w.arr('irqchips', IRQCHIP_IDS, (cw, id) => { cw.b64('chip', vm.getIrqchip(id)); });
  w.b64('pit', vm.getPit2());
  // The guest's clock stops while it is saved: a restored guest goes on from
  // this instant, as QEMU and Firecracker do.
  w.u64('clock', vm.getClock().readBigUInt64LE(0));
}

export function readVmState(r: StateReader, vm: Vm): () => void {
  const chips = r.arr('irqchips', IRQCHIP_IDS.length).map((c, i) => {
    const b = c.b64('chip', 520);
    if (b.readUInt32LE(0) !== i) c.fail('chip', `chip id ${b.readUInt32LE(0)}, expected ${i}`);
    return b;
  });
  if (chips.length !== IRQCHIP_IDS.length) r.fail('irqchips', `${chips.length} chips, expected ${IRQCHIP_IDS.length}`);
  const pit = r.b64('pit', 112);
  const clock = r.u64('clock');
  return () => {
    for (const c of chips) vm.setIrqchip(c);
    vm.setPit2(pit);
    const b = Buffer.alloc(48);
    b.writeBigUInt64LE(clock, 0);
    vm.setClock(b);
  };
}
