//! Local APIC unit tests: registers, priorities, EOI, the timer modes on a manual
//! clock, x2APIC rules. Expected values come from the SDM's definitions (vol. 3
//! ch. 10), not from the model.

use super::lapic::{base, lvt, ApicFault, LocalApic, TIMER_HZ};
use super::lapic_regs::reg;
use super::{CpuEvent, DeliveryMode, Effect, Message, Shorthand};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vireo_core::clock::TimerDevice;
use vireo_core::VirtualClock;

const TSC_HZ: u64 = 1_000_000_000;

fn off(r: u32) -> u64 {
    u64::from(r) << 4
}

fn apic(id: u32, bsp: bool) -> (Arc<VirtualClock>, LocalApic) {
    let clock = VirtualClock::manual();
    let a = LocalApic::new(id, bsp, clock.clone(), TSC_HZ);
    (clock, a)
}

/// An APIC with SVR = software enabled, spurious vector 0xFF.
fn enabled(id: u32) -> (Arc<VirtualClock>, LocalApic) {
    let (c, mut a) = apic(id, true);
    a.poke(off(reg::SVR), 0x1ff);
    (c, a)
}

fn fixed(v: u8) -> Message {
    Message::fixed(v, 0)
}

fn irr_has(a: &mut LocalApic, v: u8) -> bool {
    a.peek(off(reg::IRR) + u64::from(v >> 5) * 0x10) & (1 << (v & 31)) != 0
}

fn isr_has(a: &mut LocalApic, v: u8) -> bool {
    a.peek(off(reg::ISR) + u64::from(v >> 5) * 0x10) & (1 << (v & 31)) != 0
}

#[test]
fn power_up_values() {
    let (_, mut a) = apic(3, false);
    assert_eq!(a.peek(off(reg::ID)), 3 << 24);
    // Version 14h, max LVT entry 5 in bits 23:16.
    assert_eq!(a.peek(off(reg::VERSION)), 0x0005_0014);
    assert_eq!(a.peek(off(reg::SVR)), 0xff);
    assert_eq!(a.peek(off(reg::DFR)), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::TPR)), 0);
    assert_eq!(a.peek(off(reg::PPR)), 0);
    for r in 0x32..=0x37 {
        assert_eq!(a.peek(off(r)), 0x1_0000, "LVT {r:#x} masked");
    }
    assert_eq!(a.apic_base(), 0xfee0_0000 | base::EN);
    assert_eq!(a.mmio_page(), Some(0xfee0_0000));
    // The BSP comes out of reset in virtual wire mode: LINT0 ExtINT, unmasked.
    let (_, mut b) = apic(0, true);
    assert_eq!(b.peek(0x350), 0x700);
    assert_eq!(b.apic_base(), 0xfee0_0000 | base::EN | base::BSP);
    assert!(b.accepts_pic());
}

#[test]
fn register_write_masks() {
    let (_, mut a) = enabled(0);
    a.poke(off(reg::ID), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::ID)), 0xff00_0000);
    a.poke(off(reg::LDR), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::LDR)), 0xff00_0000);
    a.poke(off(reg::DFR), 0);
    assert_eq!(a.peek(off(reg::DFR)), 0x0fff_ffff);
    a.poke(off(reg::TIMER_DIVIDE), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::TIMER_DIVIDE)), 0xb);
    a.poke(off(reg::ICR_HIGH), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::ICR_HIGH)), 0xff00_0000);
    // LVT entries: timer has vector, mask and mode 18:17; LINT has delivery mode,
    // polarity and trigger (remote IRR and delivery status are read-only); error only
    // vector and mask.
    a.poke(0x320, 0xffff_ffff);
    assert_eq!(a.peek(0x320), 0x0007_00ff);
    a.poke(0x350, 0xffff_ffff);
    assert_eq!(a.peek(0x350), 0x0001_a7ff);
    a.poke(0x340, 0xffff_ffff);
    assert_eq!(a.peek(0x340), 0x0001_07ff);
    a.poke(0x370, 0xffff_ffff);
    assert_eq!(a.peek(0x370), 0x0001_00ff);
    // SVR: vector, enable, focus check; EOI-broadcast suppression is not offered.
    a.poke(off(reg::SVR), 0xffff_ffff);
    assert_eq!(a.peek(off(reg::SVR)), 0x3ff);
    // Read-only registers ignore writes.
    a.poke(off(reg::VERSION), 0);
    assert_eq!(a.peek(off(reg::VERSION)), 0x0005_0014);
}

