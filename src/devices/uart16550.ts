/**
 * 16550A UART, modelled on bhyve's uart_emul.c: TX goes straight to the
 * backend (THRE/TEMT always set; the backend coalesces and bounds it), RX goes through a 16-byte FIFO (1 byte in
 * 16450 mode) fed from a bounded backlog; while the backlog holds anything
 * the backend is paused, so a guest that does not read stops host input
 * instead of growing memory.
 *
 * Interrupts are level: the line is up while an enabled source is pending
 * and MCR.OUT2 gates it onto the bus (as on PCs; in loopback OUT2 is cut
 * off from the pin). IIR reports the highest-priority source
 * (line status > RX data > THRE > modem status).
 */
import { ByteRegisterDevice, type IrqLine } from '../bus/bus.js';
import type { SerialBackend } from './backends/types.js';
import { type Snapshottable, type StateWriter, type StateReader } from '../snapshot/state.js';
import { UserError } from '../errors.js';
import { registerPlatformDevice } from './platform.js';

const REG_DATA = 0, REG_IER = 1, REG_IIR = 2, REG_LCR = 3, REG_MCR = 4, REG_LSR = 5, REG_MSR = 6, REG_SCR = 7;

const IER_ERDAI = 0x01, IER_ETHREI = 0x02, IER_ELSI = 0x04, IER_EMSI = 0x08;
const IIR_MLSC = 0x00, IIR_NOPEND = 0x01, IIR_THRE = 0x02, IIR_RDA = 0x04, IIR_RLS = 0x06, IIR_RXTOUT = 0x0c;
const IIR_FIFO = 0xc0;
const FCR_ENABLE = 0x01, FCR_RCV_RST = 0x02, FCR_DMA = 0x08, FCR_RX_MASK = 0xc0;
const FCR_KEPT = FCR_ENABLE | FCR_DMA | FCR_RX_MASK;
const LCR_DLAB = 0x80;
const MCR_DTR = 0x01, MCR_RTS = 0x02, MCR_OUT1 = 0x04, MCR_OUT2 = 0x08, MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;
const LSR_DR = 0x01, LSR_OE = 0x02, LSR_THRE = 0x20, LSR_TEMT = 0x40;
const MSR_DCTS = 0x01, MSR_DDSR = 0x02, MSR_TERI = 0x04, MSR_DDCD = 0x08, MSR_DELTA = 0x0f;
const MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_RI = 0x40, MSR_DCD = 0x80;

export const UART_FIFO_SIZE = 16;
/** Host bytes held beyond the FIFO. Above one socket read (64 KiB) so a chunk that races pause() fits. */
export const UART_BACKLOG_MAX = 128 * 1024;

/** MSR value (without deltas) for a given MCR. */
function modemStatus(mcr: number): number {
  if (mcr & MCR_LOOP) {
    let msr = 0;
    if (mcr & MCR_RTS) msr |= MSR_CTS;
    if (mcr & MCR_DTR) msr |= MSR_DSR;
    if (mcr & MCR_OUT1) msr |= MSR_RI;
    if (mcr & MCR_OUT2) msr |= MSR_DCD;
    return msr;
  }
  // Carrier, DSR and CTS always up so a tty open or flow control never blocks.
  return MSR_DCD | MSR_DSR | MSR_CTS;
}

export class Uart16550 extends ByteRegisterDevice implements Snapshottable {
  private dll = 0x0c; // 9600 baud, like a BIOS leaves it
  private dlh = 0;
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private msr = modemStatus(0);
  private scr = 0;
  private fcr = 0;
  private overrun = false;
  private threPending = false;

  private readonly fifo = new Uint8Array(UART_FIFO_SIZE);
  private fifoHead = 0;
  private fifoCount = 0;

  private backlog: Uint8Array[] = [];
  private backlogOff = 0; // consumed bytes of backlog[0]
  private backlogLen = 0;
  private paused = false;
  private irqLevel = false;
  private readonly txByte = new Uint8Array(1);

  /** Host bytes dropped because the backlog was full. */
  droppedRx = 0;

  constructor(private readonly irq: IrqLine, private readonly backend: SerialBackend | null) {
    super();
    backend?.onData((b) => this.receive(b));
  }

  // ---- bus interface ----

  protected readByte(reg: number): number {
    if (!Number.isInteger(reg) || reg < 0 || reg > 7) return 0xff;
    let v = 0;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (reg) {
      case REG_DATA:
        if (dlab) { v = this.dll; break; }
        v = this.popFifo();
        this.pump();
        break;
      case REG_IER:
        v = dlab ? this.dlh : this.ier;
        break;
      case REG_IIR: {
        const reason = this.intrReason();
        // Reading IIR acknowledges a THRE interrupt when it is the one reported.
        if (reason === IIR_THRE) this.threPending = false;
        v = reason | (this.fcr & FCR_ENABLE ? IIR_FIFO : 0);
        break;
      }
      case REG_LCR: v = this.lcr; break;
      case REG_MCR: v = this.mcr; break;
      case REG_LSR:
        v = LSR_THRE | LSR_TEMT | (this.fifoCount > 0 ? LSR_DR : 0) | (this.overrun ? LSR_OE : 0);
        this.overrun = false;
        break;
      case REG_MSR:
        v = this.msr;
        this.msr &= ~MSR_DELTA;
        break;
      case REG_SCR: v = this.scr; break;
    }
    this.updateIrq();
    return v;
  }

