//! Conversions between [`CpuState`] and KVM's register structures.

use crate::error::{IoctlContext, Result};
use kvm_bindings::{
    kvm_dtable, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcr,
    kvm_xcrs, kvm_xsave, Msrs, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::VcpuFd;
use vireo_core::cpu::{CpuState, DescriptorTable, FpuState, MsrState, PendingEvent, Segment};

fn seg_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

fn seg_from_kvm(k: &kvm_segment) -> Segment {
    Segment {
        selector: k.selector,
        base: k.base,
        limit: k.limit,
        type_: k.type_,
        s: k.s != 0,
        dpl: k.dpl,
        present: k.present != 0,
        avl: k.avl != 0,
        l: k.l != 0,
        db: k.db != 0,
        g: k.g != 0,
        unusable: k.unusable != 0,
    }
}

fn dt_to_kvm(d: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: d.base,
        limit: d.limit,
        ..Default::default()
    }
}

fn dt_from_kvm(d: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: d.base,
        limit: d.limit,
    }
}

// Offsets in the XSAVE area (legacy region in FXSAVE layout, then the header and the
// AVX component at its standard, non-compacted offset).
const XS_FCW: usize = 0;
const XS_FSW: usize = 2;
const XS_FTW: usize = 4;
const XS_FOP: usize = 6;
const XS_FIP: usize = 8;
const XS_FDP: usize = 16;
const XS_MXCSR: usize = 24;
const XS_ST: usize = 32;
const XS_XMM: usize = 160;
const XS_XSTATE_BV: usize = 512;
const XS_YMMH: usize = 576;
/// XSTATE_BV bits: x87, SSE, AVX.
const XSTATE_X87_SSE_AVX: u64 = 0b111;