#[test]
fn software_disable_masks_the_lvt() {
    let (_, mut a) = enabled(0);
    a.poke(0x320, 0x30);
    assert_eq!(a.peek(0x320), 0x30);
    a.poke(off(reg::SVR), 0xff); // software disable
    assert_eq!(a.peek(0x320), 0x1_0030);
    assert_eq!(a.peek(0x350), 0x1_0700);
    a.poke(0x320, 0x31); // cannot unmask while disabled
    assert_eq!(a.peek(0x320), 0x1_0031);
    // Fixed messages are refused while software-disabled; NMI still arrives.
    a.accept(&fixed(0x40));
    assert!(!irr_has(&mut a, 0x40));
    a.accept(&Message {
        mode: DeliveryMode::Nmi,
        ..fixed(0)
    });
    assert_eq!(a.take_event(), Some(CpuEvent::Nmi));
}

#[test]
fn priorities_acknowledge_and_eoi() {
    let (_, mut a) = enabled(0);
    a.set_tpr(0x50);
    assert_eq!(a.ppr(), 0x50);
    a.accept(&fixed(0x45));
    assert!(irr_has(&mut a, 0x45));
    assert!(!a.has_interrupt(), "class 4 is not above TPR class 5");
    a.accept(&fixed(0x61));
    assert!(a.has_interrupt());
    assert_eq!(a.acknowledge(), Some(0x61));
    assert!(isr_has(&mut a, 0x61) && !irr_has(&mut a, 0x61));
    // PPR = ISRV[7:4] when above TPR[7:4].
    assert_eq!(a.peek(off(reg::PPR)), 0x60);
    a.accept(&fixed(0x65));
    assert_eq!(a.acknowledge(), None, "same class as the one in service");
    a.accept(&fixed(0x71));
    assert_eq!(a.acknowledge(), Some(0x71));
    assert_eq!(a.peek(off(reg::PPR)), 0x70);
    // EOI retires the highest in-service vector first.
    assert_eq!(a.poke(off(reg::EOI), 0), Effect::None);
    assert!(!isr_has(&mut a, 0x71) && isr_has(&mut a, 0x61));
    assert_eq!(a.acknowledge(), None);
    a.poke(off(reg::EOI), 0);
    assert_eq!(a.peek(off(reg::PPR)), 0x50);
    assert_eq!(a.acknowledge(), Some(0x65));
    a.poke(off(reg::EOI), 0);
    // 0x45 is still below the TPR; lowering the TPR lets it through.
    assert_eq!(a.acknowledge(), None);
    a.poke(off(reg::TPR), 0x40);
    assert_eq!(a.acknowledge(), None, "class 4 == TPR class 4");
    a.poke(off(reg::TPR), 0x3f);
    assert_eq!(a.acknowledge(), Some(0x45));
}

#[test]
fn arbitration_priority_follows_the_sdm() {
    let (_, mut a) = enabled(0);
    // TPR at least IRRV and above ISRV: APR = TPR (all 8 bits).
    a.set_tpr(0x35);
    assert_eq!(a.peek(off(reg::APR)), 0x35);
    // A pending class above TPR: APR = max class of TPR, ISRV, IRRV.
    a.accept(&fixed(0x52));
    assert_eq!(a.peek(off(reg::APR)), 0x50);
    a.set_tpr(0);
    assert_eq!(a.acknowledge(), Some(0x52));
    assert_eq!(a.peek(off(reg::APR)), 0x50);
}

