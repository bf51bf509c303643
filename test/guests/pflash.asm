; Drives the firmware flash as OVMF does, from 32-bit protected mode, with
; the 4 MiB layout (VARS at 0xffc00000, CODE from 0xffc84000 to 4 GiB): the
; probe, a byte program, a block erase, a write to CODE. Each read that
; follows a write comes right after it, so a write still in flight when the
; vCPU goes on would show. Prints the bytes read in hex on com1, then
; reads the first VARS page 64 times (read-array mode: memory, no exits),
; prints "D" and powers off.
%include "common.inc"
VARS    equ 0xffc00000
CODE    equ 0xffc84000
        bits 16
        org 0x1000
start:  ENTER_PM32
        mov ebx, VARS + 3
        mov al, [ebx]               ; the array: the store's byte 3
        call hex
        mov byte [ebx], 0x50        ; QemuFlashDetected: clear status...
        mov al, [ebx]               ; ...still the array
        call hex
        mov byte [ebx], 0x70        ; read status...
        mov al, [ebx]               ; ...0x00: flash
        call hex
        mov byte [ebx], 0xff
        mov ebx, VARS + 0x10        ; QemuFlashWrite of one byte
        mov byte [ebx], 0x10
        mov al, [ebx]               ; status while the program is pending: 0x00 (cleared by the probe, as in QEMU)
        call hex
        mov byte [ebx], 0xa5
        mov al, [ebx]               ; status after it: 0x80
        call hex
        mov byte [ebx], 0xff
        mov al, [ebx]               ; the array again: 0xa5
        call hex
        mov ebx, VARS + 0x1000      ; QemuFlashEraseBlock of block 1
        mov byte [ebx], 0x20
        mov byte [ebx], 0xd0
        mov al, [ebx]               ; status: 0x80
        call hex
        mov byte [ebx], 0xff
        mov al, [ebx + 0x7ff]       ; erased: 0xff
        call hex
        mov ebx, CODE + 0x100       ; CODE: the write is dropped
        mov byte [ebx], 0x20
        mov byte [ebx], 0xd0
        mov al, [ebx]
        call hex
        mov al, 10
        call putc
        mov ecx, 64                 ; read-array mode: reads are memory
.rd:    mov esi, VARS
        mov edx, 1024
.rw:    mov eax, [esi]
        add esi, 4
        dec edx
        jnz .rw
        loop .rd
        mov al, 'D'
        call putc
        mov al, 10
        call putc
        POWEROFF

; AL as two hex digits and a space.
hex:    push eax
        shr al, 4
        call nib
        pop eax
        call nib
        mov al, ' '
        jmp putc
nib:    and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe putc
        add al, 'a' - '9' - 1
putc:   push edx
        push eax
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        pop eax
        mov dx, COM1
        out dx, al
        pop edx
        ret

        FLAT_GDT
