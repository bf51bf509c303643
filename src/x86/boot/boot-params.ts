/**
 * struct boot_params ("zero page") offsets, per Documentation/arch/x86/
 * zero-page.rst and boot.rst. Offsets are into the 4 KiB zero page; the
 * setup header occupies the same offsets in a bzImage file.
 */
export const BP = {
  ACPI_RSDP_ADDR: 0x070, // u64
  EXT_RAMDISK_IMAGE: 0x0c0,
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  ALT_MEM_K: 0x1e0,
  E820_ENTRIES: 0x1e8, // u8
  SETUP_HEADER: 0x1f1,
  E820_TABLE: 0x2d0, // 128 x {u64 addr, u64 size, u32 type}
} as const;

export const E820_MAX_ENTRIES = 128;
export const E820_ENTRY_SIZE = 20;

/** setup_header fields (offsets valid both in boot_params and in the bzImage). */
export const HDR = {
  SETUP_SECTS: 0x1f1, // u8
  SYSSIZE: 0x1f4, // u32, 16-byte units
  VID_MODE: 0x1fa, // u16
  BOOT_FLAG: 0x1fe, // u16 0xaa55
  JUMP: 0x200, // u16; header ends at 0x202 + byte at 0x201
  HEADER: 0x202, // "HdrS"
  VERSION: 0x206, // u16
  TYPE_OF_LOADER: 0x210, // u8
  LOADFLAGS: 0x211, // u8
  CODE32_START: 0x214, // u32
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224, // u16
  CMD_LINE_PTR: 0x228,
  INITRD_ADDR_MAX: 0x22c,
  KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE_KERNEL: 0x234, // u8
  XLOADFLAGS: 0x236, // u16
  CMDLINE_SIZE: 0x238,
  PREF_ADDRESS: 0x258, // u64
  INIT_SIZE: 0x260, // u32
} as const;

export const HDRS_MAGIC = 0x53726448; // "HdrS" little-endian
export const BOOT_FLAG_MAGIC = 0xaa55;

export const LOADED_HIGH = 1 << 0;
export const KEEP_SEGMENTS = 1 << 6;
export const CAN_USE_HEAP = 1 << 7;

export const XLF_KERNEL_64 = 1 << 0;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1;

/** "undefined" boot loader id: we have no assigned one. */
export const LOADER_TYPE_UNDEFINED = 0xff;
export const VID_MODE_NORMAL = 0xffff;
