/**
 * virtio-net's configuration, bhyve's keys under pci.B.S.F:
 *
 *   backend    tap name (`tap0`, any existing or creatable tap interface), or a
 *              registered backend type (`slirp`: user-mode networking)
 *   mac        xx:xx:xx:xx:xx:xx (unicast, not all zero); default: bhyve's
 *              stable MAC, 58:9c:fc and 3 bytes of MD5("SLOT-FUNC-VMNAME")
 *   mtu        68..65535, offered to the guest with VIRTIO_NET_F_MTU
 *   hostfwd.N  (slirp) one port forward each, N = 0, 1, ... in `-s` order;
 *              or `hostfwd` (bhyve's: rules joined by ';'); hostfwdRules reads either
 *
 * `-s N,virtio-net,BACKEND[,mac=..][,mtu=..][,hostfwd=..]...` sets them; each
 * rule of each `hostfwd=` (';'-separated, as bhyve takes them) becomes the
 * next hostfwd.N. `-s N,virtio-net,backend=..,...` works as well.
 */
import { createHash } from 'node:crypto';
import type { ConfigNode } from '../../config/tree.js';
import { parsePciLegacyConfig } from '../../config/options.js';
import { UserError } from '../../errors.js';
import type { ConfigTreeWriter, PciDeviceInfo } from '../../pci/device.js';

export interface NetOptions {
  backend: string;
  mac: Uint8Array;
  mtu?: number;
}

export const MIN_MTU = 68;
export const MAX_MTU = 65535;

/** `xx:xx:xx:xx:xx:xx` (or `-`-separated, 1 or 2 hex digits each, as ether_aton takes) as 6 bytes; a unicast, non-zero address. */
export function parseMac(v: string, what = 'mac'): Uint8Array {
  const parts = v.trim().split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new UserError(`${what}: '${v}' is not a MAC address (xx:xx:xx:xx:xx:xx)`);
  }
  const mac = Uint8Array.from(parts.map((p) => parseInt(p, 16)));
  if (mac[0]! & 1) throw new UserError(`${what}: '${v}' is a multicast address`);
  if (mac.every((b) => b === 0)) throw new UserError(`${what}: '${v}' is the zero address`);
  return mac;
}

export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** bhyve's net_genmac(): the FreeBSD Foundation OUI and MD5("SLOT-FUNC-VMNAME"), the same for the same VM and slot every time. */
export function stableMac(vmName: string, slot: number, func: number): Uint8Array {
  const d = createHash('md5').update(`${slot}-${func}-${vmName}`).digest();
  return Uint8Array.of(0x58, 0x9c, 0xfc, d[0]!, d[1]!, d[2]!);
}

/** The device's options from its config node; UserError (one line naming the key) on bad values. */
export function parseNetOptions(node: ConfigNode, vmName: string, bdf: { slot: number; func: number }): NetOptions {
  const where = (k: string): string => (node.path ? `${node.path}.${k}` : k);
  const backend = node.get('backend');
  if (backend === undefined || backend === '') throw new UserError(`virtio-net: no backend (set ${where('backend')}, e.g. tap0 or slirp)`);
  const m = node.get('mac');
  const opts: NetOptions = { backend, mac: m === undefined ? stableMac(vmName, bdf.slot, bdf.func) : parseMac(m, where('mac')) };
  const mtu = node.get('mtu');
  if (mtu !== undefined) {
    const n = /^[0-9]{1,5}$/.test(mtu.trim()) ? Number(mtu) : NaN;
    if (!(n >= MIN_MTU && n <= MAX_MTU)) throw new UserError(`${where('mtu')}: '${mtu}' is not an MTU between ${MIN_MTU} and ${MAX_MTU}`);
    opts.mtu = n;
  }
  return opts;
}

/**
 * bhyve's netbe_legacy_config(): `BACKEND[,key=value]...`; the first field is
 * the backend unless it is a `key=value` itself. Repeated `hostfwd=` go to
 * hostfwd.0, hostfwd.1, ...
 */
export function virtioNetLegacyConfig(writer: ConfigTreeWriter, opts: string): void {
  const fields = opts.split(',');
  const first = fields[0]!;
  if (!first.includes('=')) {
    if (first === '') throw new UserError('virtio-net: empty backend name');
    writer.set('backend', first);
    fields.shift();
  }
  let fwd = 0;
  const rest: string[] = [];
  for (const f of fields) {
    if (!f.startsWith('hostfwd=')) { rest.push(f); continue; }
    for (const rule of f.slice('hostfwd='.length).split(';')) if (rule !== '') writer.set(`hostfwd.${fwd++}`, rule);
  }
  parsePciLegacyConfig(writer, rest.join(','));
}

/** The port-forward rules of a user-mode backend: `hostfwd` (';'-joined), or hostfwd.0, hostfwd.1, ... by number. */
export function hostfwdRules(node: ConfigNode): string[] {
  const n = node.node('hostfwd');
  if (!n) return [];
  const numbered = [...n.children].filter(([k, c]) => /^[0-9]+$/.test(k) && c.value !== undefined).sort(([a], [b]) => Number(a) - Number(b));
  return [n.value, ...numbered.map(([, c]) => c.value)].flatMap((v) => (v ?? '').split(';')).filter((r) => r !== '');
}

export const virtioNetInfo: PciDeviceInfo = {
  name: 'virtio-net',
  legacyConfig: virtioNetLegacyConfig,
  // the host side of the link: a restore may use another tap or other forwards
  hostOnlyKeys: ['backend', 'hostfwd', 'hostfwd.*'],
};
