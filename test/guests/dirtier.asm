; Keeps 128 pages of RAM (0x10000-0x8ffff) changing: each round writes the
; round number to two places in every one of them, reads them all back, then
; prints "C<round>".
; A live migration that missed a page it dirtied makes the check fail: the
; guest prints "X" and powers off. The round lives in a register and in
; memory too, as in counter.asm.
%include "common.inc"
        bits 16
        org 0x1000
PAGES   equ 128
start:  COUNTER_START
.loop:  inc ebp
        mov [count], ebp
        mov bx, 0x1000          ; segment of the first page
        mov cx, PAGES
.write: mov es, bx
        mov [es:0], ebp
        mov [es:0x800], ebp
        add bx, 0x100           ; next 4 KiB page
        loop .write
        mov bx, 0x1000
        mov cx, PAGES
.check: mov es, bx
        cmp [es:0], ebp
        jne .bad
        cmp [es:0x800], ebp
        jne .bad
        add bx, 0x100
        loop .check
        PRINT_COUNT
        cmp ebp, [count]
        je .loop
.bad:   mov al, 'X'
        call putc
        POWEROFF

        PUTC_FN

count:  dd 0
