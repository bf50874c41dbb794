//! Intel 8259A programmable interrupt controllers: the PC/AT master/slave pair.
//!
//! The master sits at ports 0x20/0x21 and receives ISA IRQs 0-7; the slave sits at
//! 0xA0/0xA1, receives IRQs 8-15 and is cascaded into the master's IR2. The PIIX
//! edge/level control registers (ELCR) at 0x4D0/0x4D1 select the trigger mode per IRQ.
//!
//! Register semantics follow the 8259A datasheet (Intel 231468):
//! * a write to the command port with bit 4 set is ICW1 and starts initialization,
//!   followed by ICW2 (vector base), ICW3 (cascade, unless single mode) and ICW4 (if
//!   ICW1.IC4) on the data port;
//! * afterwards the data port is OCW1 (the interrupt mask register), command-port
//!   writes with bit 3 clear are OCW2 (EOI and rotation) and with bit 3 set OCW3
//!   (read-register select, poll, special mask mode).
//!
//! The CPU side is [`PicPair::pending`] (the master's INTR output) and
//! [`PicPair::acknowledge`] (the two INTA cycles, returning the vector). Devices reach
//! the pair through [`PicIrqChip`], an [`IrqChip`] for GSIs 0-15.

use parking_lot::Mutex;
use std::sync::Arc;
use vireo_core::{Bus, BusDevice, IrqChip};

const LOG: &str = "vireo::dev::pic";

/// Master command/data ports.
pub const MASTER_BASE: u64 = 0x20;
/// Slave command/data ports.
pub const SLAVE_BASE: u64 = 0xA0;
/// ELCR1 (IRQ 0-7) and ELCR2 (IRQ 8-15).
pub const ELCR_BASE: u64 = 0x4D0;
/// Length of each of the three port ranges.
pub const PORTS_LEN: u64 = 2;

/// The master IR input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// Number of ISA IRQs the pair serves.
pub const NUM_IRQS: u8 = 16;

// ICW1 (command port, bit 4 set).
const ICW1_INIT: u8 = 0x10;
const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
// ICW2: vector base (T7-T3); the low three bits come from the IR number.
const ICW2_VECTOR_MASK: u8 = 0xF8;
// ICW4.
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
// OCW3 (command port, bits 4:3 = 01).
const OCW3_SELECT: u8 = 0x08;
const OCW3_RIS: u8 = 0x01;
const OCW3_RR: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SMM: u8 = 0x20;
const OCW3_ESMM: u8 = 0x40;
/// Poll-mode result: bit 7 = an interrupt is pending, bits 2:0 = its level.
const POLL_PENDING: u8 = 0x80;
/// The IR reported for a spurious interrupt (lowest priority of each chip).
const SPURIOUS_IR: u8 = 7;

/// ELCR bits that must stay 0 (edge): IRQ 0, 1, 2 on the master, 8 and 13 on the
/// slave (PIIX3 datasheet, ELCR1/ELCR2).
const ELCR_MASK: [u8; 2] = [0xF8, 0xDE];

/// Where an initialization sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Pic8259 {
    master: bool,
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current input levels, for edge detection.
    last_level: u8,
    /// Edge/level control register (PIIX ELCR).
    elcr: u8,
    /// ICW1.LTIM: all inputs level-triggered.
    ltim: bool,
    /// The IR with the lowest priority is `priority_add - 1` (rotation).
    priority_add: u8,
    vector_base: u8,
    init: InitState,
    icw4_needed: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    read_isr: bool,
    poll: bool,
}

impl Pic8259 {
    fn new(master: bool) -> Pic8259 {
        Pic8259 {
            master,
            irr: 0,
            isr: 0,
            imr: 0,
            last_level: 0,
            elcr: 0,
            ltim: false,
            priority_add: 0,
            vector_base: 0,
            init: InitState::Ready,
            icw4_needed: false,
            single: false,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_fully_nested: false,
            special_mask: false,
            read_isr: false,
            poll: false,
        }
    }

