/**
 * Start-up checks with plain answers: is there a KVM, may we use it, has it
 * the capabilities tshyve needs, and is it real hardware virtualization or
 * a software-emulated KVM that cannot run an unmodified Linux kernel.
 */
import { existsSync, readFileSync } from 'node:fs';
import { type Kvm, CAP } from '../kvm/kvm.js';
import { HostError } from '../errors.js';

export interface HostReport {
  /** hardware virtualization flag in /proc/cpuinfo ('vmx' | 'svm' | undefined) */
  hwVirt: string | undefined;
  /** KVM is an emulator (no hardware virtualization under it) */
  emulated: boolean;
  /** why we think so, for messages */
  emulatedWhy: string | undefined;
  maxVcpus: number;
  /** the host CPU is itself virtualized (the `hypervisor` flag in /proc/cpuinfo) */
  hypervisor: boolean;
}

const REQUIRED: [number, string][] = [
  [CAP.IRQCHIP, 'KVM_CAP_IRQCHIP'],
  [CAP.USER_MEMORY, 'KVM_CAP_USER_MEMORY'],
  [CAP.PIT2, 'KVM_CAP_PIT2'],
  [CAP.EXT_CPUID, 'KVM_CAP_EXT_CPUID'],
  [CAP.IOEVENTFD, 'KVM_CAP_IOEVENTFD'],
  [CAP.IRQFD, 'KVM_CAP_IRQFD'],
  [CAP.SIGNAL_MSI, 'KVM_CAP_SIGNAL_MSI'],
];

export function inspectHost(kvm: Kvm): HostReport {
  for (const [cap, name] of REQUIRED) {
    if (!kvm.checkExtension(cap)) throw new HostError(`this host's KVM lacks ${name}, which tshyve needs`, 'ENOCAP');
  }
  let hwVirt: string | undefined;
  let hypervisor = false;
  try {
    const flags = readFileSync('/proc/cpuinfo', 'latin1').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
    hwVirt = / vmx( |$)/.test(flags) ? 'vmx' : / svm( |$)/.test(flags) ? 'svm' : undefined;
    hypervisor = / hypervisor( |$)/.test(flags);
  } catch { /* no /proc: leave unknown */ }
  let emulatedWhy: string | undefined;
  if (existsSync('/sys/module/kvm_pvm')) emulatedWhy = 'its KVM is kvm_pvm, which emulates guest instructions in software';
  else if (!hwVirt) emulatedWhy = 'the CPU shows no vmx/svm flag, so KVM has no hardware virtualization under it';
  return {
    hwVirt,
    emulated: emulatedWhy !== undefined,
    emulatedWhy,
    maxVcpus: kvm.checkExtension(CAP.MAX_VCPUS) || kvm.checkExtension(CAP.NR_VCPUS) || 1,
    hypervisor,
  };
}

/** The line printed when a Linux guest is asked of an emulated KVM. */
export function emulatedKvmMessage(r: HostReport): string {
  return `this host cannot boot a Linux kernel: ${r.emulatedWhy}; run it in the nested lab instead (lab/run -- tshyve ...), or on a machine with VT-x/AMD-V`;
}
