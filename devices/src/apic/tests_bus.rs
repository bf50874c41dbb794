//! The APIC bus with several local APICs, the IOAPIC and the GSI router: IPIs by
//! destination, INIT/SIPI, lowest priority, edge and level (remote IRR + EOI) IOAPIC
//! inputs. Expected values from the SDM and the 82093AA datasheet.

use super::lapic::{base, LocalApic};
use super::lapic_regs::reg;
use super::{
    shared, ApicBus, ApicIrqRouter, CpuEvent, DeliveryMode, Ioapic, LapicHandle, Message,
    SharedIoapic,
};
use crate::pic::PicPair;
use std::sync::Arc;
use vireo_core::{BusDevice, IrqChip, VirtualClock};

fn off(r: u32) -> u64 {
    u64::from(r) << 4
}

fn write(h: &LapicHandle, r: u32, v: u32) {
    h.mmio_write(off(r), &v.to_le_bytes());
}

fn read(h: &LapicHandle, r: u32) -> u32 {
    let mut b = [0u8; 4];
    h.mmio_read(off(r), &mut b);
    u32::from_le_bytes(b)
}

/// `n` software-enabled local APICs (IDs 0..n, APIC 0 the BSP) on one bus.
fn system(n: u32) -> (Arc<ApicBus>, Vec<LapicHandle>) {
    let clock = VirtualClock::manual();
    let bus = ApicBus::new();
    let hs: Vec<LapicHandle> = (0..n)
        .map(|id| {
            let l = shared(LocalApic::new(id, id == 0, clock.clone(), 1_000_000_000));
            let h = LapicHandle::attach(l, bus.clone());
            write(&h, reg::SVR, 0x1ff);
            h
        })
        .collect();
    (bus, hs)
}

fn ack(h: &LapicHandle) -> Option<u8> {
    h.lapic.lock().acknowledge()
}

fn eoi(h: &LapicHandle) {
    write(h, reg::EOI, 0);
}

fn ipi(h: &LapicHandle, dest: u8, low: u32) {
    write(h, reg::ICR_HIGH, u32::from(dest) << 24);
    write(h, reg::ICR_LOW, low);
}

#[test]
fn init_and_sipi_reach_the_other_cpu() {
    let (_, cpus) = system(2);
    // The AP had some state: INIT resets it, except the APIC ID register.
    write(&cpus[1], reg::TPR, 0x40);
    write(&cpus[1], reg::LDR, 0x0200_0000);
    write(&cpus[1], reg::ID, 0x0500_0000);
    // The MP start-up sequence: INIT assert (level), INIT de-assert, SIPI x2 (to the
    // APIC ID the AP has now).
    ipi(&cpus[0], 5, 0x0000_c500);
    ipi(&cpus[0], 5, 0x0000_8500);
    ipi(&cpus[0], 5, 0x0000_069a);
    ipi(&cpus[0], 5, 0x0000_069a);
    let mut ap = cpus[1].lapic.lock();
    assert_eq!(ap.take_event(), Some(CpuEvent::Init));
    assert_eq!(ap.take_event(), Some(CpuEvent::StartUp(0x9a)));
    assert_eq!(ap.take_event(), Some(CpuEvent::StartUp(0x9a)));
    assert_eq!(ap.take_event(), None, "the de-assert is no event");
    assert_eq!(ap.tpr(), 0);
    assert!(!ap.bsp());
    drop(ap);
    assert_eq!(read(&cpus[1], reg::ID), 5 << 24, "ID kept");
    assert_eq!(read(&cpus[1], reg::LDR), 0);
    assert_eq!(
        read(&cpus[1], reg::SVR),
        0xff,
        "software-disabled after INIT"
    );
    assert_eq!(cpus[0].lapic.lock().take_event(), None, "not to the sender");
}