    fn is_level(&self, ir: u8) -> bool {
        let bit = 1u8 << (ir & 7);
        // The cascade input follows the slave's INT output as a level: the slave
        // holds INT while it has a request, which the master must keep seeing.
        self.ltim || self.elcr & bit != 0 || (self.master && ir == CASCADE_IRQ)
    }

    /// Drives input `ir` to `level`.
    fn set_input(&mut self, ir: u8, level: bool) {
        let ir = ir & 7;
        let bit = 1u8 << ir;
        if self.is_level(ir) {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.last_level & bit == 0 {
            // Edge mode: only a rising edge sets the request.
            self.irr |= bit;
        }
        if level {
            self.last_level |= bit;
        } else {
            self.last_level &= !bit;
        }
    }

    /// The highest priority (0 = highest) of the bits in `mask`, 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8)
            .find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The IR that would be delivered now, honouring masks, in-service levels,
    /// special mask mode and special fully nested mode.
    fn highest_request(&self) -> Option<u8> {
        let req = self.priority(self.irr & !self.imr);
        if req == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            // SMM: a masked in-service level does not block other levels.
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.master {
            // SFNM: more slave requests may interrupt a slave request in service.
            in_service &= !(1 << CASCADE_IRQ);
        }
        (req < self.priority(in_service)).then_some((req + self.priority_add) & 7)
    }

    /// The INTA bookkeeping for `ir`: set ISR (or auto-EOI) and clear an edge request.
    fn ack(&mut self, ir: u8) {
        let bit = 1u8 << (ir & 7);
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (ir + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if !self.is_level(ir) {
            self.irr &= !bit;
        }
    }

    /// ICW1: reset to the datasheet's post-ICW1 state (ELCR is a PIIX register and
    /// survives).
    fn icw1(&mut self, val: u8) {
        *self = Pic8259 {
            elcr: self.elcr,
            // Level-triggered requests still asserted stay visible.
            irr: self.irr & self.elcr,
            init: InitState::Icw2,
            icw4_needed: val & ICW1_IC4 != 0,
            single: val & ICW1_SNGL != 0,
            ltim: val & ICW1_LTIM != 0,
            ..Pic8259::new(self.master)
        };
    }

    /// OCW2: EOI and rotation commands (bits 7:5 = R, SL, EOI; bits 2:0 = level).
    fn ocw2(&mut self, val: u8) {
        let level = val & 7;
        match val >> 5 {
            // Clear / set rotate in automatic EOI mode.
            0 => self.rotate_on_auto_eoi = false,
            4 => self.rotate_on_auto_eoi = true,
            // Non-specific EOI (1), rotate on non-specific EOI (5).
            cmd @ (1 | 5) => {
                let p = self.priority(self.isr);
                if p != 8 {
                    let ir = (p + self.priority_add) & 7;
                    self.isr &= !(1 << ir);
                    if cmd == 5 {
                        self.priority_add = (ir + 1) & 7;
                    }
                }
            }
            // Specific EOI.
            3 => self.isr &= !(1 << level),
            // Set priority: `level` becomes the lowest priority.
            6 => self.priority_add = (level + 1) & 7,
            // Rotate on specific EOI.
            7 => {
                self.isr &= !(1 << level);
                self.priority_add = (level + 1) & 7;
            }
            // 2: no operation.
            _ => {}
        }
    }

    fn ocw3(&mut self, val: u8) {
        if val & OCW3_POLL != 0 {
            self.poll = true;
        }
        if val & OCW3_RR != 0 {
            self.read_isr = val & OCW3_RIS != 0;
        }
        if val & OCW3_ESMM != 0 {
            self.special_mask = val & OCW3_SMM != 0;
        }
    }

    fn write_command(&mut self, val: u8) {
        if val & ICW1_INIT != 0 {
            log::debug!(target: LOG, "{} ICW1 {val:#04x}", self.label());
            self.icw1(val);
        } else if val & OCW3_SELECT != 0 {
            self.ocw3(val);
        } else {
            self.ocw2(val);
        }
    }

    fn write_data(&mut self, val: u8) {
        match self.init {
            InitState::Ready => self.imr = val,
            InitState::Icw2 => {
                self.vector_base = val & ICW2_VECTOR_MASK;
                self.init = match (self.single, self.icw4_needed) {
                    (false, _) => InitState::Icw3,
                    (true, true) => InitState::Icw4,
                    (true, false) => InitState::Ready,
                };
            }
            // The cascade wiring is fixed on a PC: ICW3 is accepted and ignored.
            InitState::Icw3 => {
                self.init = if self.icw4_needed {
                    InitState::Icw4
                } else {
                    InitState::Ready
                };
            }
            InitState::Icw4 => {
                self.auto_eoi = val & ICW4_AEOI != 0;
                self.special_fully_nested = val & ICW4_SFNM != 0;
                self.init = InitState::Ready;
                log::debug!(target: LOG, "{} initialized: base {:#04x}, ICW4 {val:#04x}",
                    self.label(), self.vector_base);
            }
        }
    }

    fn label(&self) -> &'static str {
        if self.master {
            "master"
        } else {
            "slave"
        }
    }
}

/// Which register block of the pair a port range maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PicPorts {
    /// 0x20/0x21.
    Master,
    /// 0xA0/0xA1.
    Slave,
    /// 0x4D0/0x4D1.
    Elcr,
}

