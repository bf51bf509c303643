; Counts forever, printing "C<count in hex>" lines on com1. The count lives
; in a register and in memory, and they are compared on every round: after
; a restore both must have come back, and the count must go on from where
; the snapshot was taken.
%include "common.inc"
        bits 16
        org 0x1000
start:  COUNTER_START
.loop:  inc ebp
        mov [count], ebp
        PRINT_COUNT
        mov ecx, 20000
.delay: dec ecx
        jnz .delay
        cmp ebp, [count]
        je .loop
        mov al, 'X'
        call putc
        POWEROFF

        PUTC_FN

count:  dd 0