#[test]
fn physical_logical_and_shorthand_destinations() {
    let (_, cpus) = system(3);
    // Physical.
    ipi(&cpus[0], 2, 0x4041);
    assert_eq!(ack(&cpus[2]), Some(0x41));
    assert_eq!(ack(&cpus[1]), None);
    eoi(&cpus[2]);
    // Logical, flat model: LDR bit per CPU; destination 0x06 = CPUs 1 and 2.
    for (i, h) in cpus.iter().enumerate() {
        write(h, reg::LDR, 1 << (24 + i));
    }
    ipi(&cpus[0], 0x06, 0x4842);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [None, Some(0x42), Some(0x42)]
    );
    cpus.iter().for_each(eoi);
    // Logical, cluster model: cluster in MDA[7:4], members in MDA[3:0].
    write(&cpus[0], reg::LDR, 0x1100_0000);
    write(&cpus[1], reg::LDR, 0x1200_0000);
    write(&cpus[2], reg::LDR, 0x2100_0000);
    for h in &cpus {
        write(h, reg::DFR, 0x0fff_ffff);
    }
    ipi(&cpus[0], 0x13, 0x4843);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [Some(0x43), Some(0x43), None]
    );
    cpus.iter().for_each(eoi);
    // Shorthands: self, all including self, all excluding self.
    write(&cpus[1], reg::ICR_LOW, 0x0004_4044);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [None, Some(0x44), None]
    );
    cpus.iter().for_each(eoi);
    write(&cpus[1], reg::ICR_LOW, 0x0008_4045);
    assert_eq!(cpus.iter().map(ack).collect::<Vec<_>>(), [Some(0x45); 3]);
    cpus.iter().for_each(eoi);
    write(&cpus[1], reg::ICR_LOW, 0x000c_4046);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [Some(0x46), None, Some(0x46)]
    );
    cpus.iter().for_each(eoi);
    // Physical broadcast 0xFF.
    ipi(&cpus[0], 0xff, 0x4047);
    assert!(cpus.iter().all(|h| ack(h) == Some(0x47)));
}

#[test]
fn lowest_priority_picks_the_lowest_task_priority() {
    let (_, cpus) = system(3);
    for (i, h) in cpus.iter().enumerate() {
        write(h, reg::LDR, 1 << (24 + i));
    }
    write(&cpus[0], reg::TPR, 0x20);
    write(&cpus[1], reg::TPR, 0x30);
    write(&cpus[2], reg::TPR, 0x10);
    // Lowest priority, logical destination CPUs 0 and 1: CPU 0 (TPR 0x20 < 0x30).
    ipi(&cpus[2], 0x03, 0x4951);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [Some(0x51), None, None]
    );
    // All three: CPU 2.
    ipi(&cpus[0], 0x07, 0x4952);
    assert_eq!(
        cpus.iter().map(ack).collect::<Vec<_>>(),
        [None, None, Some(0x52)]
    );
}

#[test]
fn nmi_ipi_is_an_event() {
    let (_, cpus) = system(2);
    ipi(&cpus[0], 1, 0x4400);
    assert_eq!(cpus[1].lapic.lock().take_event(), Some(CpuEvent::Nmi));
}

#[test]
fn x2apic_destinations() {
    let (_, cpus) = system(2);
    for h in &cpus {
        h.set_apic_base(
            0xfee0_0000
                | base::EN
                | base::EXTD
                | if h.lapic.lock().id() == 0 {
                    base::BSP
                } else {
                    0
                },
        )
        .unwrap();
    }
    // Physical 32-bit destination.
    cpus[0].write_x2apic(0x830, (1 << 32) | 0x4061).unwrap();
    assert_eq!(ack(&cpus[1]), Some(0x61));
    assert_eq!(ack(&cpus[0]), None);
    cpus[1].write_x2apic(0x80b, 0).unwrap();
    // Logical: cluster 0, bits for IDs 0 and 1.
    cpus[0].write_x2apic(0x830, (0x3 << 32) | 0x4862).unwrap();
    assert_eq!(ack(&cpus[0]), Some(0x62));
    assert_eq!(ack(&cpus[1]), Some(0x62));
    cpus.iter().for_each(|h| h.write_x2apic(0x80b, 0).unwrap());
    // Self IPI.
    cpus[1].write_x2apic(0x83f, 0x63).unwrap();
    assert_eq!(ack(&cpus[1]), Some(0x63));
    assert_eq!(ack(&cpus[0]), None);
}