/// Called when the INTR output may have gone high (to wake a halted vCPU). It runs
/// with the pair locked and must not lock it again.
pub type IntrNotify = Box<dyn Fn() + Send + Sync>;

/// The cascaded master/slave pair of a PC/AT.
pub struct PicPair {
    chips: [Pic8259; 2],
    notify: Option<IntrNotify>,
}

impl Default for PicPair {
    fn default() -> Self {
        PicPair::new()
    }
}

impl std::fmt::Debug for PicPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PicPair")
            .field("master", &self.chips[0])
            .field("slave", &self.chips[1])
            .finish()
    }
}

/// A pair shared between the buses, the IRQ chip wrapper and the CPU engine.
pub type SharedPic = Arc<Mutex<PicPair>>;

impl PicPair {
    /// A pair in its power-on state (no vectors programmed, all inputs edge).
    pub fn new() -> PicPair {
        PicPair {
            chips: [Pic8259::new(true), Pic8259::new(false)],
            notify: None,
        }
    }

    /// A pair ready to be shared.
    pub fn new_shared() -> SharedPic {
        Arc::new(Mutex::new(PicPair::new()))
    }

    /// Installs the INTR notifier (see [`IntrNotify`]).
    pub fn set_intr_notify(&mut self, notify: IntrNotify) {
        self.notify = Some(notify);
    }

    /// Registers the master, slave and ELCR ports of `pic` on `bus`.
    pub fn register(pic: &SharedPic, bus: &mut Bus) -> vireo_core::Result<()> {
        for (base, ports) in [
            (MASTER_BASE, PicPorts::Master),
            (SLAVE_BASE, PicPorts::Slave),
            (ELCR_BASE, PicPorts::Elcr),
        ] {
            bus.insert(
                base,
                PORTS_LEN,
                Arc::new(Mutex::new(PicIo::new(pic.clone(), ports))),
            )?;
        }
        Ok(())
    }

