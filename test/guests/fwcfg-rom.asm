; A one-page firmware image for -l bootrom: the vCPU starts at its last 16
; bytes (the reset vector, 0xFFFFFFF0). It reads the fw_cfg signature
; through the ports, the file directory's entry count through DMA, and the
; host bridge's id, prints them on com1, then programs the PIIX4 PM
; function's PMBA and powers off through the PM1 control block there as
; OVMF's ResetShutdown does (SLP_TYP 0, QEMU's PIIX4 soft off).
%include "common.inc"
        bits 16
        org 0xf000              ; CS base 0xffff0000: this page is CS:F000-CS:FFFF
FWCFG     equ 0x510
FWCFG_DMA equ 0x514
DMA_DESC  equ 0x1000
DMA_BUF   equ 0x2000
PM_BASE   equ 0xb000

start:  cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        ; --- the signature, a byte at a time ---
        mov dx, FWCFG
        xor ax, ax
        out dx, ax              ; select FW_CFG_SIGNATURE
        inc dx
        mov cx, 4
.sig:   in al, dx
        call putc
        loop .sig
        mov al, 10
        call putc
        ; --- the file directory's count through DMA (FWCfgDmaAccess, big-endian) ---
        mov dword [DMA_DESC], 0x0a001900      ; control: key 0x19 << 16 | SELECT | READ
        mov dword [DMA_DESC + 4], 0x04000000  ; length 4
        mov dword [DMA_DESC + 8], 0           ; address, high half
        mov dword [DMA_DESC + 12], 0x00200000 ; address, low half: DMA_BUF
        mov dx, FWCFG_DMA
        xor eax, eax
        out dx, eax             ; the register's high half
        add dx, 4
        mov eax, 0x00100000     ; its low half, big-endian DMA_DESC: starts the transfer
        out dx, eax
        ; Poll the control field as OVMF does (tshyve posts port writes: the
        ; transfer may end after the OUT): 0 is done, the error bit failed.
.wait:  mov eax, [DMA_DESC]
        test eax, eax
        jz .done
        test eax, 0x01000000    ; FW_CFG_DMA_CTL_ERROR, big-endian
        jnz .bad
        jmp .wait
.done:
        mov eax, [DMA_BUF]
        bswap eax
        mov ebp, eax
        PRINT_COUNT
        ; --- the host bridge's vendor and device id (00:00.0, register 0) ---
        mov dx, 0xcf8
        mov eax, 0x80000000
        out dx, eax
        mov dx, 0xcfc
        in eax, dx
        mov ebp, eax
        PRINT_COUNT
        ; --- PIIX4 PM (00:01.3): PMBA, then PMREGMISC.PMIOSE; power off there ---
        PIIX4_PM_ON PM_BASE
        mov dx, PM_BASE + 4
        mov ax, 1 << 13         ; SLP_EN, SLP_TYP 0
        out dx, ax
.spin:  jmp .spin
.bad:   mov al, 'E'
        call putc
        jmp .spin

        PUTC_FN

        times 0xff0 - ($ - $$) db 0
reset:  jmp start               ; 0xFFFFFFF0
        times 0x1000 - ($ - $$) db 0
