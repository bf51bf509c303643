/**
 * Kicking vCPUs whose user-space local APIC was just given something
 * (x86.irqchip=user): kvm_run.immediate_exit set (a kick that lands just
 * before KVM_RUN is not lost) and SIG_KICK to the tid its page publishes.
 * Each sending thread maps the vCPUs' kvm_run pages itself.
 */
import { libc, SIG_KICK } from '../host/libc.js';
import { RUN } from '../kvm/abi.js';
import { mapKvmRun } from '../kvm/kvm.js';
import { LW } from '../x86/apic/lapic-page.js';

/** `self`: the calling vCPU (it checks its own APIC before each entry), or -1. */
export function apicKicker(pages: readonly Int32Array[], vcpuFds: readonly number[], runSize: number, self: number): (i: number) => void {
  const runs = vcpuFds.map((fd, i) => (i === self ? undefined : mapKvmRun(fd, runSize)));
  return (i) => {
    const run = runs[i];
    if (!run) return;
    run.setUint8(RUN.IMMEDIATE_EXIT, 1);
    const tid = Atomics.load(pages[i]!, LW.TID);
    if (tid > 0) libc.tgkill(process.pid, tid, SIG_KICK);
  };
}
