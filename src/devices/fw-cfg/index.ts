/**
 * The fw_cfg device of a VM that boots firmware (`-l bootrom`): QEMU's
 * interface (bhyve's `-l fwcfg,qemu`, lpc.fwcfg=qemu, the only one tshyve
 * has) at ports 0x510-0x511 and 0x514, its items from the VM's config.
 */
import { UserError } from '../../errors.js';
import { resolveCpus } from '../../config/options.js';
import { readUserFile } from '../../config/user-file.js';
import { platformAcpiOptions } from '../../pci/acpi-options.js';
import { registerPlatformDevice } from '../platform.js';
import { FW_CFG_DMA_PORT, FW_CFG_DMA_PORT_LEN, FW_CFG_PORT, FW_CFG_PORT_LEN, FwCfg } from './device.js';
import { fwCfgItems } from './items.js';
import { bootOrderPaths } from './bootorder.js';
import { hasUserItems, USER_ITEMS_NODE, userFwCfgFiles } from './user-items.js';

registerPlatformDevice({
  name: 'fwcfg', kind: 'fw-cfg', node: 'lpc',
  hostPathKeys: [`${USER_ITEMS_NODE}.N.file`],
  lpcConfig: (node, conf) => {
    if (conf === 'bhyve') throw new UserError("is bhyve's fwctl, which tshyve lacks; tshyve has QEMU's fw_cfg (fwcfg,qemu)");
    if (conf !== 'qemu') throw new UserError('takes qemu');
    node.set('fwcfg', conf);
  },
  create: (ctx, node) => {
    const c = ctx.config;
    if (node.get('bootrom') === undefined) {
      if (hasUserItems(c)) throw new UserError('fw_cfg items (-f) are for firmware: give one with -l bootrom');
      return undefined;
    }
    const topo = resolveCpus(c);
    const kernel = c.get('boot.kernel');
    const initrd = c.get('boot.initrd');
    const fw = new FwCfg(ctx.mem, fwCfgItems({
      memBytes: ctx.memBytes,
      cpus: topo.cpus,
      acpi: platformAcpiOptions(topo.cpus, true),
      smbios: { memBytes: ctx.memBytes, sockets: topo.sockets, cores: topo.cores, threads: topo.threads, vmName: c.get('name') ?? 'vm', uuid: c.get('uuid') },
      linux: kernel === undefined ? undefined : {
        kernel: readUserFile(kernel, 'kernel'),
        initrd: initrd === undefined ? undefined : readUserFile(initrd, 'initrd'),
        cmdline: c.get('boot.cmdline') ?? '',
      },
      bootOrder: bootOrderPaths(c, ctx.pciConfig),
      userFiles: userFwCfgFiles(c),
    }));
    ctx.pio.register(FW_CFG_PORT, FW_CFG_PORT_LEN, fw.port, 'fw-cfg');
    ctx.pio.register(FW_CFG_DMA_PORT, FW_CFG_DMA_PORT_LEN, fw.dmaPort, 'fw-cfg-dma');
    return fw;
  },
});
