; Real -> protected -> long mode, the way a boot loader does it, printing
; from each mode; in long mode it reads an unbacked MMIO address (an MMIO
; exit served by the monitor: all-ones) and writes to it, then powers off.
%include "common.inc"
        bits 16
        org 0x1000
start:  cli
        xor ax, ax
        mov ds, ax
        mov ss, ax
        mov sp, 0x7000
        mov al, 'R'
        call putc16
        lgdt [gdtr]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        jmp 0x08:pm

putc16: mov bl, al
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        mov al, bl
        mov dx, COM1
        out dx, al
        ret

        bits 32
pm:     mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, 0x7000
        mov esi, msg_pm
        call puts32
        ; identity-map the first 1 GiB with 2 MiB pages at 0x10000
        mov edi, 0x10000
        xor eax, eax
        mov ecx, 3*4096/4
        rep stosd
        mov dword [0x10000], 0x11003      ; PML4[0] -> PDPT
        mov dword [0x11000], 0x12003      ; PDPT[0] -> PD
        mov edi, 0x12000
        mov eax, 0x83                     ; present, writable, 2 MiB
        mov ecx, 512
.pd:    mov [edi], eax
        add eax, 0x200000
        add edi, 8
        loop .pd
        mov eax, 0x10000
        mov cr3, eax
        mov eax, cr4
        or eax, 1 << 5                    ; PAE
        mov cr4, eax
        mov ecx, 0xc0000080               ; EFER
        rdmsr
        or eax, 1 << 8                    ; LME
        wrmsr
        mov eax, cr0
        or eax, 1 << 31                   ; PG
        mov cr0, eax
        jmp 0x18:lm

puts32: lodsb
        test al, al
        jz .d
        mov bl, al
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        mov al, bl
        mov dx, COM1
        out dx, al
        jmp puts32
.d:     ret

        bits 64
lm:     mov ax, 0x10
        mov ds, ax
        mov ss, ax
        mov rsp, 0x7000
        mov rsi, msg_lm
        call puts64
        mov rax, 0x3fe00000               ; inside the 1 GiB map, above guest RAM
        mov dword [rax], 0x12345678       ; MMIO write exit
        mov eax, [rax]                    ; MMIO read exit: unbacked reads all-ones
        cmp eax, 0xffffffff
        jne .bad
        mov rsi, msg_mmio
        call puts64
        POWEROFF
.bad:   mov rsi, msg_bad
        call puts64
        POWEROFF

puts64: lodsb
        test al, al
        jz .d
        mov bl, al
        mov dx, COM1+5
.w:     in al, dx
        test al, 0x20
        jz .w
        mov al, bl
        mov dx, COM1
        out dx, al
        jmp puts64
.d:     ret

        align 8
gdt:    dq 0
        dq 0x00cf9a000000ffff             ; 0x08: 32-bit code
        dq 0x00cf92000000ffff             ; 0x10: data
        dq 0x00af9a000000ffff             ; 0x18: 64-bit code
gdtr:   dw gdtr - gdt - 1
        dd gdt

msg_pm:   db "PROTECTED OK", 10, 0
msg_lm:   db "LONG OK", 10, 0
msg_mmio: db "MMIO OK", 10, 0
msg_bad:  db "MMIO BAD", 10, 0
