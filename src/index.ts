/**
 * tshyve as a library: build a VM from a bhyve-style config tree, run it,
 * pause and resume it, end it.
 *
 *   import { parseBhyveArgs, Machine } from 'tshyve';
 *   const { config } = parseBhyveArgs(['-c', '2', '-m', '512M', '-l', 'com1,stdio',
 *     '-o', 'boot.kernel=vmlinuz', 'myvm']);
 *   const vm = await Machine.create(config);
 *   const exitCode = await vm.run();
 *
 * Serve it on a control socket (what tshyvectl talks to), and control
 * another tshyve process by name or socket path:
 *
 *   const server = new ControlServer(vm);
 *   await server.listen('/run/tshyve/myvm.sock');   // ... await server.close() after run()
 *   const other = await connectVm('othervm');        // /run/tshyve/othervm.sock
 *   await other.pause(); console.log(await other.stats()); other.close();
 *
 * Migrate: `await vm.migrate('10.0.0.2,7700', { live: true })` on the
 * source; `await receiveMigration(config, parseMigrationAddress('10.0.0.2,7700'))`
 * gives the destination's Machine, to run().
 */
export { Machine, COM_PORTS } from './vm/machine.js';
export { ExitCode } from './vm/exit-codes.js';
export { ConfigTree, ConfigNode } from './config/tree.js';
export { parseBhyveArgs, usage } from './cli/args.js';
export { resolveCpus, resolveMemBytes } from './config/options.js';
export { parseMemSize, formatSize } from './config/size.js';
export { GuestMemory } from './memory/guest-memory.js';
export { Bus, type BusDevice, type IrqLine } from './bus/bus.js';
export { registerPciDevice, findPciDevice, loadPciDevice, pciDeviceNames, type PciDeviceEmulation, type PciDeviceInfo, type LazyPciDevice, type DeviceContext } from './pci/device.js';
export { registerPlatformDevice, type PlatformDeviceEmulation, type PlatformContext } from './devices/platform.js';
export { TshyveError, UserError, HostError, GuestMemoryError, KvmError } from './errors.js';
export { inspectHost, type HostReport } from './vm/host-check.js';
export type { VmControl, SnapshotOptions, SnapshotResult, SnapshotProgress, MigrationOptions, MigrationProgress, MigrationResult } from './vm/control.js';
export { receiveMigration, type IncomingOptions } from './vm/migrate-in.js';
export { parseMigrationAddress, formatAddress, type MigrationAddress } from './migration/transport.js';
export { MigrationError } from './migration/wire.js';
export {
  ControlServer, ControlClient, ControlError, connectVm, listVms, controlSocketPath, defaultControlDir, socketPathFor,
  type ControlServerOptions, type ConnectOptions, type CallOptions, type ListedVm, type VmInfo,
} from './control/index.js';
