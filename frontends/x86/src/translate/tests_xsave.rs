//! XSAVE feature-set tests: guest code assembled with iced-x86 and run through the
//! translator and the IR interpreter. Expected layouts are built here from the SDM's
//! tables (vol. 1, 13.4-13.5: the legacy region in FXSAVE format, the header at 512,
//! XSTATE_BV/XCOMP_BV), expected header values and faults from the rules of 13.7-13.10
//! (XSAVE, XRSTOR, XSAVEOPT, XSAVEC) and the instruction pages; the host's own XSAVE
//! checks the legacy layout once more where it runs.

use super::tests::{asm64, load, machine, rd, run, run_with_data, End, CODE, DATA, M, PML4};
use crate::cpu::X86Cpu;
use crate::cpuid::{self, xsave_d1};
use iced_x86::code_asm::*;
use vireo_core::cpu::{ctl, FpuState};

/// XSAVE usable: CR4.OSFXSR/OSXMMEXCPT/OSXSAVE on, CR0.EM/TS off, XCR0 = x87 | SSE.
fn enable(cpu: &mut X86Cpu) {
    cpu.state.cr4 |= ctl::CR4_OSFXSR | ctl::CR4_OSXMMEXCPT | ctl::CR4_OSXSAVE;
    cpu.state.cr0 &= !(ctl::CR0_EM | ctl::CR0_TS);
    cpu.state.xcr0 = 3;
}

/// Runs 64-bit `code` with `data` at [`DATA`] (RBX), XSAVE enabled, EDX:EAX = all
/// ones, then `setup`.
fn run_xs(code: &[u8], data: &[u8], setup: impl FnOnce(&mut X86Cpu)) -> (X86Cpu, End) {
    run_with_data(code, data, |c| {
        enable(c);
        c.state.gpr[0] = u64::MAX;
        c.state.gpr[2] = u64::MAX;
        setup(c);
    })
}

/// A state in which no component is in its initial configuration (ST0 = physical
/// register 7 and ST1 = physical 0 valid, a precision flag masked, 48-bit FIP/FDP).
fn sample() -> FpuState {
    let mut f = FpuState {
        fcw: 0x027f,
        fsw: 0x3820,
        ftw: 0x81,
        fop: 0x5d3,
        fip: 0x1234_5678_9abc,
        fdp: 0x7654_3210_fedc,
        mxcsr: 0x1fa0,
        ..FpuState::default()
    };
    for (i, r) in f.st.iter_mut().enumerate() {
        for (j, b) in r.iter_mut().take(10).enumerate() {
            *b = (0x10 * i + j + 1) as u8;
        }
    }
    for (i, r) in f.xmm.iter_mut().enumerate() {
        for (j, b) in r.iter_mut().enumerate() {
            *b = (16 * i + j) as u8 ^ 0x5c;
        }
    }
    f.ymmh[0] = [0xee; 16];
    f
}

