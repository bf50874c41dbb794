//! HPET tests on a manual clock: registers, the main counter, one-shot, periodic and
//! 32-bit comparators, legacy routing, level-triggered status. Expected values from
//! the IA-PC HPET specification 1.0a (100 MHz: one tick per 10 ns).

use super::*;
use vireo_core::irq::IrqRecorder;

fn setup() -> (Arc<VirtualClock>, Arc<IrqRecorder>, Hpet) {
    let clock = VirtualClock::manual();
    let rec = IrqRecorder::new();
    let lines = (0..NUM_LINES as u32).map(|g| rec.line(g)).collect();
    let h = Hpet::new(clock.clone(), lines);
    (clock, rec, h)
}

fn r64(h: &mut Hpet, off: u64) -> u64 {
    let mut b = [0u8; 8];
    h.read(off, &mut b);
    u64::from_le_bytes(b)
}

fn r32(h: &mut Hpet, off: u64) -> u32 {
    let mut b = [0u8; 4];
    h.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w64(h: &mut Hpet, off: u64, v: u64) {
    h.write(off, &v.to_le_bytes());
}

fn w32(h: &mut Hpet, off: u64, v: u32) {
    h.write(off, &v.to_le_bytes());
}

fn tcfg(i: u64) -> u64 {
    0x100 + 0x20 * i
}

fn tcmp(i: u64) -> u64 {
    0x108 + 0x20 * i
}

#[test]
fn capabilities() {
    let (_, _, mut h) = setup();
    // Period 10^7 fs (10 ns) in 63:32; vendor 8086h in 31:16; LEG_RT_CAP (15),
    // COUNT_SIZE_CAP (13), NUM_TIM_CAP = 2 (12:8), REV_ID 1.
    assert_eq!(r64(&mut h, 0), 0x0098_9680_8086_a201);
    assert_eq!(r32(&mut h, 4), 0x0098_9680);
    // Timers: periodic and 64-bit capable, routes 16-23 in 63:32.
    for i in 0..3 {
        assert_eq!(r64(&mut h, tcfg(i)), 0x00ff_0000_0000_0030);
        assert_eq!(r64(&mut h, tcmp(i)), u64::MAX);
        assert_eq!(r64(&mut h, tcfg(i) + 0x10), 0, "no FSB route");
    }
    // Read-only and reserved bits stay.
    w64(&mut h, 0, 0);
    assert_eq!(r64(&mut h, 0), 0x0098_9680_8086_a201);
    w64(&mut h, 0x10, u64::MAX);
    assert_eq!(r64(&mut h, 0x10), 3);
}

#[test]
fn main_counter_runs_only_when_enabled() {
    let (clock, _, mut h) = setup();
    clock.set(5_000);
    assert_eq!(r64(&mut h, 0xf0), 0);
    w64(&mut h, 0x10, 1);
    clock.set(6_000);
    assert_eq!(r64(&mut h, 0xf0), 100, "1 us = 100 ticks");
    w64(&mut h, 0x10, 0);
    clock.set(9_000);
    assert_eq!(r64(&mut h, 0xf0), 100, "halted");
    w64(&mut h, 0xf0, 0x1_0000_0000);
    assert_eq!(r32(&mut h, 0xf4), 1);
    w64(&mut h, 0x10, 1);
    clock.set(9_010);
    assert_eq!(r32(&mut h, 0xf0), 1);
    assert_eq!(r64(&mut h, 0xf0), 0x1_0000_0001);
}

#[test]
fn one_shot_legacy_timer0_drives_gsi0() {
    let (clock, rec, mut h) = setup();
    w64(&mut h, tcfg(0), tn::INT_ENABLE);
    w64(&mut h, tcmp(0), 1000); // 10 us
    w64(&mut h, 0x10, cfg::ENABLE | cfg::LEGACY);
    assert!(h.legacy_flag().load(Ordering::SeqCst));
    assert_eq!(h.poll_timer(0), Some(10_000));
    clock.set(10_000);
    assert_eq!(h.poll_timer(10_000), None, "64-bit one-shot: once");
    assert_eq!(rec.rising_edges(0), 1);
    assert_eq!(rec.rising_edges(8), 0);
    // The comparator is unchanged by a one-shot match.
    assert_eq!(r64(&mut h, tcmp(0)), 1000);
    // Timer 1 in legacy mode uses GSI 8.
    w64(&mut h, tcfg(1), tn::INT_ENABLE);
    w64(&mut h, tcmp(1), 1500);
    clock.set(15_000);
    h.poll_timer(15_000);
    assert_eq!(rec.rising_edges(8), 1);
    // A comparator already passed does not fire (it matches only on equality).
    w64(&mut h, tcmp(0), 10);
    assert_eq!(h.poll_timer(15_000), None);
}

#[test]
fn periodic_timer_adds_its_period() {
    let (clock, rec, mut h) = setup();
    // Linux's sequence: SETVAL, comparator = first match, then the period alone.
    w64(
        &mut h,
        tcfg(0),
        tn::INT_ENABLE | tn::PERIODIC | tn::VAL_SET | (16 << tn::ROUTE_SHIFT),
    );
    w64(&mut h, tcmp(0), 3000);
    w64(&mut h, tcmp(0), 2000);
    assert_eq!(
        r64(&mut h, tcmp(0)),
        3000,
        "the second write set only the period"
    );
    assert_eq!(
        r64(&mut h, tcfg(0)) & tn::VAL_SET,
        0,
        "SETVAL clears itself"
    );
    w64(&mut h, 0x10, cfg::ENABLE);
    assert_eq!(h.poll_timer(0), Some(30_000));
    clock.set(30_000);
    assert_eq!(h.poll_timer(30_000), Some(50_000));
    assert_eq!(r64(&mut h, tcmp(0)), 5000, "next match");
    clock.set(50_000);
    h.poll_timer(50_000);
    assert_eq!(rec.rising_edges(16), 2);
    // Late: one interrupt, the comparator moves past the counter on the grid.
    clock.set(125_000);
    assert_eq!(h.poll_timer(125_000), Some(130_000));
    assert_eq!(rec.rising_edges(16), 3);
    assert_eq!(r64(&mut h, tcmp(0)), 13_000);
}

/// A periodic comparator with interrupts off (Linux's HPET clockevent after the
/// LAPIC timer took over) wakes nobody, yet reads as if it had kept matching, and
/// fires on the same grid once interrupts are on again.
#[test]
fn a_silent_periodic_comparator_moves_without_waking_the_timer_thread() {
    let (clock, rec, mut h) = setup();
    w64(
        &mut h,
        tcfg(0),
        tn::PERIODIC | tn::VAL_SET | (16 << tn::ROUTE_SHIFT),
    );
    w64(&mut h, tcmp(0), 1000);
    w64(&mut h, tcmp(0), 1000);
    w64(&mut h, 0x10, cfg::ENABLE);
    assert_eq!(h.poll_timer(0), None, "no deadline for a silent comparator");
    clock.set(45_000); // 4500 ticks: matches at 1000, 2000, 3000, 4000
    assert_eq!(h.poll_timer(45_000), None);
    assert_eq!(r64(&mut h, tcmp(0)), 5000, "the comparator kept moving");
    assert_eq!(rec.rising_edges(16), 0);
    // Interrupts on: the next match on the grid fires.
    clock.set(47_000);
    w64(
        &mut h,
        tcfg(0),
        tn::INT_ENABLE | tn::PERIODIC | (16 << tn::ROUTE_SHIFT),
    );
    assert_eq!(h.poll_timer(47_000), Some(50_000));
    clock.set(50_000);
    assert_eq!(h.poll_timer(50_000), Some(60_000));
    assert_eq!(rec.rising_edges(16), 1);
}

#[test]
fn thirty_two_bit_one_shot_matches_again_after_a_wrap() {
    let (clock, rec, mut h) = setup();
    w64(&mut h, 0xf0, 0xffff_ff00);
    w64(
        &mut h,
        tcfg(2),
        tn::INT_ENABLE | tn::MODE32 | (20 << tn::ROUTE_SHIFT),
    );
    w64(&mut h, tcmp(2), 0xdead_0000_0000_0010);
    assert_eq!(r64(&mut h, tcmp(2)), 0x10, "32-bit comparator");
    w64(&mut h, 0x10, cfg::ENABLE);
    // 0xffffff00 -> 0x1_00000010: 0x110 ticks.
    assert_eq!(h.poll_timer(0), Some(0x110 * 10));
    clock.set(0x110 * 10);
    let next = h.poll_timer(0x110 * 10);
    assert_eq!(rec.rising_edges(20), 1);
    assert_eq!(next, Some((0x110 + (1u64 << 32)) * 10));
}

#[test]
fn level_triggered_status() {
    let (clock, rec, mut h) = setup();
    w64(
        &mut h,
        tcfg(2),
        tn::INT_ENABLE | tn::LEVEL | (21 << tn::ROUTE_SHIFT),
    );
    w64(&mut h, tcmp(2), 100);
    w64(&mut h, 0x10, cfg::ENABLE);
    clock.set(1_000);
    h.poll_timer(1_000);
    assert_eq!(r64(&mut h, 0x20), 1 << 2);
    assert_eq!(rec.take(), vec![(21, true)]);
    // Writing 0 changes nothing; writing 1 clears and drops the line.
    w64(&mut h, 0x20, 0);
    assert_eq!(r64(&mut h, 0x20), 1 << 2);
    w64(&mut h, 0x20, 1 << 2);
    assert_eq!(r64(&mut h, 0x20), 0);
    assert_eq!(rec.take(), vec![(21, false)]);
}

#[test]
fn routes_outside_the_capability_are_ignored() {
    let (_, _, mut h) = setup();
    w64(&mut h, tcfg(1), 17 << tn::ROUTE_SHIFT);
    w64(&mut h, tcfg(1), 3 << tn::ROUTE_SHIFT);
    assert_eq!((r64(&mut h, tcfg(1)) >> 9) & 0x1f, 17);
    // FSB enable and capability bits are read-only.
    w64(
        &mut h,
        tcfg(1),
        (1 << 14) | (1 << 15) | (17 << tn::ROUTE_SHIFT),
    );
    assert_eq!(r64(&mut h, tcfg(1)) & 0xc000, 0);
}

#[test]
fn comparator_halves_with_setval() {
    let (_, _, mut h) = setup();
    w64(&mut h, tcfg(0), tn::PERIODIC | tn::VAL_SET);
    w32(&mut h, tcmp(0), 0x1234_5678);
    w64(&mut h, tcfg(0), tn::PERIODIC | tn::VAL_SET);
    w32(&mut h, tcmp(0) + 4, 0x9);
    assert_eq!(r64(&mut h, tcmp(0)), 0x9_1234_5678);
    assert_eq!(r32(&mut h, tcmp(0) + 4), 0x9);
}

#[test]
fn legacy_gate_cuts_the_pit_and_rtc_lines() {
    let (_, rec, mut h) = setup();
    let gate = Arc::new(LegacyGate::new(rec.clone(), h.legacy_flag()));
    let pit = IrqLine::new(gate.clone(), 0);
    pit.pulse();
    assert_eq!(rec.rising_edges(0), 1);
    w64(&mut h, 0x10, cfg::LEGACY);
    pit.pulse();
    assert_eq!(rec.rising_edges(0), 1, "gated");
    w64(&mut h, 0x10, 0);
    pit.pulse();
    assert_eq!(rec.rising_edges(0), 2);
    // Reset turns the route off.
    w64(&mut h, 0x10, cfg::LEGACY);
    h.reset();
    assert!(!h.legacy_flag().load(Ordering::SeqCst));
}

#[test]
fn disabled_hpet_does_not_fire() {
    let (clock, rec, mut h) = setup();
    w64(&mut h, tcfg(0), tn::INT_ENABLE | (16 << tn::ROUTE_SHIFT));
    w64(&mut h, tcmp(0), 10);
    clock.set(1_000);
    assert_eq!(h.poll_timer(1_000), None);
    assert_eq!(rec.rising_edges(16), 0);
}