#[test]
fn eoi_of_level_triggered_vectors_is_broadcast() {
    let (_, mut a) = enabled(0);
    a.accept(&Message {
        trigger_level: true,
        ..fixed(0x90)
    });
    assert!(
        a.peek(off(reg::TMR) + 0x40) & (1 << 16) != 0,
        "TMR bit of 0x90"
    );
    assert_eq!(a.acknowledge(), Some(0x90));
    assert_eq!(a.poke(off(reg::EOI), 0), Effect::Eoi(0x90));
    a.accept(&fixed(0x90));
    assert_eq!(a.acknowledge(), Some(0x90));
    assert_eq!(a.poke(off(reg::EOI), 0), Effect::None, "edge now");
    // An EOI with nothing in service does nothing.
    assert_eq!(a.poke(off(reg::EOI), 0), Effect::None);
}

#[test]
fn illegal_vectors_and_the_error_register() {
    let (_, mut a) = enabled(0);
    a.poke(0x370, 0xfe); // LVT error: vector 0xFE, unmasked
    a.accept(&fixed(5));
    assert!(!irr_has(&mut a, 5));
    // The ESR shows errors only after a write latches them.
    assert_eq!(a.peek(off(reg::ESR)), 0);
    a.poke(off(reg::ESR), 0);
    assert_eq!(a.peek(off(reg::ESR)), 1 << 6, "receive illegal vector");
    assert_eq!(a.acknowledge(), Some(0xfe), "LVT error interrupt");
    // Sending a fixed IPI with vector < 16: send illegal vector, nothing sent.
    assert_eq!(a.poke(off(reg::ICR_LOW), 0x0004_0003), Effect::None);
    // A reserved register: illegal register address.
    assert_eq!(a.peek(0x040), 0);
    a.poke(off(reg::ESR), 0);
    assert_eq!(a.peek(off(reg::ESR)), (1 << 5) | (1 << 7));
    a.poke(off(reg::ESR), 0);
    assert_eq!(a.peek(off(reg::ESR)), 0);
}

#[test]
fn mmio_access_sizes() {
    let (_, mut a) = enabled(0);
    let mut b = [0u8; 1];
    a.mmio_read(0x32, &mut b); // byte 2 of the version register
    assert_eq!(b[0], 0x05);
    a.mmio_read(0x34, &mut b); // bytes 4-15 of a slot
    assert_eq!(b[0], 0);
    let mut w = [0u8; 2];
    a.mmio_read(0x30, &mut w);
    assert_eq!(w, [0x14, 0x00]);
    // Only aligned 32-bit writes count.
    a.mmio_write(0x80, &[0x20]);
    a.mmio_write(0x84, &0x30u32.to_le_bytes());
    a.mmio_write(0x80, &0x40u64.to_le_bytes());
    assert_eq!(a.tpr(), 0);
    a.mmio_write(0x80, &0x40u32.to_le_bytes());
    assert_eq!(a.tpr(), 0x40);
}

#[test]
fn icr_builds_ipis() {
    let (_, mut a) = enabled(0);
    a.poke(off(reg::ICR_HIGH), 0x0300_0000);
    // Fixed, logical, level assert, edge, vector 0x55.
    let e = a.poke(off(reg::ICR_LOW), 0x0000_4855);
    let Effect::Send(m) = e else {
        panic!("no IPI: {e:?}")
    };
    assert_eq!(
        (m.vector, m.mode, m.dest, m.logical, m.shorthand, m.x2apic),
        (0x55, DeliveryMode::Fixed, 3, true, Shorthand::None, false)
    );
    // All excluding self, NMI.
    let Effect::Send(m) = a.poke(off(reg::ICR_LOW), 0x000c_0400) else {
        panic!("no IPI")
    };
    assert_eq!(
        (m.mode, m.shorthand),
        (DeliveryMode::Nmi, Shorthand::AllExcludingSelf)
    );
    // Delivery status (bit 12) reads idle.
    assert_eq!(a.peek(off(reg::ICR_LOW)) & (1 << 12), 0);
    // Only fixed interrupts go to self.
    assert_eq!(a.poke(off(reg::ICR_LOW), 0x0004_0400), Effect::None);
}

