/**
 * bhyve's configuration model (bhyve_config(5)): a tree of string values
 * addressed by dotted paths such as `pci.0.2.0.device` or `lpc.com1.path`.
 * Every option ends up here; devices read their own node.
 */
import { UserError } from '../errors.js';

export class ConfigNode {
  readonly children = new Map<string, ConfigNode>();
  value: string | undefined;
  constructor(readonly path: string) {}

  /** Child node by relative dotted path, or undefined. */
  node(rel: string): ConfigNode | undefined {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the walk starts here
    let n: ConfigNode | undefined = this;
    for (const part of rel.split('.')) {
      if (!n) return undefined;
      n = n.children.get(part);
    }
    return n;
  }

  get(rel: string): string | undefined {
    return this.node(rel)?.value;
  }

  getBool(rel: string, dflt: boolean): boolean {
    const v = this.get(rel);
    if (v === undefined) return dflt;
    return parseBool(v, this.path ? `${this.path}.${rel}` : rel);
  }
}

export function parseBool(v: string, what: string): boolean {
  switch (v.toLowerCase()) {
    case '1': case 'true': case 'yes': case 'on': return true;
    case '0': case 'false': case 'no': case 'off': return false;
    default: throw new UserError(`${what}: '${v}' is not a boolean`);
  }
}

/** Writes keys relative to one device's node (`pci.B.S.F.`). */
export interface ConfigTreeWriter {
  set(rel: string, value: string): void;
}

const KEY_PART = /^[A-Za-z0-9_-]+$/;

export class ConfigTree {
  readonly root = new ConfigNode('');

  set(path: string, value: string): void {
    const parts = path.split('.');
    if (parts.some((p) => !KEY_PART.test(p))) throw new UserError(`invalid config key '${path}'`);
    let n = this.root;
    let sofar = '';
    for (const p of parts) {
      sofar = sofar ? `${sofar}.${p}` : p;
      let c = n.children.get(p);
      if (!c) { c = new ConfigNode(sofar); n.children.set(p, c); }
      if (c.value !== undefined && c !== undefined && sofar !== path) {
        throw new UserError(`config key '${path}': '${sofar}' already holds a value`);
      }
      n = c;
    }
    if (n.children.size > 0) throw new UserError(`config key '${path}' is a node, not a value`);
    n.value = value;
  }

  /** Set only when absent (defaults). */
  setDefault(path: string, value: string): void {
    if (this.get(path) === undefined) this.set(path, value);
  }

  get(path: string): string | undefined { return this.root.get(path); }
  node(path: string): ConfigNode | undefined { return this.root.node(path); }
  getBool(path: string, dflt: boolean): boolean { return this.root.getBool(path, dflt); }

  /** Every key with a value, sorted by key. */
  entries(): [string, string][] {
    return this.dump().map((l) => { const i = l.indexOf('='); return [l.slice(0, i), l.slice(i + 1)] as [string, string]; });
  }

  /** All `key=value` lines, sorted, for `-o config.dump=1`. */
  dump(): string[] {
    const out: string[] = [];
    const walk = (n: ConfigNode) => {
      if (n.value !== undefined) out.push(`${n.path}=${n.value}`);
      for (const k of [...n.children.keys()].sort()) walk(n.children.get(k)!);
    };
    walk(this.root);
    return out;
  }
}
