; A one-page firmware image for the snapshot test: it turns the PIIX4 PM
; block on at 0xB000, reads the first two bytes of the fw_cfg signature,
; prints them and waits until the byte at 0x500 is set (the test sets it in
; the restored VM), then reads the next two, prints them and powers off: a
; restore that lost fw_cfg's offset or the PM block's place shows.
%include "common.inc"
        bits 16
        org 0xf000              ; CS base 0xffff0000: this page is CS:F000-CS:FFFF
FWCFG     equ 0x510
PM_BASE   equ 0xb000
FLAG      equ 0x500

start:  ROM_START
        mov byte [FLAG], 0
        PIIX4_PM_ON PM_BASE
        mov dx, FWCFG
        xor ax, ax
        out dx, ax              ; select FW_CFG_SIGNATURE
        call two
.wait:  cmp byte [FLAG], 0
        je .wait
        call two
        mov al, 10
        call putc
        POWEROFF PM_BASE + 4

two:    mov dx, FWCFG + 1       ; two data bytes to com1
        mov cx, 2
.b:     in al, dx
        call putc
        loop .b
        ret

        PUTC_FN

        times 0xff0 - ($ - $$) db 0
reset:  jmp start               ; 0xFFFFFFF0
        times 0x1000 - ($ - $$) db 0
