export { buildAcpiTables, type AcpiOptions } from './tables.js';
export { buildDsdtAml, s5Aml, pciRootAml, type DsdtOptions, type PciRootOptions, type PciIrqRoute } from './dsdt.js';
export * from './pm-ports.js';