  protected writeByte(reg: number, v: number): void {
    if (!Number.isInteger(reg) || reg < 0 || reg > 7) return;
    const dlab = (this.lcr & LCR_DLAB) !== 0;
    switch (reg) {
      case REG_DATA:
        if (dlab) { this.dll = v; break; }
        this.transmit(v);
        break;
      case REG_IER:
        if (dlab) { this.dlh = v; break; }
        // THRE is edge-like: enabling it raises a pending THRE interrupt.
        if (!(this.ier & IER_ETHREI) && (v & IER_ETHREI)) this.threPending = true;
        this.ier = v & 0x0f;
        break;
      case REG_IIR: // FCR
        this.writeFcr(v);
        break;
      case REG_LCR: this.lcr = v; break;
      case REG_MCR: this.writeMcr(v); break;
      case REG_LSR: case REG_MSR: break; // read-only (as in bhyve)
      case REG_SCR: this.scr = v; break;
    }
    this.updateIrq();
  }

  private transmit(byte: number): void {
    this.threPending = true; // TX is instantaneous: THR is empty again at once.
    if (this.mcr & MCR_LOOP) {
      if (!this.pushFifo(byte)) this.overrun = true;
      return;
    }
    this.txByte[0] = byte;
    this.backend?.write(this.txByte); // backends copy what they keep
  }

  /** Output bytes the backend dropped (its reader not keeping up, a size cap). */
  get droppedTx(): number { return this.backend?.droppedOutput ?? 0; }

  private writeFcr(v: number): void {
    // Switching FIFO mode on/off resets the RX FIFO (and changes its depth).
    if ((this.fcr ^ v) & FCR_ENABLE) this.resetFifo();
    if (!(v & FCR_ENABLE)) {
      this.fcr = 0;
    } else {
      if (v & FCR_RCV_RST) this.resetFifo();
      this.fcr = v & FCR_KEPT;
    }
    this.pump();
  }

  private writeMcr(v: number): void {
    const wasLoop = (this.mcr & MCR_LOOP) !== 0;
    this.mcr = v & MCR_MASK;
    const msr = modemStatus(this.mcr);
    let delta = 0;
    if ((msr ^ this.msr) & MSR_CTS) delta |= MSR_DCTS;
    if ((msr ^ this.msr) & MSR_DSR) delta |= MSR_DDSR;
    if ((msr ^ this.msr) & MSR_DCD) delta |= MSR_DDCD;
    if ((this.msr & MSR_RI) && !(msr & MSR_RI)) delta |= MSR_TERI;
    this.msr = (this.msr & MSR_DELTA) | delta | msr;
    // Host input waits in the backlog during loopback; deliver it on exit.
    if (wasLoop && !(this.mcr & MCR_LOOP)) this.pump();
  }

  // ---- interrupts ----

  private intrReason(): number {
    if (this.overrun && this.ier & IER_ELSI) return IIR_RLS;
    if (this.fifoCount > 0 && this.ier & IER_ERDAI) return this.fcr & FCR_ENABLE ? IIR_RXTOUT : IIR_RDA;
    if (this.threPending && this.ier & IER_ETHREI) return IIR_THRE;
    if (this.msr & MSR_DELTA && this.ier & IER_EMSI) return IIR_MLSC;
    return IIR_NOPEND;
  }

  private updateIrq(): void {
    const level = this.intrReason() !== IIR_NOPEND && (this.mcr & (MCR_OUT2 | MCR_LOOP)) === MCR_OUT2;
    if (level !== this.irqLevel) {
      this.irqLevel = level;
      this.irq.set(level);
    }
    this.onChange?.();
  }

  /** Called after every state change (guest access or host input). */
  onChange?: () => void;

  /**
   * LSR as a read would return it, when reading it changes nothing and a
   * THR write cannot change it (not in loopback, no overrun to clear);
   * otherwise undefined. vCPU threads may answer LSR polls from this.
   */
  lsrShadow(): number | undefined {
    if (this.overrun || this.mcr & MCR_LOOP) return undefined;
    return LSR_THRE | LSR_TEMT | (this.fifoCount > 0 ? LSR_DR : 0);
  }

  // ---- receive path ----

  private fifoDepth(): number {
    return this.fcr & FCR_ENABLE ? UART_FIFO_SIZE : 1;
  }

  private pushFifo(b: number): boolean {
    if (this.fifoCount >= this.fifoDepth()) return false;
    this.fifo[(this.fifoHead + this.fifoCount) % UART_FIFO_SIZE] = b;
    this.fifoCount++;
    return true;
  }