fn xsave_bytes(x: &kvm_xsave) -> Vec<u8> {
    x.region.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn fpu_from_xsave(x: &kvm_xsave) -> FpuState {
    let b = xsave_bytes(x);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let mut f = FpuState {
        fcw: u16_at(XS_FCW),
        fsw: u16_at(XS_FSW),
        ftw: b[XS_FTW],
        fop: u16_at(XS_FOP),
        fip: u64_at(XS_FIP),
        fdp: u64_at(XS_FDP),
        mxcsr: u32::from_le_bytes([
            b[XS_MXCSR],
            b[XS_MXCSR + 1],
            b[XS_MXCSR + 2],
            b[XS_MXCSR + 3],
        ]),
        ..FpuState::default()
    };
    for i in 0..8 {
        f.st[i].copy_from_slice(&b[XS_ST + 16 * i..XS_ST + 16 * (i + 1)]);
    }
    for i in 0..16 {
        f.xmm[i].copy_from_slice(&b[XS_XMM + 16 * i..XS_XMM + 16 * (i + 1)]);
        f.ymmh[i].copy_from_slice(&b[XS_YMMH + 16 * i..XS_YMMH + 16 * (i + 1)]);
    }
    f
}

fn fpu_to_xsave(f: &FpuState, x: &mut kvm_xsave) {
    let mut b = xsave_bytes(x);
    b[XS_FCW..XS_FCW + 2].copy_from_slice(&f.fcw.to_le_bytes());
    b[XS_FSW..XS_FSW + 2].copy_from_slice(&f.fsw.to_le_bytes());
    b[XS_FTW] = f.ftw;
    b[XS_FOP..XS_FOP + 2].copy_from_slice(&f.fop.to_le_bytes());
    b[XS_FIP..XS_FIP + 8].copy_from_slice(&f.fip.to_le_bytes());
    b[XS_FDP..XS_FDP + 8].copy_from_slice(&f.fdp.to_le_bytes());
    b[XS_MXCSR..XS_MXCSR + 4].copy_from_slice(&f.mxcsr.to_le_bytes());
    for i in 0..8 {
        b[XS_ST + 16 * i..XS_ST + 16 * (i + 1)].copy_from_slice(&f.st[i]);
    }
    for i in 0..16 {
        b[XS_XMM + 16 * i..XS_XMM + 16 * (i + 1)].copy_from_slice(&f.xmm[i]);
        b[XS_YMMH + 16 * i..XS_YMMH + 16 * (i + 1)].copy_from_slice(&f.ymmh[i]);
    }
    // The components now hold explicit values: mark them as not in their init state.
    let bv = u64::from_le_bytes(
        b[XS_XSTATE_BV..XS_XSTATE_BV + 8]
            .try_into()
            .unwrap_or([0; 8]),
    );
    b[XS_XSTATE_BV..XS_XSTATE_BV + 8].copy_from_slice(&(bv | XSTATE_X87_SSE_AVX).to_le_bytes());
    for (w, c) in x.region.iter_mut().zip(b.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn fpu_from_kvm(f: &kvm_fpu) -> FpuState {
    FpuState {
        fcw: f.fcw,
        fsw: f.fsw,
        ftw: f.ftwx,
        fop: f.last_opcode,
        fip: f.last_ip,
        fdp: f.last_dp,
        st: f.fpr,
        xmm: f.xmm,
        ymmh: [[0; 16]; 16],
        mxcsr: f.mxcsr,
    }
}

fn fpu_to_kvm(f: &FpuState) -> kvm_fpu {
    kvm_fpu {
        fpr: f.st,
        fcw: f.fcw,
        fsw: f.fsw,
        ftwx: f.ftw,
        last_opcode: f.fop,
        last_ip: f.fip,
        last_dp: f.fdp,
        xmm: f.xmm,
        mxcsr: f.mxcsr,
        ..Default::default()
    }
}

/// Reads the complete state of a vCPU. `xsave_ok`: the host's XSAVE area fits in a
/// 4 KiB `kvm_xsave`, so the FPU/SSE/AVX state goes through KVM_GET/SET_XSAVE.
pub fn get(vcpu: &VcpuFd, xsave_ok: bool) -> Result<CpuState> {
    let mut s = CpuState::default();
    let r = vcpu.get_regs().op("KVM_GET_REGS")?;
    s.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    s.rip = r.rip;
    s.rflags = r.rflags;

    let sr = vcpu.get_sregs().op("KVM_GET_SREGS")?;
    s.seg = [
        seg_from_kvm(&sr.es),
        seg_from_kvm(&sr.cs),
        seg_from_kvm(&sr.ss),
        seg_from_kvm(&sr.ds),
        seg_from_kvm(&sr.fs),
        seg_from_kvm(&sr.gs),
    ];
    s.ldtr = seg_from_kvm(&sr.ldt);
    s.tr = seg_from_kvm(&sr.tr);
    s.gdtr = dt_from_kvm(&sr.gdt);
    s.idtr = dt_from_kvm(&sr.idt);
    s.cr0 = sr.cr0;
    s.cr2 = sr.cr2;
    s.cr3 = sr.cr3;
    s.cr4 = sr.cr4;
    s.cr8 = sr.cr8;
    s.efer = sr.efer;
    s.msr.apic_base = sr.apic_base;

    s.fpu = match xsave_ok {
        true => fpu_from_xsave(&vcpu.get_xsave().op("KVM_GET_XSAVE")?),
        false => fpu_from_kvm(&vcpu.get_fpu().op("KVM_GET_FPU")?),
    };

    // XCR0[0] is always set; this stays when the host has no KVM_GET_XCRS.
    s.xcr0 = 1;
    if let Ok(x) = vcpu.get_xcrs() {
        if let Some(x0) = x.xcrs[..(x.nr_xcrs as usize).min(16)]
            .iter()
            .find(|x| x.xcr == 0)
        {
            s.xcr0 = x0.value;
        }
    }

    let d = vcpu.get_debug_regs().op("KVM_GET_DEBUGREGS")?;
    s.dr = [d.db[0], d.db[1], d.db[2], d.db[3], d.dr6, d.dr7];

    let entries: Vec<kvm_msr_entry> = MsrState::INDICES
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs =
        Msrs::from_entries(&entries).map_err(|_| crate::Error::MissingCap("MSR list"))?;
    let n = vcpu.get_msrs(&mut msrs).op("KVM_GET_MSRS")?;
    for e in &msrs.as_slice()[..n] {
        s.msr.set(e.index, e.data);
    }

    let ev = vcpu.get_vcpu_events().op("KVM_GET_VCPU_EVENTS")?;
    if ev.exception.injected != 0 || ev.exception.pending != 0 {
        s.events.exception = Some(PendingEvent {
            vector: ev.exception.nr,
            error_code: (ev.exception.has_error_code != 0).then_some(ev.exception.error_code),
            soft: false,
        });
    }
    if ev.interrupt.injected != 0 {
        s.events.interrupt = Some(PendingEvent {
            vector: ev.interrupt.nr,
            error_code: None,
            soft: ev.interrupt.soft != 0,
        });
    }
    s.events.interrupt_shadow = ev.interrupt.shadow != 0;
    s.events.nmi_pending = ev.nmi.pending != 0 || ev.nmi.injected != 0;
    s.events.nmi_masked = ev.nmi.masked != 0;
    if let Ok(mp) = vcpu.get_mp_state() {
        s.events.halted = mp.mp_state == KVM_MP_STATE_HALTED;
        s.events.wait_for_sipi = mp.mp_state == KVM_MP_STATE_INIT_RECEIVED;
    }
    Ok(s)
}

/// Loads the complete state into a vCPU.
pub fn set(vcpu: &VcpuFd, s: &CpuState, xsave_ok: bool) -> Result<()> {
    let g = &s.gpr;
    let regs = kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.rip,
        rflags: s.rflags,
    };

    let mut sr: kvm_sregs = vcpu.get_sregs().op("KVM_GET_SREGS")?;
    sr.es = seg_to_kvm(&s.seg[0]);
    sr.cs = seg_to_kvm(&s.seg[1]);
    sr.ss = seg_to_kvm(&s.seg[2]);
    sr.ds = seg_to_kvm(&s.seg[3]);
    sr.fs = seg_to_kvm(&s.seg[4]);
    sr.gs = seg_to_kvm(&s.seg[5]);
    sr.ldt = seg_to_kvm(&s.ldtr);
    sr.tr = seg_to_kvm(&s.tr);
    sr.gdt = dt_to_kvm(&s.gdtr);
    sr.idt = dt_to_kvm(&s.idtr);
    sr.cr0 = s.cr0;
    sr.cr2 = s.cr2;
    sr.cr3 = s.cr3;
    sr.cr4 = s.cr4;
    sr.cr8 = s.cr8;
    sr.efer = s.efer;
    if s.msr.apic_base != 0 {
        sr.apic_base = s.msr.apic_base;
    }
    sr.interrupt_bitmap = [0; 4];
    vcpu.set_sregs(&sr).op("KVM_SET_SREGS")?;
    vcpu.set_regs(&regs).op("KVM_SET_REGS")?;

    if xsave_ok {
        let mut xs = vcpu.get_xsave().op("KVM_GET_XSAVE")?;
        fpu_to_xsave(&s.fpu, &mut xs);
        // SAFETY: `xs` is a full 4 KiB `kvm_xsave` that KVM_GET_XSAVE just filled, and
        // the caller checked (KVM_CAP_XSAVE2) that this host's XSAVE area fits in it,
        // so the kernel reads nothing past the struct.
        unsafe { vcpu.set_xsave(&xs) }.op("KVM_SET_XSAVE")?;
    } else {
        vcpu.set_fpu(&fpu_to_kvm(&s.fpu)).op("KVM_SET_FPU")?;
    }

    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        value: s.xcr0.max(1),
        ..Default::default()
    };
    if let Err(e) = vcpu.set_xcrs(&xcrs) {
        log::debug!(target: "vireo::kvm", "KVM_SET_XCRS: {e}");
    }

    let mut d = vcpu.get_debug_regs().op("KVM_GET_DEBUGREGS")?;
    d.db.copy_from_slice(&s.dr[..4]);
    d.dr6 = s.dr[4];
    d.dr7 = s.dr[5];
    vcpu.set_debug_regs(&d).op("KVM_SET_DEBUGREGS")?;

    let entries: Vec<kvm_msr_entry> = s
        .msr
        .entries()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| crate::Error::MissingCap("MSR list"))?;
    let n = vcpu.set_msrs(&msrs).op("KVM_SET_MSRS")?;
    if n != entries.len() {
        log::debug!(target: "vireo::kvm", "KVM_SET_MSRS took {n} of {} MSRs (stopped at {:#x})",
            entries.len(), entries.get(n).map(|e| e.index).unwrap_or(0));
    }

    let mut ev = vcpu.get_vcpu_events().op("KVM_GET_VCPU_EVENTS")?;
    ev.exception = Default::default();
    if let Some(x) = s.events.exception {
        ev.exception.injected = 1;
        ev.exception.nr = x.vector;
        ev.exception.has_error_code = x.error_code.is_some().into();
        ev.exception.error_code = x.error_code.unwrap_or(0);
    }
    ev.interrupt = Default::default();
    if let Some(i) = s.events.interrupt {
        ev.interrupt.injected = 1;
        ev.interrupt.nr = i.vector;
        ev.interrupt.soft = i.soft.into();
    }
    ev.interrupt.shadow = s.events.interrupt_shadow.into();
    ev.nmi.pending = s.events.nmi_pending.into();
    ev.nmi.injected = 0;
    ev.nmi.masked = s.events.nmi_masked.into();
    ev.flags =
        kvm_bindings::KVM_VCPUEVENT_VALID_SHADOW | kvm_bindings::KVM_VCPUEVENT_VALID_NMI_PENDING;
    vcpu.set_vcpu_events(&ev).op("KVM_SET_VCPU_EVENTS")?;

    let mp = kvm_mp_state {
        mp_state: if s.events.wait_for_sipi {
            KVM_MP_STATE_INIT_RECEIVED
        } else if s.events.halted {
            KVM_MP_STATE_HALTED
        } else {
            KVM_MP_STATE_RUNNABLE
        },
    };
    if let Err(e) = vcpu.set_mp_state(mp) {
        log::debug!(target: "vireo::kvm", "KVM_SET_MP_STATE: {e}");
    }
    Ok(())
}
