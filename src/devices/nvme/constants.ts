/**
 * NVMe 1.4 numbers the controller uses: register offsets and fields,
 * opcodes, status codes (a completion's status field: SC | SCT << 8), and
 * the sizes of queue entries.
 */

export const REG = {
  CAP: 0x00, VS: 0x08, INTMS: 0x0c, INTMC: 0x10, CC: 0x14, CSTS: 0x1c, NSSR: 0x20,
  AQA: 0x24, ASQ: 0x28, ACQ: 0x30, CMBLOC: 0x38, CMBSZ: 0x3c,
} as const;
/** SQyTDBL at DOORBELLS + 8y, CQyHDBL at DOORBELLS + 8y + 4 (CAP.DSTRD = 0) */
export const DOORBELLS = 0x1000;

export const CC_EN = 1;
export const CSTS_RDY = 1, CSTS_CFS = 2;
export const SHST_COMPLETE = 2 << 2;
export const NVME_VERSION = 0x00010400;

export const PAGE = 4096;
export const SQE_SIZE = 64, CQE_SIZE = 16;
/** largest transfer: 2^MDTS pages (2 MiB, one PRP list page) */
export const MDTS = 9;
/** Asynchronous Event Requests held at once (AERL + 1) */
export const AER_LIMIT = 4;

export const ADMIN = {
  DELETE_SQ: 0x00, CREATE_SQ: 0x01, GET_LOG_PAGE: 0x02, DELETE_CQ: 0x04, CREATE_CQ: 0x05,
  IDENTIFY: 0x06, ABORT: 0x08, SET_FEATURES: 0x09, GET_FEATURES: 0x0a, ASYNC_EVENT: 0x0c,
  DBBUF_CONFIG: 0x7c,
} as const;

export const IO = { FLUSH: 0x00, WRITE: 0x01, READ: 0x02, WRITE_ZEROES: 0x08, DSM: 0x09 } as const;

export const FEAT = {
  ARBITRATION: 0x01, POWER_MGMT: 0x02, TEMP_THRESHOLD: 0x04, ERROR_RECOVERY: 0x05,
  VOLATILE_WC: 0x06, NUM_QUEUES: 0x07, IRQ_COALESCE: 0x08, IRQ_CONFIG: 0x09,
  WRITE_ATOMICITY: 0x0a, ASYNC_EVENT: 0x0b,
} as const;

/** Status field values (SC | SCT << 8); DNR is added where a retry cannot help. */
export const SC = {
  SUCCESS: 0x00,
  INVALID_OPCODE: 0x01,
  INVALID_FIELD: 0x02,
  DATA_TRANSFER: 0x04,
  INTERNAL: 0x06,
  ABORTED_SQ_DELETED: 0x08,
  INVALID_NAMESPACE: 0x0b,
  PRP_OFFSET_INVALID: 0x13,
  NS_WRITE_PROTECTED: 0x20,
  LBA_OUT_OF_RANGE: 0x80,
  // command specific (SCT 1)
  CQ_INVALID: 0x100,
  INVALID_QUEUE_ID: 0x101,
  MAX_QUEUE_SIZE: 0x102,
  AER_LIMIT: 0x105,
  INVALID_VECTOR: 0x108,
  INVALID_LOG_PAGE: 0x109,
  INVALID_QUEUE_DELETION: 0x10c,
  FEATURE_NOT_SAVEABLE: 0x10d,
  // media errors (SCT 2)
  WRITE_FAULT: 0x280,
  UNRECOVERED_READ: 0x281,
} as const;
/** Do Not Retry, in the status field */
export const DNR = 0x4000;
