/**
 * virtio-console options (bhyve's pci_virtio_console config):
 *   legacy `-s N,virtio-console,NAME=PATH[,NAME=PATH...]`
 *   -> pci.B.S.F.port.<i>.name=NAME, pci.B.S.F.port.<i>.path=PATH  (i = 0, 1, ...)
 * Each PATH is a unix socket the monitor listens on. A port named `console`
 * (or with `port.<i>.console=true`) is announced as the guest's console (hvc0).
 */
import { existsSync, lstatSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import type { ConfigNode } from '../../config/tree.js';
import type { ConfigTreeWriter, PciDeviceInfo } from '../../pci/device.js';
import { UserError } from '../../errors.js';

export const VIRTIO_CONSOLE_MAX_PORTS = 16;

export interface ConsolePortConfig {
  name: string;
  path: string;
  console: boolean;
}

const SUN_PATH_MAX = 107;

export function virtioConsoleLegacyConfig(writer: ConfigTreeWriter, opts: string): void {
  if (opts === '') return;
  let i = 0;
  for (const opt of opts.split(',')) {
    if (opt === '') continue;
    if (opt === 'legacy') { writer.set('legacy', 'true'); continue; } // transitional virtio-pci
    const eq = opt.indexOf('=');
    if (eq <= 0) throw new UserError(`virtio-console: port '${opt}' requires a path (NAME=PATH)`);
    const path = opt.slice(eq + 1);
    if (path === '') throw new UserError(`virtio-console: port '${opt.slice(0, eq)}' requires a path`);
    if (i >= VIRTIO_CONSOLE_MAX_PORTS) throw new UserError(`virtio-console: too many ports (at most ${VIRTIO_CONSOLE_MAX_PORTS})`);
    writer.set(`port.${i}.name`, opt.slice(0, eq));
    writer.set(`port.${i}.path`, path);
    i++;
  }
}

/** Ports from a device node, in index order. Throws UserError. */
export function parseVirtioConsolePorts(node: ConfigNode): ConsolePortConfig[] {
  const where = node.path ? `${node.path}.port` : 'port';
  const portsNode = node.node('port');
  const out: ConsolePortConfig[] = [];
  if (!portsNode) throw new UserError(`virtio-console: no ports configured (-s N,virtio-console,NAME=/path/sock)`);
  const keys = [...portsNode.children.keys()];
  for (const k of keys) if (!/^\d+$/.test(k)) throw new UserError(`${where}.${k}: port index must be a number`);
  keys.sort((a, b) => Number(a) - Number(b));
  if (keys.length > VIRTIO_CONSOLE_MAX_PORTS) throw new UserError(`virtio-console: too many ports (at most ${VIRTIO_CONSOLE_MAX_PORTS})`);
  for (const k of keys) {
    const n = portsNode.children.get(k)!;
    const name = n.get('name');
    const path = n.get('path');
    if (!name) throw new UserError(`${where}.${k}.name: missing`);
    if (!path) throw new UserError(`${where}.${k}.path: missing`);
    out.push({ name, path, console: n.getBool('console', name === 'console') });
  }
  if (out.length === 0) throw new UserError('virtio-console: no ports configured');
  return out;
}

/**
 * The checks UnixSerialBackend.open makes, done synchronously so a bad path is
 * a UserError at device creation rather than a late asynchronous failure.
 */
export function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > SUN_PATH_MAX) throw new UserError(`virtio-console: socket path '${path}' longer than ${SUN_PATH_MAX} bytes`);
  const dir = dirname(path);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UserError(`virtio-console: directory of '${path}' does not exist`);
  if (existsSync(path) && !lstatSync(path).isSocket()) throw new UserError(`virtio-console: ${path} exists and is not a socket`);
}

export const virtioConsoleInfo: PciDeviceInfo = { name: 'virtio-console', legacyConfig: virtioConsoleLegacyConfig, hostPathKeys: ['port.N.path'] };