    /// Drives ISA IRQ `irq` (0-15) to `level`. Out-of-range IRQs are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        if irq >= NUM_IRQS {
            log::warn!(target: LOG, "set_irq: no IRQ {irq}");
            return;
        }
        let was = self.pending();
        self.chips[usize::from(irq >> 3)].set_input(irq & 7, level);
        self.update(was);
    }

    /// Propagates the slave's INT output to the master's cascade input and notifies
    /// a rising INTR.
    fn update(&mut self, was_pending: bool) {
        let slave_int = self.chips[1].highest_request().is_some();
        self.chips[0].set_input(CASCADE_IRQ, slave_int);
        if !was_pending && self.pending() {
            if let Some(n) = &self.notify {
                n();
            }
        }
    }

    /// The master's INTR output: an interrupt is waiting for an INTA cycle.
    pub fn pending(&self) -> bool {
        self.chips[0].highest_request().is_some()
    }

    /// The INTA cycle: returns the vector of the highest-priority request and marks
    /// it in service. Without a request it returns the spurious vector (IR7 of the
    /// master, or IR7 of the slave when the cascade request vanished), as the 8259A
    /// does; a spurious IR7 sets no ISR bit.
    pub fn acknowledge(&mut self) -> u8 {
        let was = self.pending();
        let vector = match self.chips[0].highest_request() {
            Some(CASCADE_IRQ) => {
                let slave_ir = match self.chips[1].highest_request() {
                    Some(ir) => {
                        self.chips[1].ack(ir);
                        ir
                    }
                    None => {
                        log::debug!(target: LOG, "spurious IRQ 15");
                        SPURIOUS_IR
                    }
                };
                self.chips[0].ack(CASCADE_IRQ);
                self.chips[1].vector_base | slave_ir
            }
            Some(ir) => {
                self.chips[0].ack(ir);
                self.chips[0].vector_base | ir
            }
            None => {
                log::debug!(target: LOG, "spurious IRQ 7");
                self.chips[0].vector_base | SPURIOUS_IR
            }
        };
        self.update(was);
        vector
    }

    /// Poll command read (OCW3 P=1): the next read of `chip` returns
    /// `0x80 | level` and acknowledges it, or 0 when nothing is pending.
    fn poll_read(&mut self, chip: usize) -> u8 {
        let was = self.pending();
        let c = &mut self.chips[chip];
        c.poll = false;
        let result = match c.highest_request() {
            Some(ir) => {
                c.ack(ir);
                POLL_PENDING | ir
            }
            None => 0,
        };
        if chip == 0 && result == POLL_PENDING | CASCADE_IRQ {
            // Polling the master for a cascaded request also services the slave.
            if let Some(ir) = self.chips[1].highest_request() {
                self.chips[1].ack(ir);
            }
        }
        self.update(was);
        result
    }

    /// Reads a register of `ports` at `offset` (0 or 1).
    pub fn read_port(&mut self, ports: PicPorts, offset: u64) -> u8 {
        let chip = match ports {
            PicPorts::Master => 0,
            PicPorts::Slave => 1,
            PicPorts::Elcr => return self.chips.get(offset as usize).map_or(0xFF, |c| c.elcr),
        };
        if self.chips[chip].poll {
            return self.poll_read(chip);
        }
        let c = &self.chips[chip];
        match offset {
            0 if c.read_isr => c.isr,
            0 => c.irr,
            _ => c.imr,
        }
    }

    /// Writes a register of `ports` at `offset` (0 or 1).
    pub fn write_port(&mut self, ports: PicPorts, offset: u64, val: u8) {
        let was = self.pending();
        match ports {
            PicPorts::Master | PicPorts::Slave => {
                let c = &mut self.chips[usize::from(ports == PicPorts::Slave)];
                if offset == 0 {
                    c.write_command(val);
                } else {
                    c.write_data(val);
                }
            }
            PicPorts::Elcr => {
                let i = usize::from(offset != 0);
                self.chips[i].elcr = val & ELCR_MASK[i];
                log::debug!(target: LOG, "ELCR{} = {:#04x}", i + 1, self.chips[i].elcr);
            }
        }
        self.update(was);
    }

    /// The ELCR as a 16-bit mask (bit n = IRQ n level-triggered).
    pub fn elcr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].elcr, self.chips[1].elcr])
    }

    /// Sets the ELCR (firmware may preset it; reserved bits are kept at 0).
    pub fn set_elcr(&mut self, elcr: u16) {
        let was = self.pending();
        let [lo, hi] = elcr.to_le_bytes();
        self.chips[0].elcr = lo & ELCR_MASK[0];
        self.chips[1].elcr = hi & ELCR_MASK[1];
        self.update(was);
    }

    /// The combined interrupt mask register (bit n = IRQ n masked).
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].imr, self.chips[1].imr])
    }
}

