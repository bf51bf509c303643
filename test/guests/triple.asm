; Enters protected mode, loads an empty IDT and divides by zero: neither the
; #DE nor the #GP/#DF that follow can be delivered, so the CPU shuts down
; (a triple fault: tshyve exits 3). Protected mode, because the host's
; software KVM does not model real-mode shutdown.
        bits 16
        org 0x1000
start:  cli
        xor ax, ax
        mov ds, ax
        lgdt [gdtr]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp 0x08:pm
        bits 32
pm:     mov ax, 0x10
        mov ds, ax
        mov ss, ax
        lidt [idtr]
        xor edx, edx
        xor ecx, ecx
        div ecx
        hlt
        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff             ; 0x08: 32-bit code
        dq 0x00cf92000000ffff             ; 0x10: data
gdtr:   dw gdtr - gdt - 1
        dd gdt
idtr:   dw 0
        dd 0
