; Real mode: print over com1 (polling LSR like a BIOS would), echo one
; input byte back, program the PIC and PIT and take three timer
; interrupts through HLT, read an unbacked MMIO address, then power off.
%include "common.inc"
        bits 16
        org 0x1000
start:  cli
        xor ax, ax
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov sp, 0x7000
        mov si, msg_hello
        call puts
        ; --- IRQ0 through the in-kernel PIC/PIT, woken from HLT ---
        mov word [8*4], tick          ; IVT entry 8 = IRQ0 with PIC base 8
        mov word [8*4+2], 0
        mov al, 0x11                  ; ICW1: edge, cascade, ICW4
        out 0x20, al
        mov al, 0x08                  ; ICW2: vector base 8
        out 0x21, al
        mov al, 0x04                  ; ICW3
        out 0x21, al
        mov al, 0x01                  ; ICW4: 8086 mode
        out 0x21, al
        mov al, 0xfe                  ; unmask IRQ0 only
        out 0x21, al
        mov al, 0x34                  ; PIT ch0, lo/hi, mode 2
        out 0x43, al
        mov ax, 11932                 ; ~100 Hz
        out 0x40, al
        mov al, ah
        out 0x40, al
        sti
.wait:  hlt
        cmp word [ticks], 3
        jb .wait
        cli
        mov si, msg_hlt
        call puts
        ; --- echo: wait for one byte on com1 and print it back ---
        mov si, msg_echo
        call puts
.rx:    mov dx, COM1+5
        in al, dx
        test al, 1
        jz .rx
        mov dx, COM1
        in al, dx
        call putc
        mov al, 10
        call putc
        POWEROFF

tick:   push ax
        inc word [ticks]
        mov al, 0x20
        out 0x20, al
        pop ax
        iret

; putc: AL to com1, waiting for THRE
putc:   push dx
        push ax
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        pop ax
        mov dx, COM1
        out dx, al
        pop dx
        ret
puts:   lodsb
        test al, al
        jz .done
        call putc
        jmp puts
.done:  ret

ticks:     dw 0
msg_hello: db "REAL OK", 10, 0
msg_hlt:   db "HLT OK", 10, 0
msg_echo:  db "ECHO:", 0