/// The first 416 bytes of the legacy region as SDM vol. 1 table 13-1 lays them out:
/// FCW, FSW, abridged FTW, FOP, FIP (32 bits + FCS, or 64 with REX.W), FDP likewise,
/// MXCSR, MXCSR_MASK (all of MXCSR's 16 bits, DAZ included), ST0-7 in 16-byte slots,
/// then `nxmm` XMM registers. FCS/FDS are not modelled: 0.
fn sdm_image(f: &FpuState, wide: bool, nxmm: usize) -> Vec<u8> {
    let mut b = vec![0u8; 416];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftw;
    b[6..8].copy_from_slice(&f.fop.to_le_bytes());
    if wide {
        b[8..16].copy_from_slice(&f.fip.to_le_bytes());
        b[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        b[8..12].copy_from_slice(&(f.fip as u32).to_le_bytes());
        b[16..20].copy_from_slice(&(f.fdp as u32).to_le_bytes());
    }
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    for i in 0..8 {
        b[32 + 16 * i..42 + 16 * i].copy_from_slice(&f.st[i][..10]);
    }
    for i in 0..nxmm {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(&f.xmm[i]);
    }
    b
}

fn bytes(cpu: &X86Cpu, at: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    cpu.bus.mem.read(at, &mut v).expect("read guest memory");
    v
}

/// `n` bytes of 0xA5 (a pattern no save writes).
fn fill(n: usize) -> Vec<u8> {
    vec![0xa5; n]
}

fn put64(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

#[test]
fn xsave_standard_layout() {
    // XSAVE and XSAVE64 of every component: the legacy region is the FXSAVE image;
    // XSTATE_BV keeps the bits outside RFBM; nothing else of the header, nor bytes
    // 416-511, is written.
    let code = asm64(|a| {
        a.xsave(ptr(rbx))?;
        a.xsave64(ptr(rbx + 0x400))?;
        a.fxsave(ptr(rbx + 0x800))?;
        Ok(())
    });
    let mut data = fill(0xc00);
    put64(&mut data, 512, 1 << 5);
    put64(&mut data, 0x400 + 512, 0);
    let (cpu, end) = run_xs(&code, &data, |c| c.state.fpu = sample());
    assert_eq!(end, End::Halt);
    let f = sample();
    assert_eq!(bytes(&cpu, DATA, 416), sdm_image(&f, false, 16));
    assert_eq!(bytes(&cpu, DATA + 0x400, 416), sdm_image(&f, true, 16));
    assert_eq!(
        bytes(&cpu, DATA, 416),
        bytes(&cpu, DATA + 0x800, 416),
        "= FXSAVE"
    );
    assert_eq!(bytes(&cpu, DATA + 416, 96), fill(96), "bytes 416-511");
    assert_eq!(rd(&cpu, DATA + 512, 8), 1 << 5 | 3, "XSTATE_BV");
    assert_eq!(rd(&cpu, DATA + 0x400 + 512, 8), 3);
    assert_eq!(
        bytes(&cpu, DATA + 520, 56),
        fill(56),
        "XCOMP_BV and the rest"
    );
    assert_eq!(bytes(&cpu, DATA + 576, 256), fill(256), "no AVX component");
    assert_eq!(cpu.state.fpu, f, "saving changes nothing");
}

#[test]
fn xsave_saves_only_rfbm_components() {
    // EDX:EAX = 1: x87 only (bytes 0-23, 32-159); = 2: SSE only (MXCSR and the XMM
    // registers); = 4: AVX, not in XCR0, so nothing but the header is rewritten.
    let code = asm64(|a| {
        a.mov(eax, 1)?;
        a.xsave(ptr(rbx))?;
        a.mov(eax, 2)?;
        a.xsave(ptr(rbx + 0x400))?;
        a.mov(eax, 4)?;
        a.xsave(ptr(rbx + 0x800))?;
        Ok(())
    });
    let mut data = fill(0xc00);
    for area in [0, 0x400, 0x800] {
        put64(&mut data, area + 512, 0);
    }
    let (cpu, end) = run_xs(&code, &data, |c| {
        c.state.fpu = sample();
        c.state.gpr[2] = 0;
    });
    assert_eq!(end, End::Halt);
    let img = sdm_image(&sample(), false, 16);
    let x87 = bytes(&cpu, DATA, 416);
    assert_eq!(x87[..24], img[..24]);
    assert_eq!(x87[32..160], img[32..160]);
    assert_eq!(x87[24..32], fill(8)[..], "MXCSR belongs to SSE");
    assert_eq!(x87[160..], fill(256)[..]);
    assert_eq!(rd(&cpu, DATA + 512, 8), 1);
    let sse = bytes(&cpu, DATA + 0x400, 416);
    assert_eq!(sse[..24], fill(24)[..]);
    assert_eq!(sse[24..32], img[24..32]);
    assert_eq!(sse[32..160], fill(128)[..]);
    assert_eq!(sse[160..], img[160..]);
    assert_eq!(rd(&cpu, DATA + 0x400 + 512, 8), 2);
    assert_eq!(bytes(&cpu, DATA + 0x800, 512), fill(512));
    assert_eq!(rd(&cpu, DATA + 0x800 + 512, 8), 0);
}

#[test]
fn xstate_bv_follows_init_state() {
    // From the RESET state (both components initial): XSTATE_BV = 0, yet XSAVE still
    // writes the components. Then MXCSR = 1FC0h (SSE in use), back to 1F80h with an
    // XMM9 set in 64-bit mode (SSE in use: XSAVEOPT, which sets the RFBM bits the
    // same way and keeps the others), then XMM9 cleared and an x87 register loaded.
    let code = asm64(|a| {
        a.xsave(ptr(rbx))?;
        a.ldmxcsr(dword_ptr(rbx + 0x1000))?;
        a.xsave(ptr(rbx + 0x400))?;
        a.ldmxcsr(dword_ptr(rbx + 0x1004))?;
        a.movq(xmm9, rbx)?;
        a.xsaveopt(ptr(rbx + 0xc00))?;
        a.pxor(xmm9, xmm9)?;
        a.fld1()?;
        a.xsave(ptr(rbx + 0x800))?;
        Ok(())
    });
    let mut data = fill(0x1008);
    for area in [0, 0x400, 0x800] {
        put64(&mut data, area + 512, u64::MAX);
    }
    put64(&mut data, 0xc00 + 512, 0x81);
    data[0x1000..0x1004].copy_from_slice(&0x1fc0u32.to_le_bytes());
    data[0x1004..0x1008].copy_from_slice(&0x1f80u32.to_le_bytes());
    let (cpu, end) = run_xs(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(rd(&cpu, DATA + 512, 8), !3, "both initial");
    assert_eq!(rd(&cpu, DATA, 2), 0x037f, "x87 written anyway");
    assert_eq!(rd(&cpu, DATA + 24, 4), 0x1f80);
    assert_eq!(rd(&cpu, DATA + 0x400 + 512, 8), !1, "MXCSR != 1F80h");
    assert_eq!(rd(&cpu, DATA + 0x800 + 512, 8), !2, "x87 in use");
    assert_eq!(rd(&cpu, DATA + 0xc00 + 512, 8), 0x80 | 2, "XSAVEOPT");
    assert_eq!(rd(&cpu, DATA + 0xc00 + 160 + 9 * 16, 8), DATA);
}

#[test]
fn xsavec_compacted_format() {
    // Initial x87 state, XMM1 set: XSAVEC writes XSTATE_BV = 2 (whole, not merged),
    // XCOMP_BV = 8000_0000_0000_0003h, the SSE component (MXCSR with it) and nothing
    // of the x87 component (init optimisation) nor of the rest of the header.
    let code = asm64(|a| {
        a.movq(xmm1, rbx)?;
        a.xsavec(ptr(rbx))?;
        // x87 only: XCOMP_BV = RFBM = 1.
        a.fld1()?;
        a.mov(eax, 1)?;
        a.xsavec(ptr(rbx + 0x400))?;
        // MXCSR other than 1F80h with zero XMM registers: SSE saved, XSTATE_BV[1] = 1.
        a.pxor(xmm1, xmm1)?;
        a.ldmxcsr(dword_ptr(rbx + 0x1000))?;
        a.mov(eax, 2)?;
        a.xsavec(ptr(rbx + 0x800))?;
        Ok(())
    });
    let mut data = fill(0x1004);
    data[0x1000..].copy_from_slice(&0x1f00u32.to_le_bytes());
    let (cpu, end) = run_xs(&code, &data, |_| {});
    assert_eq!(end, End::Halt);
    let a = bytes(&cpu, DATA, 576);
    assert_eq!(a[..24], fill(24)[..], "x87 initial: not saved");
    assert_eq!(a[32..160], fill(128)[..]);
    assert_eq!(rd(&cpu, DATA + 24, 4), 0x1f80, "MXCSR with SSE");
    assert_eq!(rd(&cpu, DATA + 28, 4), 0xffff, "MXCSR_MASK");
    assert_eq!(rd(&cpu, DATA + 160 + 16, 8), DATA, "XMM1");
    assert_eq!(rd(&cpu, DATA + 160, 8), 0, "XMM0");
    assert_eq!(a[416..512], fill(96)[..]);
    assert_eq!(rd(&cpu, DATA + 512, 8), 2, "XSTATE_BV");
    assert_eq!(rd(&cpu, DATA + 520, 8), 0x8000_0000_0000_0003, "XCOMP_BV");
    assert_eq!(a[528..], fill(48)[..], "header bytes 16-63");
    let b = bytes(&cpu, DATA + 0x400, 576);
    assert_eq!(rd(&cpu, DATA + 0x400, 2), 0x037f, "x87 saved");
    assert_eq!(rd(&cpu, DATA + 0x400 + 2, 2), 7 << 11, "TOP = 7");
    assert_eq!(b[24..32], fill(8)[..], "no MXCSR without SSE");
    assert_eq!(b[160..416], fill(256)[..]);
    assert_eq!(rd(&cpu, DATA + 0x400 + 512, 8), 1);
    assert_eq!(rd(&cpu, DATA + 0x400 + 520, 8), 0x8000_0000_0000_0001);
    assert_eq!(rd(&cpu, DATA + 0x800 + 512, 8), 2);
    assert_eq!(rd(&cpu, DATA + 0x800 + 520, 8), 0x8000_0000_0000_0002);
    assert_eq!(rd(&cpu, DATA + 0x800 + 24, 4), 0x1f00);
    assert_eq!(bytes(&cpu, DATA + 0x800 + 160, 256), vec![0u8; 256]);
}

#[test]
fn xrstor_round_trips() {
    // XSAVE then XRSTOR, XSAVEC then XRSTOR (compacted form), XSAVE64/XRSTOR64 (full
    // FIP/FDP; the 32-bit forms keep their low halves), each after clobbering.
    let clobber = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        a.fninit()?;
        a.fld1()?;
        a.pcmpeqb(xmm3, xmm3)?;
        a.pxor(xmm12, xmm12)?;
        a.ldmxcsr(dword_ptr(rbx + 0x1000))
    };
    for (save, wide) in [(0, false), (1, false), (0, true)] {
        let code = asm64(|a| {
            match (save, wide) {
                (0, false) => a.xsave(ptr(rbx))?,
                (1, _) => a.xsavec(ptr(rbx))?,
                _ => a.xsave64(ptr(rbx))?,
            }
            clobber(a)?;
            if wide {
                a.xrstor64(ptr(rbx))
            } else {
                a.xrstor(ptr(rbx))
            }
        });
        let mut data = fill(0x1004);
        put64(&mut data, 512, 0);
        put64(&mut data, 520, 0);
        data[528..576].fill(0);
        data[0x1000..].copy_from_slice(&0x1f80u32.to_le_bytes());
        let (cpu, end) = run_xs(&code, &data, |c| c.state.fpu = sample());
        assert_eq!(end, End::Halt, "{save} {wide}");
        let mut want = sample();
        if !wide {
            want.fip &= 0xffff_ffff;
            want.fdp &= 0xffff_ffff;
        }
        assert_eq!(cpu.state.fpu, want, "{save} {wide}");
    }
}

/// Runs `code` (RBX = the area at [`DATA`] holding `legacy` and `header`) from the
/// sample state with EDX:EAX = `mask`.
fn restore_from(
    code: &[u8],
    legacy: &[u8],
    header: &[u8],
    mask: u64,
    setup: impl FnOnce(&mut X86Cpu),
) -> (X86Cpu, End) {
    let mut data = vec![0u8; 0x500];
    data[..legacy.len()].copy_from_slice(legacy);
    data[512..512 + header.len()].copy_from_slice(header);
    run_xs(code, &data, |c| {
        c.state.fpu = sample();
        c.state.gpr[0] = mask & 0xffff_ffff;
        c.state.gpr[2] = mask >> 32;
        setup(c);
    })
}

fn header(xstate_bv: u64, xcomp_bv: u64) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    put64(&mut h, 0, xstate_bv);
    put64(&mut h, 8, xcomp_bv);
    h
}

/// A legacy region of 0x5A bytes with MXCSR = `mxcsr`.
fn garbage_legacy(mxcsr: u32) -> Vec<u8> {
    let mut l = vec![0x5a; 512];
    l[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    l
}

/// The x87 part of the initial configuration (SDM 13.6).
fn x87_initial(f: &mut FpuState) {
    f.fcw = 0x037f;
    f.fsw = 0;
    f.ftw = 0;
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
    f.st = [[0; 16]; 8];
}

#[test]
fn xrstor_initialises_components_with_xstate_bv_clear() {
    let code = asm64(|a| a.xrstor(ptr(rbx)));
    // Standard form, XSTATE_BV = 0: x87 and XMM0-15 initialised, MXCSR loaded from
    // memory all the same (RFBM[1] set), YMM upper halves untouched (not in XCR0).
    let (cpu, end) = restore_from(&code, &garbage_legacy(0x1f00), &header(0, 0), !0, |_| {});
    assert_eq!(end, End::Halt);
    let mut want = sample();
    x87_initial(&mut want);
    want.xmm = [[0; 16]; 16];
    want.mxcsr = 0x1f00;
    assert_eq!(cpu.state.fpu, want);
    // Compacted form, XSTATE_BV = 0 and XCOMP_BV with no component: MXCSR = 1F80h.
    let (cpu, end) = restore_from(
        &code,
        &garbage_legacy(0x1f00),
        &header(0, 1 << 63),
        !0,
        |_| {},
    );
    assert_eq!(end, End::Halt);
    want.mxcsr = 0x1f80;
    assert_eq!(cpu.state.fpu, want);
    // RFBM = x87 only: SSE state (MXCSR included) untouched, x87 loaded.
    let mut legacy = sdm_image(&FpuState::default(), false, 16);
    legacy[..2].copy_from_slice(&0x0c7fu16.to_le_bytes());
    legacy[24..28].copy_from_slice(&0x1f00u32.to_le_bytes());
    let (cpu, end) = restore_from(&code, &legacy, &header(3, 0), 1, |_| {});
    assert_eq!(end, End::Halt);
    let mut want = sample();
    x87_initial(&mut want);
    want.fcw = 0x0c7f;
    assert_eq!(cpu.state.fpu, want);
    // XSTATE_BV = x87 with RFBM = x87 | SSE: XMM registers zeroed, MXCSR loaded.
    let (cpu, end) = restore_from(&code, &legacy, &header(1, 0), 3, |_| {});
    assert_eq!(end, End::Halt);
    want.xmm = [[0; 16]; 16];
    want.mxcsr = 0x1f00;
    assert_eq!(cpu.state.fpu, want);
    // Compacted, XSTATE_BV = SSE: x87 initialised (XCOMP_BV[0] = 0 does not matter),
    // SSE and MXCSR loaded; then XSTATE_BV = x87: SSE initialised, MXCSR = 1F80h.
    let (cpu, end) = restore_from(&code, &legacy, &header(2, 1 << 63 | 2), 3, |_| {});
    assert_eq!(end, End::Halt);
    let mut want = sample();
    x87_initial(&mut want);
    want.xmm = [[0; 16]; 16];
    want.mxcsr = 0x1f00;
    assert_eq!(cpu.state.fpu, want);
    let (cpu, end) = restore_from(&code, &legacy, &header(1, 1 << 63 | 1), 3, |_| {});
    assert_eq!(end, End::Halt);
    want.fcw = 0x0c7f;
    want.mxcsr = 0x1f80;
    assert_eq!(cpu.state.fpu, want);
}

#[test]
fn xrstor_faults_leave_the_state_alone() {
    let code = asm64(|a| a.xrstor(ptr(rbx)));
    let misaligned = asm64(|a| a.xrstor(ptr(rbx + 16)));
    let ok = garbage_legacy(0x1f80);
    let hdr_byte = |at: usize, xcomp: u64| {
        let mut h = header(0, xcomp);
        h[at] = 1;
        h
    };
    // (name, code, legacy region, header, EDX:EAX): #GP(0) with the state unchanged.
    let faults = |name: &str, code: &[u8], legacy: &[u8], hdr: &[u8], mask: u64| {
        let (cpu, end) = restore_from(code, legacy, hdr, mask, |_| {});
        assert_eq!(end, End::Fault(13, Some(0)), "{name}");
        assert_eq!(cpu.state.fpu, sample(), "{name}");
        assert_eq!(cpu.state.rip, CODE, "{name}");
    };
    let runs = |name: &str, legacy: &[u8], hdr: &[u8], mask: u64| {
        let (_, end) = restore_from(&code, legacy, hdr, mask, |_| {});
        assert_eq!(end, End::Halt, "{name}");
    };
    faults("misaligned", &misaligned, &ok, &header(3, 0), !0);
    faults("XSTATE_BV not in XCR0", &code, &ok, &header(4, 0), !0);
    faults("... whatever RFBM", &code, &ok, &header(4, 0), 1);
    faults("XCOMP_BV without bit 63", &code, &ok, &header(0, 1), !0);
    faults("header byte 16", &code, &ok, &hdr_byte(16, 0), !0);
    faults("header byte 23", &code, &ok, &hdr_byte(23, 0), !0);
    runs("standard: bytes 24-63 ignored", &ok, &hdr_byte(24, 0), !0);
    faults("compacted: byte 40", &code, &ok, &hdr_byte(40, 1 << 63), !0);
    faults(
        "compacted: XCOMP_BV[2]",
        &code,
        &ok,
        &header(0, 1 << 63 | 4),
        !0,
    );
    let not_subset = header(3, 1 << 63 | 1);
    faults(
        "compacted: XSTATE_BV ⊄ XCOMP_BV",
        &code,
        &ok,
        &not_subset,
        !0,
    );
    let bad_mxcsr = garbage_legacy(1 << 16);
    faults("MXCSR reserved bit", &code, &bad_mxcsr, &header(0, 0), !0);
    runs("MXCSR not loaded", &bad_mxcsr, &header(0, 0), 1);
    // The compacted form needs CPUID.(0Dh,1):EAX.XSAVEC.
    let (cpu, end) = restore_from(&code, &ok, &header(0, 1 << 63), !0, |c| {
        c.cpuid.xsave_d1 &= !xsave_d1::XSAVEC;
    });
    assert_eq!(end, End::Fault(13, Some(0)));
    assert_eq!(cpu.state.fpu, sample());
}

#[test]
fn ud_and_nm_rules() {
    let xsave = asm64(|a| a.xsave(ptr(rbx)));
    let xrstor = asm64(|a| a.xrstor(ptr(rbx)));
    let xsaveopt = asm64(|a| a.xsaveopt(ptr(rbx)));
    let xsavec = asm64(|a| a.xsavec(ptr(rbx)));
    let xgetbv = asm64(|a| {
        a.xor(ecx, ecx)?;
        a.xgetbv()
    });
    let xsetbv = asm64(|a| {
        a.xor(ecx, ecx)?;
        a.mov(eax, 3)?;
        a.xor(edx, edx)?;
        a.xsetbv()
    });
    let misaligned = asm64(|a| a.xsave(ptr(rbx + 8)));
    let mut area = vec![0u8; 576];
    area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    let go = |code: &[u8], f: &dyn Fn(&mut X86Cpu)| run_xs(code, &area, f).1;
    let no_osxsave = |c: &mut X86Cpu| c.state.cr4 &= !ctl::CR4_OSXSAVE;
    let ts = |c: &mut X86Cpu| c.state.cr0 |= ctl::CR0_TS;
    for code in [&xsave, &xrstor, &xsaveopt, &xsavec, &xgetbv, &xsetbv] {
        assert_eq!(go(code, &no_osxsave), End::Fault(6, None));
        // #UD comes before #NM.
        assert_eq!(
            go(code, &|c| {
                no_osxsave(c);
                ts(c)
            }),
            End::Fault(6, None)
        );
    }
    for code in [&xsave, &xrstor, &xsaveopt, &xsavec] {
        assert_eq!(go(code, &ts), End::Fault(7, None));
        // CR0.EM does not matter.
        assert_eq!(go(code, &|c| c.state.cr0 |= ctl::CR0_EM), End::Halt);
    }
    // XGETBV and XSETBV ignore CR0.TS.
    assert_eq!(go(&xgetbv, &ts), End::Halt);
    assert_eq!(go(&xsetbv, &ts), End::Halt);
    // #NM before the alignment #GP.
    assert_eq!(go(&misaligned, &ts), End::Fault(7, None));
    assert_eq!(go(&misaligned, &|_| {}), End::Fault(13, Some(0)));
    // Instructions the model does not advertise.
    let no_opt = |c: &mut X86Cpu| c.cpuid.xsave_d1 &= !xsave_d1::XSAVEOPT;
    assert_eq!(go(&xsaveopt, &no_opt), End::Fault(6, None));
    let no_c = |c: &mut X86Cpu| c.cpuid.xsave_d1 &= !xsave_d1::XSAVEC;
    assert_eq!(go(&xsavec, &no_c), End::Fault(6, None));
    let no_xsave = |c: &mut X86Cpu| c.cpuid.ecx1 &= !cpuid::ecx1::XSAVE;
    assert_eq!(go(&xsave, &no_xsave), End::Fault(6, None));
    // LOCK, 66h, F2h or F3h with XSAVE [rbx] (or XRSTOR [rbx]): #UD.
    for p in [0xf0, 0x66, 0xf2, 0xf3] {
        for reg in [0x23, 0x2b] {
            let (_, end) = run_xs(&[p, 0x0f, 0xae, reg, 0xf4], &area, |_| {});
            assert_eq!(end, End::Fault(6, None), "{p:#x} {reg:#x}");
        }
    }
    // XSAVES/XRSTORS are not offered: #UD.
    let xsaves = asm64(|a| a.xsaves(ptr(rbx)));
    assert_eq!(go(&xsaves, &|_| {}), End::Fault(6, None));
    let xrstors = asm64(|a| a.xrstors(ptr(rbx)));
    assert_eq!(go(&xrstors, &|_| {}), End::Fault(6, None));
}

/// Drops `cpu` to CPL 3 (64-bit code and data at DPL 3).
fn user(cpu: &mut X86Cpu) {
    for s in cpu.state.seg.iter_mut() {
        s.dpl = 3;
        s.selector |= 3;
    }
}

#[test]
fn xgetbv_and_xsetbv() {
    let xgetbv = |n: u32| {
        asm64(move |a| {
            a.mov(ecx, n)?;
            a.xgetbv()
        })
    };
    // ECX = 0: XCR0. ECX = 1: XCR0 AND XINUSE (x87 in use after FLD1; SSE initial).
    let (cpu, end) = run_xs(&xgetbv(0), &[], |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!((cpu.state.gpr[0], cpu.state.gpr[2]), (3, 0));
    let code = asm64(|a| {
        a.fld1()?;
        a.mov(ecx, 1)?;
        a.xgetbv()
    });
    let (cpu, end) = run_xs(&code, &[], |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!((cpu.state.gpr[0], cpu.state.gpr[2]), (1, 0));
    // A MXCSR other than 1F80h sets XINUSE[1]; XCR0 = 1 masks it.
    let (cpu, _) = run_xs(&xgetbv(1), &[], |c| c.state.fpu.mxcsr = 0x9f80);
    assert_eq!(cpu.state.gpr[0], 2);
    let (cpu, _) = run_xs(&xgetbv(1), &[], |c| {
        c.state.fpu.mxcsr = 0x9f80;
        c.state.xcr0 = 1;
    });
    assert_eq!(cpu.state.gpr[0], 0);
    // Other XCRs, or ECX = 1 without XGETBV1: #GP(0). XGETBV runs at CPL 3.
    assert_eq!(run_xs(&xgetbv(2), &[], |_| {}).1, End::Fault(13, Some(0)));
    let no_getbv1 = |c: &mut X86Cpu| c.cpuid.xsave_d1 &= !xsave_d1::XGETBV1;
    assert_eq!(
        run_xs(&xgetbv(1), &[], no_getbv1).1,
        End::Fault(13, Some(0))
    );
    let (cpu, end) = run_xs(&xgetbv(0), &[], user);
    // (The final HLT faults at CPL 3, after XGETBV.)
    assert_eq!(end, End::Fault(13, Some(0)));
    assert_eq!(cpu.state.gpr[0], 3);
    assert_ne!(cpu.state.rip, CODE);

    let xsetbv = |c: u32, d: u32, v: u32| {
        asm64(move |a| {
            a.mov(ecx, c)?;
            a.mov(edx, d)?;
            a.mov(eax, v)?;
            a.xsetbv()
        })
    };
    let (cpu, end) = run_xs(&xsetbv(0, 0, 1), &[], |_| {});
    assert_eq!(end, End::Halt);
    assert_eq!(cpu.state.xcr0, 1);
    for (c, d, v, why) in [
        (0, 0, 2, "x87 bit clear"),
        (0, 0, 7, "AVX not supported"),
        (0, 1, 3, "bit 32"),
        (1, 0, 3, "XCR1"),
    ] {
        let (cpu, end) = run_xs(&xsetbv(c, d, v), &[], |_| {});
        assert_eq!(end, End::Fault(13, Some(0)), "{why}");
        assert_eq!(cpu.state.xcr0, 3, "{why}");
    }
    // CPL 3: #GP(0); but #UD first without CR4.OSXSAVE.
    let (cpu, end) = run_xs(&xsetbv(0, 0, 1), &[], user);
    assert_eq!(end, End::Fault(13, Some(0)));
    assert_eq!((cpu.state.xcr0, cpu.state.rip), (3, CODE + 15));
    let (_, end) = run_xs(&xsetbv(0, 0, 1), &[], |c| {
        user(c);
        c.state.cr4 &= !ctl::CR4_OSXSAVE;
    });
    assert_eq!(end, End::Fault(6, None));
}

#[test]
fn cpuid_leaf_0d() {
    let m = cpuid::CpuidModel::default();
    let osxsave = ctl::CR4_OSXSAVE;
    // CPUID.1:ECX: XSAVE (bit 26) always, OSXSAVE (bit 27) as CR4.OSXSAVE.
    assert_eq!(m.query(1, 0, 0, 1)[2] >> 26 & 3, 1);
    assert_eq!(m.query(1, 0, osxsave, 1)[2] >> 26 & 3, 3);
    assert!(m.max_leaf >= 0xd);
    // x87 and SSE: 576 bytes (legacy region and header) whatever XCR0 enables.
    assert_eq!(m.query(0xd, 0, osxsave, 3), [3, 576, 576, 0]);
    assert_eq!(m.query(0xd, 0, osxsave, 1), [3, 576, 576, 0]);
    // XSAVEOPT, XSAVEC, XGETBV(1); no XSAVES, no supervisor state.
    assert_eq!(m.query(0xd, 1, osxsave, 3), [7, 576, 0, 0]);
    assert_eq!(m.query(0xd, 2, osxsave, 3), [0; 4]);
    assert_eq!(m.query(0xd, 63, osxsave, 3), [0; 4]);
    // A model with AVX state (as a KVM host's): sizes follow XCR0; component 2 is
    // 256 bytes at 576 (the values of every AVX processor).
    let avx = cpuid::CpuidModel {
        xcr0_supported: 7,
        ..cpuid::CpuidModel::default()
    };
    assert_eq!(avx.query(0xd, 0, osxsave, 3), [7, 0x240, 0x340, 0]);
    assert_eq!(avx.query(0xd, 0, osxsave, 7), [7, 0x340, 0x340, 0]);
    assert_eq!(avx.query(0xd, 1, osxsave, 7), [7, 0x340, 0, 0]);
    assert_eq!(avx.query(0xd, 2, osxsave, 7), [0x100, 0x240, 0, 0]);
    // Through the guest: CPUID.(0Dh,0):EBX after XSETBV.
    let code = asm64(|a| {
        a.xor(ecx, ecx)?;
        a.xor(edx, edx)?;
        a.mov(eax, 7)?;
        a.xsetbv()?;
        a.mov(eax, 0xd)?;
        a.xor(ecx, ecx)?;
        a.cpuid()
    });
    let (cpu, end) = run_xs(&code, &[], |c| c.cpuid.xcr0_supported = 7);
    assert_eq!(end, End::Halt);
    assert_eq!(cpu.state.xcr0, 7);
    assert_eq!(cpu.state.gpr[3], 0x340);
}

#[test]
fn outside_64_bit_mode_xmm8_15_are_left_alone() {
    // 32-bit protected mode: XSAVE writes XMM0-7 only; XRSTOR initialises XMM0-7
    // only; XMM8-15 do not count for XSTATE_BV.
    let mut a = CodeAssembler::new(32).expect("assembler");
    a.xsave(ptr(ebx)).expect("asm");
    a.xrstor(ptr(ebx + 0x400)).expect("asm");
    a.hlt().expect("asm");
    let code = a.assemble(CODE).expect("assemble");
    let mut cpu = machine(M::Prot32, &code);
    let mut data = fill(0x400);
    put64(&mut data, 512, 0);
    data.resize(0x400 + 576, 0);
    data[0x400 + 24..0x400 + 28].copy_from_slice(&0x1f80u32.to_le_bytes());
    load(&cpu, DATA, &data);
    enable(&mut cpu);
    cpu.state.gpr[0] = 3;
    cpu.state.gpr[2] = 0;
    cpu.state.gpr[3] = DATA;
    cpu.state.fpu.xmm[8] = [0x88; 16];
    assert_eq!(run(&mut cpu, 100), End::Halt);
    assert_eq!(rd(&cpu, DATA + 512, 8), 0, "XMM8 not counted");
    assert_eq!(
        bytes(&cpu, DATA + 288, 128),
        fill(128),
        "XMM8-15 not written"
    );
    assert_eq!(cpu.state.fpu.xmm[8], [0x88; 16]);
}

#[test]
fn page_faults_write_or_load_nothing() {
    // The header lies on a non-present 2 MiB page: neither XSAVE nor XRSTOR changes
    // anything in the first page or in the state.
    let area = 0x1f_fe00u64;
    let code = asm64(|a| {
        a.mov(rbx, area)?;
        a.xsave(ptr(rbx))
    });
    let mut cpu = machine(M::Long64, &code);
    load(&cpu, area, &fill(512));
    load(&cpu, PML4 + 0x2000 + 8, &[0; 8]);
    enable(&mut cpu);
    cpu.state.gpr[0] = 3;
    cpu.state.fpu = sample();
    let end = run(&mut cpu, 10);
    assert!(
        matches!(end, End::Fault(14, Some(e)) if e & 3 == 2),
        "{end:?}"
    );
    assert_eq!(bytes(&cpu, area, 512), fill(512));
    let code = asm64(|a| {
        a.mov(rbx, area)?;
        a.xrstor(ptr(rbx))
    });
    let mut cpu = machine(M::Long64, &code);
    load(&cpu, PML4 + 0x2000 + 8, &[0; 8]);
    enable(&mut cpu);
    cpu.state.gpr[0] = 3;
    cpu.state.fpu = sample();
    assert!(matches!(run(&mut cpu, 10), End::Fault(14, _)));
    assert_eq!(cpu.state.fpu, sample());
}

#[test]
fn avx_component_when_xcr0_has_it() {
    // A state from KVM may enable AVX in XCR0: the YMM upper halves are component 2,
    // at 576 in both formats (the first extended component); XSAVE saves MXCSR for
    // RFBM[2] alone; XRSTOR initialises or loads them.
    let code = asm64(|a| {
        a.mov(eax, 4)?;
        a.xsave(ptr(rbx))?;
        a.mov(eax, 7)?;
        a.xsavec(ptr(rbx + 0x400))?;
        a.xrstor(ptr(rbx + 0x800))?;
        Ok(())
    });
    let mut data = fill(0xc00);
    put64(&mut data, 512, 0);
    data[0x800..].fill(0);
    data[0x800 + 24..0x800 + 28].copy_from_slice(&0x1f80u32.to_le_bytes());
    put64(&mut data, 0x800 + 512, 4);
    data[0x800 + 576 + 16..0x800 + 576 + 32].fill(0x77);
    let (cpu, end) = run_xs(&code, &data, |c| {
        c.cpuid.xcr0_supported = 7;
        c.state.xcr0 = 7;
        c.state.fpu = sample();
        c.state.gpr[2] = 0;
    });
    assert_eq!(end, End::Halt);
    assert_eq!(
        bytes(&cpu, DATA + 576, 16),
        vec![0xee; 16],
        "YMM0 upper half"
    );
    assert_eq!(bytes(&cpu, DATA + 592, 240), vec![0; 240]);
    assert_eq!(rd(&cpu, DATA + 24, 4), 0x1fa0, "MXCSR with RFBM[2]");
    assert_eq!(bytes(&cpu, DATA, 24), fill(24));
    assert_eq!(rd(&cpu, DATA + 512, 8), 4);
    assert_eq!(rd(&cpu, DATA + 0x400 + 512, 8), 7);
    assert_eq!(rd(&cpu, DATA + 0x400 + 520, 8), 1 << 63 | 7);
    assert_eq!(bytes(&cpu, DATA + 0x400 + 576, 16), vec![0xee; 16]);
    // The restore: x87 and SSE initialised, YMM1's upper half loaded, MXCSR loaded.
    let mut want = sample();
    x87_initial(&mut want);
    want.xmm = [[0; 16]; 16];
    want.mxcsr = 0x1f80;
    want.ymmh = [[0; 16]; 16];
    want.ymmh[1] = [0x77; 16];
    assert_eq!(cpu.state.fpu, want);
}

/// The host's XSAVE (x87 and SSE only) of a state loaded with FXRSTOR64 from the
/// SDM image, against TCG's XSAVE of the same state. FIP/FDP/FOP are zero (AMD
/// stores them only with a pending exception) and MXCSR_MASK is skipped (it reports
/// the host's MXCSR features).
#[test]
fn legacy_region_matches_the_host() {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return;
    }
    let mut f = sample();
    f.fip = 0;
    f.fdp = 0;
    f.fop = 0;
    #[repr(C, align(64))]
    struct Area([u8; 1024]);
    let mut img = Area([0; 1024]);
    img.0[..416].copy_from_slice(&sdm_image(&f, true, 16));
    let mut saved = Area([0; 1024]);
    let mut host = Area([0; 1024]);
    // SAFETY: the three areas are 64-byte aligned and large enough for FXSAVE and
    // for XSAVE of x87 and SSE state (EDX:EAX = 3, 576 bytes); the block saves the
    // thread's x87/SSE state first and restores it last, so the surrounding code
    // sees its registers and MXCSR unchanged.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{img}]",
            "xsave64 [{host}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            img = in(reg) img.0.as_ptr(),
            host = in(reg) host.0.as_mut_ptr(),
            in("eax") 3u32,
            in("edx") 0u32,
            options(nostack),
        );
    }
    let code = asm64(|a| a.xsave64(ptr(rbx)));
    let (cpu, end) = run_xs(&code, &[0; 576], |c| {
        c.state.fpu = f.clone();
        c.state.gpr[0] = 3;
        c.state.gpr[2] = 0;
    });
    assert_eq!(end, End::Halt);
    let ours = bytes(&cpu, DATA, 576);
    assert_eq!(ours[..28], host.0[..28]);
    assert_eq!(ours[32..416], host.0[32..416]);
    assert_eq!(ours[512..520], host.0[512..520], "XSTATE_BV");
}