#[test]
fn one_shot_timer() {
    let (clock, mut a) = enabled(0);
    a.poke(off(reg::TIMER_DIVIDE), 0xb); // divide by 1
    a.poke(0x320, 0x30); // one-shot, vector 0x30
    a.poke(off(reg::TIMER_INITIAL), 1000);
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 1000);
    // 1 GHz: one decrement per nanosecond.
    assert_eq!(a.poll_timer(0), Some(1000));
    clock.set(400);
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 600);
    assert_eq!(a.poll_timer(999), Some(1000));
    assert!(!irr_has(&mut a, 0x30));
    clock.set(1000);
    assert_eq!(a.poll_timer(1000), None);
    assert!(irr_has(&mut a, 0x30));
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 0);
    // Divide by 2 (000b): 100 counts take 200 ns.
    a.poke(off(reg::TIMER_DIVIDE), 0);
    a.poke(off(reg::TIMER_INITIAL), 100);
    clock.set(1050);
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 75);
    assert_eq!(a.poll_timer(1050), Some(1200));
    // Divide by 128 (1010b): 10 counts take 1280 ns.
    a.poke(off(reg::TIMER_DIVIDE), 0xa);
    a.poke(off(reg::TIMER_INITIAL), 10);
    assert_eq!(a.poll_timer(1050), Some(1050 + 1280));
    // Writing 0 stops it.
    a.poke(off(reg::TIMER_INITIAL), 0);
    assert_eq!(a.poll_timer(5000), None);
}

#[test]
fn periodic_timer_reloads_and_coalesces() {
    let (clock, mut a) = enabled(0);
    a.poke(off(reg::TIMER_DIVIDE), 0xb);
    a.poke(0x320, 0x2_0040); // periodic, vector 0x40
    a.poke(off(reg::TIMER_INITIAL), 50_000);
    assert_eq!(a.poll_timer(49_999), Some(50_000));
    assert_eq!(a.poll_timer(50_000), Some(100_000));
    assert_eq!(a.acknowledge(), Some(0x40));
    a.poke(off(reg::EOI), 0);
    clock.set(75_000);
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 25_000);
    assert_eq!(a.poll_timer(100_000), Some(150_000));
    assert_eq!(a.acknowledge(), Some(0x40));
    a.poke(off(reg::EOI), 0);
    // Polled late: one interrupt for the missed periods, the next on the grid.
    assert_eq!(a.poll_timer(260_000), Some(300_000));
    assert_eq!(a.acknowledge(), Some(0x40));
    a.poke(off(reg::EOI), 0);
    assert_eq!(a.acknowledge(), None);
    // A masked timer keeps counting without interrupts.
    a.poke(0x320, 0x3_0040);
    assert_eq!(a.poll_timer(300_000), Some(350_000));
    assert_eq!(a.acknowledge(), None);
}

#[test]
fn periodic_timer_interval_is_bounded() {
    let (_, mut a) = enabled(0);
    a.poke(off(reg::TIMER_DIVIDE), 0xb);
    a.poke(0x320, 0x2_0040);
    a.poke(off(reg::TIMER_INITIAL), 1); // a 1 ns period
    let next = a.poll_timer(5).unwrap_or(0);
    assert!(next >= 5 + super::lapic::MIN_PERIOD_NS, "{next}");
}

