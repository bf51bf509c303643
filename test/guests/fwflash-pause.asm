; A three-page firmware image with a one-page variable store below it (ROM
; plus store: 16 KiB, the flash's rule), for the snapshot test: from real
; mode with a 4 GiB data segment (unreal mode), it turns the PIIX4 PM block
; on at 0xB000, starts a byte program of the store (the command cycle),
; prints "P" and waits until the byte at 0x500 is set (the test sets it in
; the restored VM), then gives the data cycle, reads the status and, in
; read-array mode, the byte: prints "S" if the status is ready (0x80), "V"
; if the byte is the one programmed, and powers off. A restore that lost the
; flash's pending command or its store shows.
%include "common.inc"
        bits 16
        org 0xd000              ; CS base 0xffff0000: the image is CS:D000-CS:FFFF
VARS      equ 0xffffc000        ; the store, right below the image
PM_BASE   equ 0xb000
FLAG      equ 0x500
GDT       equ 0x600

start:  ROM_START
        mov byte [FLAG], 0
        ; unreal mode: DS gets a flat descriptor's 4 GiB limit... (the GDT in RAM:
        ; this host's emulated KVM does not load descriptors from the ROM's read-only slot)
        mov dword [GDT], 0
        mov dword [GDT + 4], 0
        mov dword [GDT + 8], 0x0000ffff     ; 0x08: flat 32-bit code (unused)
        mov dword [GDT + 12], 0x00cf9a00
        mov dword [GDT + 16], 0x0000ffff    ; 0x10: flat data
        mov dword [GDT + 20], 0x00cf9200
        mov word [GDT + 24], 23             ; the GDTR: limit...
        mov dword [GDT + 26], GDT           ; ...and base
        o32 lgdt [GDT + 24]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        mov bx, 0x10
        mov ds, bx
        and al, 0xfe
        mov cr0, eax            ; ...and keeps it back in real mode
        xor bx, bx
        mov ds, bx
        PIIX4_PM_ON PM_BASE
        mov ebx, VARS + 0x10
        mov byte [ebx], 0x10    ; program: the command cycle
        mov al, 'P'
        call putc
.wait:  cmp byte [FLAG], 0
        je .wait
        mov byte [ebx], 0xa5    ; the data cycle
        mov al, [ebx]           ; status
        cmp al, 0x80
        mov al, 'S'
        je .st
        mov al, 'x'
.st:    call putc
        mov byte [ebx], 0xff    ; read array
        mov al, [ebx]
        cmp al, 0xa5
        mov al, 'V'
        je .data
        mov al, 'x'
.data:  call putc
        mov al, 10
        call putc
        POWEROFF PM_BASE + 4

        PUTC_FN

        times 0x2ff0 - ($ - $$) db 0
reset:  jmp start               ; 0xFFFFFFF0
        times 0x3000 - ($ - $$) db 0