fn ioapic_system() -> (Arc<ApicBus>, Vec<LapicHandle>, SharedIoapic) {
    let (bus, cpus) = system(2);
    let io = Ioapic::attach(2, &bus);
    (bus, cpus, io)
}

fn set_entry(io: &SharedIoapic, pin: u8, v: u64) {
    let mut io = io.lock();
    let idx = 0x10 + 2 * pin;
    io.write(0, &[idx]);
    io.write(0x10, &(v as u32).to_le_bytes());
    io.write(0, &[idx + 1]);
    io.write(0x10, &((v >> 32) as u32).to_le_bytes());
}

fn read_indirect(io: &SharedIoapic, idx: u8) -> u32 {
    let mut io = io.lock();
    io.write(0, &[idx]);
    let mut b = [0u8; 4];
    io.read(0x10, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn ioapic_registers() {
    let (_, _, io) = ioapic_system();
    // Version 0x11 with 24 entries (maximum redirection entry 23 in bits 23:16).
    assert_eq!(read_indirect(&io, 1), 0x0017_0011);
    assert_eq!(read_indirect(&io, 0), 2 << 24);
    io.lock().write(0, &[0]);
    io.lock().write(0x10, &0x0f00_0000u32.to_le_bytes());
    assert_eq!(read_indirect(&io, 0), 0x0f00_0000);
    assert_eq!(read_indirect(&io, 2), 0x0f00_0000, "arbitration ID");
    // Reset: every entry masked.
    for pin in 0..24u8 {
        assert_eq!(read_indirect(&io, 0x10 + 2 * pin), 0x1_0000);
    }
    // Delivery status and remote IRR are read-only.
    set_entry(&io, 3, 0xff00_0000_0001_ffff);
    assert_eq!(read_indirect(&io, 0x16), 0x0001_afff);
    assert_eq!(read_indirect(&io, 0x17), 0xff00_0000);
    // IOREGSEL reads back.
    let mut b = [0u8; 4];
    io.lock().read(0, &mut b);
    assert_eq!(b[0], 0x17);
}

#[test]
fn ioapic_edge_inputs() {
    let (_, cpus, io) = ioapic_system();
    set_entry(&io, 4, (1 << 56) | 0x34); // fixed, physical, dest APIC 1, edge
    io.lock().set_irq(4, true);
    io.lock().set_irq(4, true); // held high: no new edge
    assert_eq!(ack(&cpus[1]), Some(0x34));
    eoi(&cpus[1]);
    assert_eq!(ack(&cpus[1]), None);
    io.lock().set_irq(4, false);
    // An edge while masked is ignored (82093AA: neither delivered nor held pending).
    set_entry(&io, 4, (1 << 56) | 0x1_0034);
    io.lock().set_irq(4, true);
    io.lock().set_irq(4, false);
    assert_eq!(read_indirect(&io, 0x18) & (1 << 12), 0, "nothing pending");
    set_entry(&io, 4, (1 << 56) | 0x34);
    assert_eq!(ack(&cpus[1]), None);
    io.lock().set_irq(4, true);
    assert_eq!(ack(&cpus[1]), Some(0x34));
}

#[test]
fn ioapic_level_request_waits_while_masked() {
    let (_, cpus, io) = ioapic_system();
    // A level-triggered pin asserted while masked is sent once unmasked (it is still
    // asserted), with delivery status showing the wait.
    set_entry(&io, 10, 0x1_803a);
    io.lock().set_irq(10, true);
    assert_ne!(read_indirect(&io, 0x24) & (1 << 12), 0, "delivery status");
    assert_eq!(ack(&cpus[0]), None);
    set_entry(&io, 10, 0x803a);
    assert_eq!(ack(&cpus[0]), Some(0x3a));
    assert_eq!(read_indirect(&io, 0x24) & (1 << 12), 0);
}

#[test]
fn ioapic_level_inputs_and_remote_irr() {
    let (_, cpus, io) = ioapic_system();
    set_entry(&io, 9, 0x8039); // level, vector 0x39, dest APIC 0
    io.lock().set_irq(9, true);
    assert_ne!(read_indirect(&io, 0x22) & (1 << 14), 0, "remote IRR");
    assert_eq!(ack(&cpus[0]), Some(0x39));
    // The TMR bit makes the EOI a broadcast: remote IRR clears and the still
    // asserted line sends again.
    eoi(&cpus[0]);
    assert_ne!(
        read_indirect(&io, 0x22) & (1 << 14),
        0,
        "set again by the resend"
    );
    assert_eq!(ack(&cpus[0]), Some(0x39));
    // De-asserted before the EOI: nothing more.
    io.lock().set_irq(9, false);
    eoi(&cpus[0]);
    assert_eq!(read_indirect(&io, 0x22) & (1 << 14), 0);
    assert_eq!(ack(&cpus[0]), None);
    // While remote IRR is set, a re-assert does not send twice.
    io.lock().set_irq(9, true);
    io.lock().set_irq(9, false);
    io.lock().set_irq(9, true);
    assert_eq!(ack(&cpus[0]), Some(0x39));
    assert_eq!(ack(&cpus[0]), None);
    // An EOI for another vector leaves it.
    cpus[0].bus.broadcast_eoi(0x38);
    assert_ne!(read_indirect(&io, 0x22) & (1 << 14), 0);
}

#[test]
fn ioapic_nmi_and_extint() {
    let (_, cpus, io) = ioapic_system();
    set_entry(&io, 5, (1 << 56) | 0x400); // NMI to APIC 1
    io.lock().set_irq(5, true);
    assert_eq!(cpus[1].lapic.lock().take_event(), Some(CpuEvent::Nmi));
    set_entry(&io, 6, 0x700); // ExtINT to APIC 0
    io.lock().set_irq(6, true);
    let mut l = cpus[0].lapic.lock();
    assert!(l.has_interrupt());
    assert!(l.take_extint());
    assert!(!l.take_extint());
}

#[test]
fn router_wires_isa_irqs_to_pic_and_ioapic() {
    let (_, cpus, io) = ioapic_system();
    let pic = PicPair::new_shared();
    let r = ApicIrqRouter::new(pic.clone(), io.clone());
    set_entry(&io, 2, 0x30);
    set_entry(&io, 17, 0x47);
    set_entry(&io, 4, 0x44);
    // GSI 0 (IRQ 0) -> IOAPIC pin 2 and PIC IRQ 0.
    r.set_irq(0, true);
    r.set_irq(0, false);
    assert_eq!(ack(&cpus[0]), Some(0x30));
    assert!(
        pic.lock().pending(),
        "PIC IRQ 0 latched too (IMR is 0 at reset)"
    );
    eoi(&cpus[0]);
    // GSI 2 goes nowhere (cascade / IRQ 0's pin).
    r.set_irq(2, true);
    assert_eq!(ack(&cpus[0]), None);
    r.set_irq(17, true);
    assert_eq!(ack(&cpus[0]), Some(0x47));
    eoi(&cpus[0]);
    r.set_irq(4, true);
    assert_eq!(ack(&cpus[0]), Some(0x44));
    assert_eq!(ApicIrqRouter::ioapic_pin(24), None);
    assert_eq!(ApicIrqRouter::ioapic_pin(23), Some(23));
}

#[test]
fn messages_without_targets_go_nowhere() {
    let (bus, cpus) = system(2);
    bus.deliver(&Message::fixed(0x70, 9));
    bus.deliver(&Message {
        mode: DeliveryMode::LowestPriority,
        ..Message::fixed(0x71, 9)
    });
    assert!(cpus.iter().all(|h| ack(h).is_none()));
}