#[test]
fn tsc_deadline_timer() {
    let (clock, mut a) = enabled(0);
    // Not in TSC-deadline mode: writes are ignored and reads return 0.
    a.set_tsc_deadline(123, 0);
    assert_eq!(a.tsc_deadline(), 0);
    a.poke(0x320, 0x4_0050); // TSC-deadline mode, vector 0x50
    clock.set(2_000);
    // The TSC reads 1_000_000 now and runs at 1 GHz: 5000 ticks are 5 us.
    a.set_tsc_deadline(1_005_000, 1_000_000);
    assert_eq!(a.tsc_deadline(), 1_005_000);
    assert_eq!(a.poll_timer(2_000), Some(7_000));
    // The initial count is ignored in this mode; the current count reads 0.
    a.poke(off(reg::TIMER_INITIAL), 10);
    assert_eq!(a.peek(off(reg::TIMER_INITIAL)), 0);
    assert_eq!(a.peek(off(reg::TIMER_CURRENT)), 0);
    assert_eq!(a.poll_timer(7_000), None);
    assert_eq!(a.acknowledge(), Some(0x50));
    assert_eq!(a.tsc_deadline(), 0, "disarmed after it fired");
    // A deadline in the past fires at once.
    a.set_tsc_deadline(5, 1_000_000);
    assert_eq!(a.poll_timer(7_000), None);
    assert!(irr_has(&mut a, 0x50));
    // Leaving TSC-deadline mode disarms.
    a.set_tsc_deadline(2_000_000, 1_000_000);
    a.poke(0x320, 0x0_0050);
    assert_eq!(a.poll_timer(7_000), None);
    a.poke(0x320, 0x4_0050);
    assert_eq!(a.tsc_deadline(), 0);
}

#[test]
fn timer_clock_is_the_documented_one() {
    assert_eq!(TIMER_HZ, 1_000_000_000);
}

#[test]
fn x2apic_transitions() {
    let (_, mut a) = apic(0x21, false);
    let b = 0xfee0_0000;
    assert_eq!(a.read_x2apic(0x802), Err(ApicFault), "xAPIC mode: no MSRs");
    assert_eq!(
        a.set_apic_base(b | base::EXTD),
        Err(ApicFault),
        "EXTD without EN"
    );
    assert_eq!(
        a.set_apic_base(b | base::EN | 1),
        Err(ApicFault),
        "reserved bit"
    );
    a.set_apic_base(b | base::EN | base::EXTD).unwrap();
    assert!(a.x2apic_mode());
    assert_eq!(a.mmio_page(), None, "no MMIO page in x2APIC mode");
    assert_eq!(
        a.set_apic_base(b | base::EN),
        Err(ApicFault),
        "x2APIC -> xAPIC"
    );
    a.set_apic_base(b).unwrap(); // x2APIC -> disabled
    assert!(!a.hw_enabled());
    assert_eq!(
        a.set_apic_base(b | base::EN | base::EXTD),
        Err(ApicFault),
        "disabled -> x2APIC"
    );
    a.set_apic_base(b | base::EN).unwrap();
    // Relocation.
    a.set_apic_base(0xfed0_0000 | base::EN).unwrap();
    assert_eq!(a.mmio_page(), Some(0xfed0_0000));
}

#[test]
fn x2apic_msr_rules() {
    let (_, mut a) = apic(0x21, false);
    a.set_apic_base(0xfee0_0000 | base::EN | base::EXTD)
        .unwrap();
    assert_eq!(a.read_x2apic(0x802), Ok(0x21));
    // LDR: cluster (ID[19:4]) in 31:16, bit ID[3:0] below.
    assert_eq!(a.read_x2apic(0x80d), Ok((2 << 16) | (1 << 1)));
    assert_eq!(a.read_x2apic(0x803), Ok(0x0005_0014));
    for (msr, why) in [
        (0x80e, "no DFR"),
        (0x809, "no APR"),
        (0x831, "no ICR high half"),
        (0x80b, "EOI is write-only"),
        (0x83f, "SELF IPI is write-only"),
        (0x801, "reserved"),
        (0x82f, "no CMCI LVT"),
        (0x8ff, "reserved"),
    ] {
        assert_eq!(a.read_x2apic(msr), Err(ApicFault), "{why}");
    }
    for (msr, v, why) in [
        (0x802, 0, "ID is read-only"),
        (0x80d, 0, "LDR is read-only"),
        (0x803, 0, "version is read-only"),
        (0x839, 0, "current count is read-only"),
        (0x80b, 1, "non-zero EOI"),
        (0x828, 1, "non-zero ESR"),
        (0x808, 1 << 32, "bits 63:32 of TPR"),
        (0x83f, 0x100, "SELF IPI reserved bits"),
        (0x80e, 0, "no DFR"),
    ] {
        assert_eq!(a.write_x2apic(msr, v), Err(ApicFault), "{why}");
    }
    a.write_x2apic(0x80f, 0x1ff).unwrap();
    a.write_x2apic(0x808, 0x20).unwrap();
    assert_eq!(a.read_x2apic(0x808), Ok(0x20));
    assert_eq!(a.write_x2apic(0x80b, 0), Ok(Effect::None));
    // The ICR is one 64-bit register with a 32-bit destination.
    let e = a.write_x2apic(0x830, (0x1234_5678 << 32) | 0x4077).unwrap();
    let Effect::Send(m) = e else { panic!("no IPI") };
    assert_eq!((m.dest, m.vector, m.x2apic), (0x1234_5678, 0x77, true));
    assert_eq!(a.read_x2apic(0x830), Ok((0x1234_5678 << 32) | 0x4077));
    // Self IPI.
    let Effect::Send(m) = a.write_x2apic(0x83f, 0x99).unwrap() else {
        panic!("no IPI")
    };
    assert_eq!((m.vector, m.shorthand), (0x99, Shorthand::SelfOnly));
    // Timer registers through MSRs.
    a.write_x2apic(0x83e, 0xb).unwrap();
    a.write_x2apic(0x838, 500).unwrap();
    assert_eq!(a.read_x2apic(0x839), Ok(500));
}

