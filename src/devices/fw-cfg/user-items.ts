/**
 * User fw_cfg items: bhyve's `-f [name=]NAME,string=S` and
 * `-f [name=]NAME,file=PATH` (qemu_fwcfg_parse_cmdline_arg; QEMU's
 * `-fw_cfg name=NAME,string=|file=`), config keys lpc.fwcfg_item.N.name and
 * lpc.fwcfg_item.N.string or .file. The firmware or the guest (Linux's
 * qemu_fw_cfg driver, /sys/firmware/qemu_fw_cfg) reads them by name from
 * the file directory. A string is served with its NUL, as bhyve does (QEMU
 * leaves it out); a file as it is, read when the VM is built.
 */
import type { ConfigTree } from '../../config/tree.js';
import { readUserFile, statUserFile } from '../../config/user-file.js';
import { UserError } from '../../errors.js';
import { FILE_NAME_MAX, type FwCfgFile } from './device.js';

/** The config node of the items, under lpc (the fw_cfg device's node): lpc.fwcfg_item.N.*. */
export const USER_ITEMS_NODE = 'fwcfg_item';
/** Names users give live under opt/ (QEMU's rule: the rest is QEMU's and the firmware's). */
const USER_PREFIX = 'opt/';
/** An item is held in memory for the VM's life. */
export const MAX_USER_ITEM_BYTES = 16 * 1024 * 1024;

/** `-f [name=]NAME,(string|file)=VALUE` into the next lpc.fwcfg_item.N; the name and file are checked when the VM is built. */
export function parseFwCfgItemOption(config: ConfigTree, opt: string): void {
  const body = opt.startsWith('name=') ? opt.slice('name='.length) : opt;
  const comma = body.indexOf(',');
  const value = comma < 0 ? '' : body.slice(comma + 1);
  const kind = value.startsWith('string=') ? 'string' : value.startsWith('file=') ? 'file' : undefined;
  if (comma < 0 || kind === undefined) throw new UserError(`invalid fw_cfg item '${opt}' (-f [name=]NAME,string=STRING or -f [name=]NAME,file=PATH)`);
  const n = config.node(`lpc.${USER_ITEMS_NODE}`)?.children.size ?? 0;
  config.set(`lpc.${USER_ITEMS_NODE}.${n}.name`, body.slice(0, comma));
  config.set(`lpc.${USER_ITEMS_NODE}.${n}.${kind}`, value.slice(kind.length + 1));
}

/** Whether the config asks for user items (they need the fw_cfg of a bootrom). */
export function hasUserItems(config: ConfigTree): boolean {
  return (config.node(`lpc.${USER_ITEMS_NODE}`)?.children.size ?? 0) > 0;
}

/** The user items of the config, in the order given, checked and read; UserError (one line) on a bad one. */
export function userFwCfgFiles(config: ConfigTree): FwCfgFile[] {
  const files: FwCfgFile[] = [];
  for (const node of config.node(`lpc.${USER_ITEMS_NODE}`)?.children.values() ?? []) {
    const where = node.path;
    const name = node.get('name') ?? '';
    if (!name.startsWith(USER_PREFIX) || name.length === USER_PREFIX.length) throw new UserError(`${where}.name: fw_cfg item '${name}' must be named opt/SOMETHING`);
    if (name.length > FILE_NAME_MAX || !/^[\x20-\x7e]+$/.test(name)) throw new UserError(`${where}.name: fw_cfg item '${name}' is not 5-${FILE_NAME_MAX} printable ASCII characters`);
    if (files.some((f) => f.name === name)) throw new UserError(`${where}.name: fw_cfg item '${name}' is given twice`);
    const str = node.get('string'), path = node.get('file');
    if ((str === undefined) === (path === undefined)) throw new UserError(`${where}: fw_cfg item '${name}' needs either string= or file=`);
    let data: Uint8Array;
    if (path !== undefined) {
      const what = `fw_cfg item ${name} file`;
      const size = statUserFile(path, what).size;
      if (size > MAX_USER_ITEM_BYTES) throw new UserError(`${what} ${path} is ${size} bytes, more than ${MAX_USER_ITEM_BYTES / 2 ** 20} MiB`);
      data = readUserFile(path, what);
    } else {
      data = Buffer.from(`${str!}\0`, 'utf8');
      if (data.length > MAX_USER_ITEM_BYTES) throw new UserError(`${where}.string: fw_cfg item '${name}' is longer than ${MAX_USER_ITEM_BYTES / 2 ** 20} MiB`);
    }
    files.push({ name, data });
  }
  return files;
}