  private popFifo(): number {
    if (this.fifoCount === 0) return 0;
    const b = this.fifo[this.fifoHead]!;
    this.fifoHead = (this.fifoHead + 1) % UART_FIFO_SIZE;
    this.fifoCount--;
    return b;
  }

  private resetFifo(): void {
    this.fifoHead = 0;
    this.fifoCount = 0;
  }

  /** Bytes from the backend. Never throws; excess beyond the backlog bound is dropped (reported as overrun). */
  private receive(bytes: Uint8Array): void {
    let n = bytes.length;
    const room = UART_BACKLOG_MAX - this.backlogLen;
    if (n > room) {
      this.droppedRx += n - room;
      this.overrun = true;
      n = room;
    }
    if (n > 0) {
      this.backlog.push(bytes.slice(0, n)); // copy: the backend may reuse its buffer
      this.backlogLen += n;
    }
    this.pump();
    this.updateIrq();
  }

  /** Move backlog bytes into the FIFO; pause the backend while anything is left over. */
  private pump(): void {
    if (!(this.mcr & MCR_LOOP)) {
      while (this.backlogLen > 0 && this.fifoCount < this.fifoDepth()) {
        const chunk = this.backlog[0]!;
        this.pushFifo(chunk[this.backlogOff++]!);
        this.backlogLen--;
        if (this.backlogOff >= chunk.length) { this.backlog.shift(); this.backlogOff = 0; }
      }
    }
    const want = this.backlogLen > 0;
    if (want !== this.paused && this.backend) {
      this.paused = want;
      if (want) this.backend.pause(); else this.backend.resume();
    }
  }

  // ---- save/restore ----
  // The host-side backlog is not saved: it is input not yet "on the wire".

  saveState(w: StateWriter): void {
    const rxFifo = new Uint8Array(this.fifoCount);
    for (let i = 0; i < this.fifoCount; i++) rxFifo[i] = this.fifo[(this.fifoHead + i) % UART_FIFO_SIZE]!;
    w.u8('dll', this.dll).u8('dlh', this.dlh).u8('ier', this.ier).u8('lcr', this.lcr).u8('mcr', this.mcr)
      .u8('msr', this.msr).u8('scr', this.scr).u8('fcr', this.fcr)
      .bool('overrun', this.overrun).bool('threPending', this.threPending).b64('rxFifo', rxFifo);
  }

  /** Every field range-checked (SnapshotError naming it) before any is taken. */
  restoreState(r: StateReader): void {
    const dll = r.u8('dll'), dlh = r.u8('dlh'), ier = r.u8('ier', 0x0f), lcr = r.u8('lcr'), mcr = r.u8('mcr', MCR_MASK);
    const msr = r.u8('msr'), scr = r.u8('scr'), fcr = r.u8('fcr');
    if (fcr & ~FCR_KEPT) r.fail('fcr', `unsupported bits 0x${fcr.toString(16)}`);
    const overrun = r.bool('overrun'), threPending = r.bool('threPending');
    const rxFifo = r.b64('rxFifo', [0, UART_FIFO_SIZE]);
    if (!(fcr & FCR_ENABLE) && rxFifo.length > 1) r.fail('rxFifo', `${rxFifo.length} bytes, but the FIFO is off (1 byte)`);
    this.dll = dll; this.dlh = dlh; this.ier = ier; this.lcr = lcr; this.mcr = mcr; this.msr = msr;
    this.scr = scr; this.fcr = fcr; this.overrun = overrun; this.threPending = threPending;
    this.resetFifo();
    for (const b of rxFifo) this.pushFifo(b);
    this.updateIrq();
  }
}

/** ISA serial ports: base port and IRQ, as on a PC (bhyve's lpc_uart_names). */
export const COM_PORTS: Record<string, { port: number; irq: number }> = {
  com1: { port: 0x3f8, irq: 4 },
  com2: { port: 0x2f8, irq: 3 },
  com3: { port: 0x3e8, irq: 4 },
  com4: { port: 0x2e8, irq: 3 },
};

for (const [name, { port, irq }] of Object.entries(COM_PORTS)) {
  registerPlatformDevice({
    name, kind: 'uart', node: `lpc.${name}`,
    hostPathKeys: ['path'],
    lpcConfig: (node, conf) => {
      if (conf === undefined || conf === '') throw new UserError(`needs a backend (e.g. -l ${name},stdio)`);
      node.set('path', conf);
    },
    create: async (ctx, node) => {
      const spec = node.get('path');
      if (spec === undefined) return undefined;
      const uart = new Uart16550(ctx.irq(irq), await ctx.openSerial(spec));
      // LSR polls (one per byte a guest prints) are answered on the vCPU thread.
      const setLsr = ctx.shadowRegister?.(port + 5, port);
      if (setLsr) {
        uart.onChange = () => setLsr(uart.lsrShadow());
        setLsr(uart.lsrShadow());
      }
      ctx.pio.register(port, 8, uart, name);
      return uart;
    },
  });
}
