/*
 * vireo firmware entry: reset vector -> real mode -> protected mode -> long mode.
 *
 * Assembled as part of main.rs (global_asm!, AT&T syntax). The braced names are
 * constants defined in main.rs, so the RAM layout and the stage bits have one source.
 *
 * Register use until Rust runs: %edi collects the STAGE_* bits of the stages passed and
 * becomes the first argument of firmware_main. Every stage also writes a POST code to
 * port 0x80 (01 real mode, 02 protected mode, 03 page tables built, 04 long mode).
 *
 * Only plain instructions are used (mov, in, out, lgdt, ljmp, rdmsr, wrmsr, mov crN):
 * on some hosts KVM runs this code in its instruction emulator.
 */

/* ---------------------------------------------------------------- 16-bit real mode */
    .section .text.entry16, "ax"
    .code16
    .globl entry16
entry16:
    cli
    cld
    movl ${STAGE_RESET}, %edi
    movb $0x01, %al
    outb %al, $0x80

    /* A20 through the fast A20 gate (port 0x92 bit 1; bit 0 would reset the CPU). */
    inb $0x92, %al
    orb $0x02, %al
    andb $0xfe, %al
    outb %al, $0x92
    inb $0x92, %al
    testb $0x02, %al
    jz 1f
    orl ${STAGE_A20}, %edi
1:
    /* CS is F000 (base 0xF0000) after the reset vector's far jump. */
    lgdtl %cs:(gdt_descriptor - 0xf0000)
    movl %cr0, %eax
    andl $0x9fffffff, %eax          /* caches on: clear CD and NW */
    orl $0x00000001, %eax           /* PE */
    movl %eax, %cr0
    ljmpl ${CODE32_SELECTOR}, $entry32

/* ---------------------------------------------------------- 32-bit protected mode */
    .section .text.entry32, "ax"
    .code32
entry32:
    movw ${DATA_SELECTOR}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    orl ${STAGE_PROTECTED}, %edi
    movb $0x02, %al
    outb %al, $0x80

    /* Clear the PML4 and the PDPT (two pages, 8 bytes per iteration). */
    xorl %eax, %eax
    movl ${PML4_ADDR}, %ebx
2:
    movl %eax, (%ebx)
    movl %eax, 4(%ebx)
    addl $8, %ebx
    cmpl ${PD_ADDR}, %ebx
    jne 2b

    /* PML4[0] -> PDPT; PDPT[0..4] -> the four page directories. */
    movl ${PDPT_ADDR} + 0x3, {PML4_ADDR}
    movl ${PD_ADDR} + 0x0003, {PDPT_ADDR}
    movl ${PD_ADDR} + 0x1003, {PDPT_ADDR} + 8
    movl ${PD_ADDR} + 0x2003, {PDPT_ADDR} + 16
    movl ${PD_ADDR} + 0x3003, {PDPT_ADDR} + 24

    /* 2048 PDEs of 2 MiB pages (present, writable, PS): identity map of 0..4 GiB. */
    movl ${PD_ADDR}, %ebx
    movl $0x83, %eax
3:
    movl %eax, (%ebx)
    movl $0, 4(%ebx)
    addl $0x200000, %eax
    addl $8, %ebx
    cmpl ${PD_END}, %ebx
    jne 3b
    orl ${STAGE_PAGING}, %edi
    movb $0x03, %al
    outb %al, $0x80

    /* CR3, CR4.PAE, EFER.LME, then CR0.PG activates long mode (compatibility). */
    movl ${PML4_ADDR}, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmpl ${CODE64_SELECTOR}, $entry64

/* ------------------------------------------------------------------- 64-bit mode */
    .section .text.entry64, "ax"
    .code64
entry64:
    movw ${DATA_SELECTOR}, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq ${STACK_TOP}, %rsp
    xorl %ebp, %ebp
    orl ${STAGE_LONG}, %edi
    movb $0x04, %al
    outb %al, $0x80

    /* Enable SSE (CR0.EM off, CR0.MP on, CR4.OSFXSR and CR4.OSXMMEXCPT on) as a
     * safety net: the code is kept free of vector instructions (a test disassembles
     * it, because KVM's instruction emulator lacks most of them), but should the
     * compiler or the precompiled core library emit some, they will not #UD. */
    movq %cr0, %rax
    andq $~0x4, %rax
    orq $0x2, %rax
    movq %rax, %cr0
    movq %cr4, %rax
    orq $0x600, %rax
    movq %rax, %cr4

    call firmware_main              /* firmware_main(stages: u32) -> ! */
4:
    cli
    hlt
    jmp 4b

/* Every CPU exception lands here (the IDT is built by main.rs): hand the stack to Rust. */
    .globl exception_entry
exception_entry:
    movq %rsp, %rdi
    andq $-16, %rsp
    call firmware_exception         /* firmware_exception(frame: *const u64) -> ! */
5:
    cli
    hlt
    jmp 5b

/* ------------------------------------------------------------------ GDT (in ROM) */
    .section .rodata.gdt, "a"
    .balign 16
gdt:
    .quad 0                         /* null */
    .quad 0x00cf9b000000ffff        /* CODE32_SELECTOR: 32-bit code, flat, accessed */
    .quad 0x00cf93000000ffff        /* DATA_SELECTOR: data, flat, accessed */
    .quad 0x00af9b000000ffff        /* CODE64_SELECTOR: 64-bit code (L=1), accessed */
gdt_end:
    /* The descriptors are marked accessed so the CPU never writes the ROM. */
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt

/* -------------------------------------------------- reset vector (0xFFFF0, in ROM) */
    .section .reset, "ax"
    .code16
    .globl reset_vector
reset_vector:
    ljmp $0xf000, $(entry16 - 0xf0000)
reset_vector_end:
    .fill 16 - (reset_vector_end - reset_vector), 1, 0xf4   /* pad to 16 bytes with hlt */

    .code64
    .section .text