#[test]
fn global_disable_resets_and_passes_the_pic_through() {
    let (_, mut a) = enabled(0);
    a.poke(0x350, 0x1_0700); // LINT0 masked: no PIC interrupts
    assert!(!a.accepts_pic());
    a.set_tpr(0x30);
    a.set_apic_base(0xfee0_0000 | base::BSP).unwrap();
    assert!(a.accepts_pic(), "a disabled APIC passes INTR through");
    assert_eq!(a.mmio_page(), None);
    a.accept(&fixed(0x40));
    assert!(!a.has_interrupt());
    a.set_apic_base(0xfee0_0000 | base::BSP | base::EN).unwrap();
    assert_eq!(a.tpr(), 0, "back in the power-up state");
    assert_eq!(a.peek(off(reg::SVR)), 0xff);
}

#[test]
fn lint_pins() {
    let (_, mut a) = enabled(0);
    a.poke(0x360, 0x400); // LINT1: NMI
    a.set_lint(1, true);
    a.set_lint(1, true); // no new edge
    assert_eq!(a.take_event(), Some(CpuEvent::Nmi));
    assert_eq!(a.take_event(), None);
    // LINT0 fixed, level-triggered: remote IRR until the EOI.
    a.poke(0x350, 0x8041);
    a.set_lint(0, true);
    assert!(a.peek(0x350) & lvt::REMOTE_IRR != 0);
    assert_eq!(a.acknowledge(), Some(0x41));
    assert_eq!(a.poke(off(reg::EOI), 0), Effect::Eoi(0x41));
    assert_eq!(a.peek(0x350) & lvt::REMOTE_IRR, 0);
}

#[test]
fn notifications() {
    let (_, mut a) = enabled(0);
    let irqs = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(AtomicUsize::new(0));
    let (i2, e2) = (irqs.clone(), events.clone());
    a.set_notify(
        Box::new(move || {
            i2.fetch_add(1, Ordering::SeqCst);
        }),
        Box::new(move || {
            e2.fetch_add(1, Ordering::SeqCst);
        }),
    );
    a.set_tpr(0x80);
    a.accept(&fixed(0x41));
    assert_eq!(irqs.load(Ordering::SeqCst), 0, "masked by the TPR");
    a.set_tpr(0);
    assert_eq!(irqs.load(Ordering::SeqCst), 1, "lowering the TPR notifies");
    a.accept(&Message {
        mode: DeliveryMode::StartUp,
        ..fixed(0x9a)
    });
    assert_eq!(events.load(Ordering::SeqCst), 1);
    assert_eq!(a.take_event(), Some(CpuEvent::StartUp(0x9a)));
}