/// One port range of a [`PicPair`] on a bus.
pub struct PicIo {
    pic: SharedPic,
    ports: PicPorts,
}

impl PicIo {
    pub fn new(pic: SharedPic, ports: PicPorts) -> PicIo {
        PicIo { pic, ports }
    }
}

impl BusDevice for PicIo {
    fn name(&self) -> &str {
        match self.ports {
            PicPorts::Master => "pic-master",
            PicPorts::Slave => "pic-slave",
            PicPorts::Elcr => "pic-elcr",
        }
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pic = self.pic.lock();
        for (i, b) in data.iter_mut().enumerate() {
            *b = pic.read_port(self.ports, offset.wrapping_add(i as u64) & 1);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pic = self.pic.lock();
        for (i, b) in data.iter().enumerate() {
            pic.write_port(self.ports, offset.wrapping_add(i as u64) & 1, *b);
        }
    }
}

/// The pair as an [`IrqChip`]: GSIs 0-15 are the ISA IRQs; others are ignored.
#[derive(Clone)]
pub struct PicIrqChip(pub SharedPic);

impl IrqChip for PicIrqChip {
    fn set_irq(&self, gsi: u32, level: bool) {
        match u8::try_from(gsi) {
            Ok(irq) if irq < NUM_IRQS => self.0.lock().set_irq(irq, level),
            _ => log::trace!(target: LOG, "GSI {gsi} is not wired to the PIC"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vireo_core::IrqLine;

    /// Linux's `init_8259A` (arch/x86/kernel/i8259.c), with IRQ 2 unmasked.
    fn linux_init(p: &mut PicPair) {
        use PicPorts::*;
        p.write_port(Master, 1, 0xFF); // mask all
        p.write_port(Slave, 1, 0xFF);
        p.write_port(Master, 0, 0x11); // ICW1: edge, cascade, ICW4
        p.write_port(Master, 1, 0x30); // ICW2: vectors 0x30-0x37
        p.write_port(Master, 1, 1 << CASCADE_IRQ); // ICW3: slave on IR2
        p.write_port(Master, 1, 0x01); // ICW4: 8086 mode, normal EOI
        p.write_port(Slave, 0, 0x11);
        p.write_port(Slave, 1, 0x38);
        p.write_port(Slave, 1, CASCADE_IRQ); // ICW3: slave ID
        p.write_port(Slave, 1, 0x01);
        p.write_port(Master, 1, 0xFB); // everything masked but the cascade
        p.write_port(Slave, 1, 0xFF);
    }

    fn unmask(p: &mut PicPair, irq: u8) {
        let (ports, chip) = if irq < 8 {
            (PicPorts::Master, 0)
        } else {
            (PicPorts::Slave, 1)
        };
        let imr = p.chips[chip].imr & !(1 << (irq & 7));
        p.write_port(ports, 1, imr);
    }

    fn eoi(p: &mut PicPair, irq: u8) {
        if irq >= 8 {
            p.write_port(PicPorts::Slave, 0, 0x20);
        }
        p.write_port(PicPorts::Master, 0, 0x20);
    }

    #[test]
    fn linux_init_sequence() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        assert_eq!(p.chips[0].vector_base, 0x30);
        assert_eq!(p.chips[1].vector_base, 0x38);
        assert_eq!(p.chips[0].init, InitState::Ready);
        assert_eq!(p.chips[1].init, InitState::Ready);
        assert_eq!(p.read_port(PicPorts::Master, 1), 0xFB);
        assert_eq!(p.imr(), 0xFFFB);
        // Masked request: INTR stays low.
        p.set_irq(0, true);
        assert!(!p.pending());
        unmask(&mut p, 0);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn priority_and_eoi() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p.write_port(PicPorts::Master, 1, 0);
        p.set_irq(4, true);
        p.set_irq(1, true);
        // IR1 beats IR4 (fixed priority, IR0 highest).
        assert_eq!(p.acknowledge(), 0x31);
        // IR4 is blocked while the higher-priority IR1 is in service.
        assert!(!p.pending());
        // OCW3 read ISR / IRR.
        p.write_port(PicPorts::Master, 0, 0x0B);
        assert_eq!(p.read_port(PicPorts::Master, 0), 0x02);
        p.write_port(PicPorts::Master, 0, 0x0A);
        assert_eq!(p.read_port(PicPorts::Master, 0), 0x10);
        // A higher-priority request nests over IR1.
        p.set_irq(0, true);
        assert_eq!(p.acknowledge(), 0x30);
        // Non-specific EOI clears the highest in-service level (IR0).
        p.write_port(PicPorts::Master, 0, 0x20);
        assert_eq!(p.chips[0].isr, 0x02);
        assert!(!p.pending());
        // Specific EOI for IR1.
        p.write_port(PicPorts::Master, 0, 0x61);
        assert_eq!(p.chips[0].isr, 0);
        assert_eq!(p.acknowledge(), 0x34);
    }

    #[test]
    fn rotation() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p.write_port(PicPorts::Master, 1, 0);
        // Set priority: IR3 lowest, so IR4 is now highest.
        p.write_port(PicPorts::Master, 0, 0xC3);
        p.set_irq(0, true);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x35);
        // Rotate on non-specific EOI: IR5 becomes lowest, IR6 highest.
        p.write_port(PicPorts::Master, 0, 0xA0);
        assert_eq!(p.chips[0].priority_add, 6);
        p.set_irq(5, false);
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x30);
    }

