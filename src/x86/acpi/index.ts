export { buildAcpiTables, buildAcpiBlobs, type AcpiOptions, type AcpiBlobs, type AcpiBlobName, type AcpiPointer, type AcpiChecksum } from './tables.js';
export { buildDsdtAml, s5Aml, pciRootAml, type DsdtOptions, type PciRootOptions, type PciIrqRoute } from './dsdt.js';
export * from './pm-ports.js';
