import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bootXcr0, guestCpuid, vendorOf } from './cpuid.js';
import type { CpuidEntry } from '../kvm/abi.js';

const vendor = (s: string): CpuidEntry => {
  const b = Buffer.from(s, 'latin1');
  return { function: 0, index: 0, flags: 0, eax: 0xd, ebx: b.readUInt32LE(0), edx: b.readUInt32LE(4), ecx: b.readUInt32LE(8) };
};

test('vendor string decodes from leaf 0', () => {
  assert.equal(vendorOf([vendor('AuthenticAMD')]), 'AuthenticAMD');
  assert.equal(vendorOf([vendor('GenuineIntel')]), 'GenuineIntel');
});

test('leaf 1 carries APIC ID, logical count and the hypervisor bit', () => {
  const sup = [vendor('GenuineIntel'), { function: 1, index: 0, flags: 0, eax: 0x806c1, ebx: 0x00000800, ecx: 0x2000, edx: 0 }];
  const c = guestCpuid(sup, 1, { cpus: 2, sockets: 1, cores: 2, threads: 1 });
  const l1 = c.find((e) => e.function === 1)!;
  assert.equal(l1.ebx >>> 24, 1);
  assert.equal((l1.ebx >>> 16) & 0xff, 2);
  assert.equal(l1.ebx & 0xffff, 0x0800);
  assert.ok(l1.ecx & (1 << 31));
  assert.ok(l1.edx & (1 << 28));
  const hidden = guestCpuid(sup, 0, { cpus: 1, sockets: 1, cores: 1, threads: 1 }, { hideCx16: true }).find((e) => e.function === 1)!;
  assert.equal(hidden.ecx & (1 << 13), 0);
  assert.equal(l1.ecx & (1 << 24), 0, 'no TSC-deadline timer unless KVM has it');
  const deadline = guestCpuid(sup, 0, { cpus: 1, sockets: 1, cores: 1, threads: 1 }, { tscDeadline: true }).find((e) => e.function === 1)!;
  assert.ok(deadline.ecx & (1 << 24));
});

test('leaf 0xB reports the topology and x2APIC ID', () => {
  const c = guestCpuid([vendor('GenuineIntel')], 3, { cpus: 4, sockets: 1, cores: 2, threads: 2 });
  const l0 = c.find((e) => e.function === 0xb && e.index === 0)!;
  const l1 = c.find((e) => e.function === 0xb && e.index === 1)!;
  assert.deepEqual([l0.eax, l0.ebx, l0.edx], [1, 2, 3]);
  assert.deepEqual([l1.eax, l1.ebx, l1.edx], [2, 4, 3]);
});

test('XCR0 at a Linux boot enables every state component leaf 0xD offers, only with XSAVE', () => {
  // the nested lab's host: x87, SSE, AVX and PKRU (leaf 0xD.0 EAX 0x207)
  const l1 = { function: 1, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 1 << 26, edx: 0 };
  const d0 = { function: 0xd, index: 0, flags: 1, eax: 0x207, ebx: 0x240, ecx: 0xa88, edx: 0 };
  const d1 = { function: 0xd, index: 1, flags: 1, eax: 5, ebx: 0, ecx: 0, edx: 0 };
  assert.equal(bootXcr0([vendor('AuthenticAMD'), l1, d0, d1]), 0x207n);
  assert.equal(bootXcr0([l1, { ...d0, eax: 0xe7, edx: 0x6 }]), 0x6_0000_00e7n, 'EDX is XCR0\'s upper half');
  assert.equal(bootXcr0([l1, { ...d0, eax: 0x6 }]), 0x7n, 'x87 is always on');
  assert.equal(bootXcr0([{ ...l1, ecx: 0 }, d0]), undefined, 'no XSAVE in leaf 1');
  assert.equal(bootXcr0([l1]), undefined, 'no leaf 0xD');
});
