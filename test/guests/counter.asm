; Counts forever, printing "C<count in hex>" lines on com1. The count lives
; in a register and in memory, and they are compared on every round: after
; a restore both must have come back, and the count must go on from where
; the snapshot was taken.
%include "common.inc"
        bits 16
        org 0x1000
start:  xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        xor ebp, ebp
.loop:  inc ebp
        mov [count], ebp
        mov al, 'C'
        call putc
        mov eax, ebp
        mov cx, 8
.hex:   rol eax, 4
        push eax
        and al, 0x0f
        add al, '0'
        cmp al, '9'
        jbe .dig
        add al, 'a' - '9' - 1
.dig:   call putc
        pop eax
        loop .hex
        mov al, 10
        call putc
        mov ecx, 20000
.delay: dec ecx
        jnz .delay
        cmp ebp, [count]
        je .loop
        mov al, 'X'
        call putc
        POWEROFF

putc:   push ax
        push dx
        mov ah, al
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        mov al, ah
        mov dx, COM1
        out dx, al
        pop dx
        pop ax
        ret

count:  dd 0
