; Prints "T" lines on com1 forever, a busy-wait apart, for controller tests
; (pause, resume, stats): output that grows while the VM runs and stops
; while it is paused. It never halts: an emulated KVM cannot kick a vCPU
; halted with interrupts off.
%include "common.inc"
DELAY   equ 20000
        bits 16
        org 0x1000
start:  mov dx, COM1
.line:  mov al, 'T'
        out dx, al
        mov al, 10
        out dx, al
        mov ecx, DELAY
.wait:  dec ecx
        jnz .wait
        jmp .line
