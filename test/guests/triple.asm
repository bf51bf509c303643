; Enters protected mode, loads an empty IDT and divides by zero: neither the
; #DE nor the #GP/#DF that follow can be delivered, so the CPU shuts down
; (a triple fault: tshyve exits 3). Protected mode, because the host's
; software KVM does not model real-mode shutdown.
%include "common.inc"
        bits 16
        org 0x1000
start:  ENTER_PM32
        lidt [idtr]
        xor edx, edx
        xor ecx, ecx
        div ecx
        hlt
        FLAT_GDT
idtr:   dw 0
        dd 0