    #[test]
    fn masking_and_special_mask_mode() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p.write_port(PicPorts::Master, 1, 0);
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x33);
        p.set_irq(5, true);
        assert!(!p.pending(), "IR5 is blocked by IR3 in service");
        // The handler masks IR3 and enters special mask mode: IR5 gets through.
        p.write_port(PicPorts::Master, 1, 0x08);
        p.write_port(PicPorts::Master, 0, 0x68);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x35);
        // Leaving SMM restores normal nesting.
        p.write_port(PicPorts::Master, 0, 0x48);
        assert!(!p.chips[0].special_mask);
    }

    #[test]
    fn edge_versus_level() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p.write_port(PicPorts::Master, 1, 0);
        p.write_port(PicPorts::Slave, 1, 0);
        // Edge: a held line requests once.
        p.set_irq(3, true);
        assert_eq!(p.acknowledge(), 0x33);
        eoi(&mut p, 3);
        assert!(!p.pending());
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x33);
        eoi(&mut p, 3);
        // Level (ELCR bit 11): requests again after EOI while the line stays high.
        p.write_port(PicPorts::Elcr, 1, 0x08);
        assert_eq!(p.elcr(), 0x0800);
        p.set_irq(11, true);
        assert_eq!(p.acknowledge(), 0x3B);
        eoi(&mut p, 11);
        assert!(p.pending());
        assert_eq!(p.acknowledge(), 0x3B);
        p.set_irq(11, false);
        eoi(&mut p, 11);
        assert!(!p.pending());
        // Reserved ELCR bits (IRQ 0, 1, 2, 8, 13) stay edge.
        p.write_port(PicPorts::Elcr, 0, 0xFF);
        p.write_port(PicPorts::Elcr, 1, 0xFF);
        assert_eq!(p.read_port(PicPorts::Elcr, 0), 0xF8);
        assert_eq!(p.read_port(PicPorts::Elcr, 1), 0xDE);
    }

    #[test]
    fn cascade_through_irqchip() {
        let pic = PicPair::new_shared();
        linux_init(&mut pic.lock());
        unmask(&mut pic.lock(), 14);
        unmask(&mut pic.lock(), 8);
        let chip: Arc<dyn IrqChip> = Arc::new(PicIrqChip(pic.clone()));
        let ide = IrqLine::new(chip.clone(), 14);
        let rtc = IrqLine::new(chip.clone(), 8);
        ide.pulse();
        rtc.raise();
        let mut p = pic.lock();
        assert!(p.pending());
        // IRQ8 outranks IRQ14 on the slave.
        assert_eq!(p.acknowledge(), 0x38);
        assert_eq!(p.chips[0].isr, 1 << CASCADE_IRQ);
        assert_eq!(p.chips[1].isr, 0x01);
        assert!(!p.pending());
        eoi(&mut p, 8);
        assert_eq!(p.acknowledge(), 0x3E);
        eoi(&mut p, 14);
        assert!(!p.pending());
        // GSIs past 15 are ignored.
        drop(p);
        IrqLine::new(chip, 20).raise();
        assert!(!pic.lock().pending());
    }

    #[test]
    fn spurious_interrupts() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p.write_port(PicPorts::Master, 1, 0);
        p.write_port(PicPorts::Slave, 1, 0);
        // Nothing pending: master IR7, no ISR bit.
        assert_eq!(p.acknowledge(), 0x37);
        assert_eq!(p.chips[0].isr, 0);
        // A slave request that vanishes before INTA: slave IR7, master ISR2 set.
        p.write_port(PicPorts::Elcr, 1, 0x02); // IRQ9 level
        p.set_irq(9, true);
        assert!(p.pending());
        p.chips[1].irr = 0; // the line dropped between INTR and INTA
        assert_eq!(p.acknowledge(), 0x3F);
        assert_eq!(p.chips[1].isr, 0);
        assert_eq!(p.chips[0].isr, 1 << CASCADE_IRQ);
    }

    #[test]
    fn auto_eoi_and_poll() {
        let mut p = PicPair::new();
        p.write_port(PicPorts::Master, 0, 0x13); // single, ICW4
        p.write_port(PicPorts::Master, 1, 0x08); // ICW2 (no ICW3 in single mode)
        p.write_port(PicPorts::Master, 1, 0x03); // ICW4: AEOI
        assert_eq!(p.chips[0].init, InitState::Ready);
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x09);
        assert_eq!(p.chips[0].isr, 0, "auto-EOI leaves nothing in service");
        // Poll mode.
        p.set_irq(6, true);
        p.write_port(PicPorts::Master, 0, 0x0C);
        assert_eq!(p.read_port(PicPorts::Master, 0), 0x86);
        p.write_port(PicPorts::Master, 0, 0x0C);
        assert_eq!(p.read_port(PicPorts::Master, 1), 0x00);
    }

    #[test]
    fn intr_notifier_and_bus() {
        let pic = PicPair::new_shared();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        pic.lock().set_intr_notify(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        let mut bus = Bus::new("pio");
        PicPair::register(&pic, &mut bus).unwrap();
        for (port, val) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            bus.write(port, &[val]);
        }
        bus.write(0x21, &[0x00]);
        pic.lock().set_irq(0, true);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let mut b = [0u8; 1];
        bus.write(0x20, &[0x0A]);
        bus.read(0x20, &mut b);
        assert_eq!(b[0], 0x01);
        bus.write(0x4D1, &[0x40]);
        bus.read(0x4D1, &mut b);
        assert_eq!(b[0], 0x40);
        assert_eq!(pic.lock().acknowledge(), 0x20);
    }
}
