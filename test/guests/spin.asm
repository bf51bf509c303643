; Prints once, then spins without ever exiting: only a kick gets the vCPU out.
%include "common.inc"
        bits 16
        org 0x1000
start:  mov dx, COM1
        mov al, 'S'
        out dx, al
        mov al, 10
        out dx, al
.s:     jmp .s
