//! Intel 8042 PS/2 keyboard controller (data port 0x60, status/command port 0x64)
//! with a minimal PS/2 keyboard and mouse behind it.
//!
//! The controller keeps one output buffer (what port 0x60 reads) fed, in order, from
//! its own command replies, the keyboard and the mouse (aux). A byte in the output
//! buffer asserts IRQ1 (keyboard data) or IRQ12 (aux data) when the command byte
//! enables that interrupt; reading port 0x60 deasserts it, so every byte is a new edge.
//! Commands take effect immediately, so the input buffer is never full (IBF = 0).
//!
//! Output port bit 1 is the A20 gate and bit 0 the CPU reset line (active low), per
//! the IBM PC/AT technical reference; the pulse commands 0xF0-0xFF pulse the low bits
//! of the output port, so 0xFE resets the machine.
//!
//! Port 0x61 belongs to the PIT module: register the two ports separately with
//! [`I8042::register`].

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use vireo_core::{A20Gate, Bus, BusDevice, IrqLine, MachineControl, StopReason};

const LOG: &str = "vireo::dev::i8042";

/// Data port.
pub const DATA_PORT: u64 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u64 = 0x64;

// Status register.
const ST_OBF: u8 = 0x01;
const ST_SYS: u8 = 0x04;
/// A2: the last write was to the command port.
const ST_CMD: u8 = 0x08;
/// Keyboard not inhibited by the key lock.
const ST_UNLOCKED: u8 = 0x10;
const ST_AUX_OBF: u8 = 0x20;

// Command byte (controller RAM byte 0).
const CB_KBD_INT: u8 = 0x01;
const CB_AUX_INT: u8 = 0x02;
const CB_SYS: u8 = 0x04;
const CB_KBD_DISABLE: u8 = 0x10;
const CB_AUX_DISABLE: u8 = 0x20;
const CB_XLATE: u8 = 0x40;
/// What a PC BIOS (SeaBIOS) leaves: keyboard IRQ, system flag, translation, aux off.
const CB_DEFAULT: u8 = CB_KBD_INT | CB_SYS | CB_XLATE | CB_AUX_DISABLE;

// Output port.
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;
const OUT_KBD_OBF: u8 = 0x10;
const OUT_AUX_OBF: u8 = 0x20;
/// Reset line high, A20 on, keyboard clock and data lines high.
const OUT_DEFAULT: u8 = 0xCF;

// Controller commands.
const CMD_READ_RAM: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3F;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7F;
const CMD_AUX_DISABLE: u8 = 0xA7;
const CMD_AUX_ENABLE: u8 = 0xA8;
const CMD_AUX_TEST: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_KBD_DISABLE: u8 = 0xAD;
const CMD_KBD_ENABLE: u8 = 0xAE;
const CMD_READ_INPUT: u8 = 0xC0;
const CMD_READ_OUTPUT: u8 = 0xD0;
const CMD_WRITE_OUTPUT: u8 = 0xD1;
const CMD_WRITE_KBD_OBUF: u8 = 0xD2;
const CMD_WRITE_AUX_OBUF: u8 = 0xD3;
const CMD_WRITE_AUX: u8 = 0xD4;
const CMD_A20_OFF: u8 = 0xDD;
const CMD_A20_ON: u8 = 0xDF;
const CMD_READ_TEST_INPUTS: u8 = 0xE0;
const CMD_PULSE_FIRST: u8 = 0xF0;

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;
/// Input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;
const RAM_SIZE: usize = 32;

// PS/2 device replies.
const ACK: u8 = 0xFA;
const RESEND: u8 = 0xFE;
const BAT_OK: u8 = 0xAA;
const KBD_ID: [u8; 2] = [0xAB, 0x83];
const MOUSE_ID: u8 = 0x00;
/// Bytes a PS/2 device buffers before it drops input.
const DEVICE_QUEUE_LEN: usize = 64;

/// A PS/2 device's output bytes.
#[derive(Debug, Default)]
struct DevQueue(VecDeque<u8>);

impl DevQueue {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.0.len() >= DEVICE_QUEUE_LEN {
                log::debug!(target: LOG, "device queue full, dropping {b:#04x}");
                return;
            }
            self.0.push_back(b);
        }
    }
}

/// A minimal MF2 keyboard: command replies and injected scancodes.
#[derive(Debug)]
struct Keyboard {
    queue: DevQueue,
    scanning: bool,
    /// A command waiting for its argument byte (0xED, 0xF0, 0xF3).
    pending: Option<u8>,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
}

impl Keyboard {
    const CMD_SET_LEDS: u8 = 0xED;
    const CMD_ECHO: u8 = 0xEE;
    const CMD_SCANCODE_SET: u8 = 0xF0;
    const CMD_IDENTIFY: u8 = 0xF2;
    const CMD_TYPEMATIC: u8 = 0xF3;
    const CMD_ENABLE: u8 = 0xF4;
    const CMD_DISABLE: u8 = 0xF5;
    const CMD_DEFAULTS: u8 = 0xF6;
    const CMD_RESET: u8 = 0xFF;
    /// 10.9 characters per second, 500 ms delay.
    const TYPEMATIC_DEFAULT: u8 = 0x2B;

    fn new() -> Keyboard {
        Keyboard {
            queue: DevQueue::default(),
            scanning: true,
            pending: None,
            scancode_set: 2,
            leds: 0,
            typematic: Self::TYPEMATIC_DEFAULT,
        }
    }

    fn defaults(&mut self) {
        self.queue.0.clear();
        self.scancode_set = 2;
        self.typematic = Self::TYPEMATIC_DEFAULT;
    }

    fn write(&mut self, val: u8) {
        if let Some(cmd) = self.pending.take() {
            match cmd {
                Self::CMD_SET_LEDS => self.leds = val & 7,
                Self::CMD_TYPEMATIC => self.typematic = val & 0x7F,
                _ => match val {
                    0 => return self.queue.push(&[ACK, self.scancode_set]),
                    1..=3 => self.scancode_set = val,
                    _ => return self.queue.push(&[RESEND]),
                },
            }
            return self.queue.push(&[ACK]);
        }
        match val {
            Self::CMD_SET_LEDS | Self::CMD_SCANCODE_SET | Self::CMD_TYPEMATIC => {
                self.pending = Some(val);
                self.queue.push(&[ACK]);
            }
            Self::CMD_ECHO => self.queue.push(&[Self::CMD_ECHO]),
            Self::CMD_IDENTIFY => self.queue.push(&[ACK, KBD_ID[0], KBD_ID[1]]),
            Self::CMD_ENABLE => {
                self.scanning = true;
                self.queue.push(&[ACK]);
            }
            Self::CMD_DISABLE => {
                self.defaults();
                self.scanning = false;
                self.queue.push(&[ACK]);
            }
            Self::CMD_DEFAULTS => {
                self.defaults();
                self.queue.push(&[ACK]);
            }
            Self::CMD_RESET => {
                self.defaults();
                self.leds = 0;
                self.scanning = true;
                self.queue.push(&[ACK, BAT_OK]);
            }
            // Set-3 key type commands and resend: acknowledged, no effect.
            0xF7..=0xFE => self.queue.push(&[ACK]),
            _ => {
                log::debug!(target: LOG, "keyboard: unknown command {val:#04x}");
                self.queue.push(&[RESEND]);
            }
        }
    }
}

/// A minimal PS/2 mouse (device ID 0).
#[derive(Debug)]
struct Mouse {
    queue: DevQueue,
    reporting: bool,
    pending: Option<u8>,
    sample_rate: u8,
    resolution: u8,
    scaling_2to1: bool,
    wrap: bool,
}

impl Mouse {
    const CMD_SCALING_1TO1: u8 = 0xE6;
    const CMD_SCALING_2TO1: u8 = 0xE7;
    const CMD_SET_RESOLUTION: u8 = 0xE8;
    const CMD_STATUS: u8 = 0xE9;
    const CMD_READ_DATA: u8 = 0xEB;
    const CMD_RESET_WRAP: u8 = 0xEC;
    const CMD_SET_WRAP: u8 = 0xEE;
    const CMD_IDENTIFY: u8 = 0xF2;
    const CMD_SAMPLE_RATE: u8 = 0xF3;
    const CMD_ENABLE: u8 = 0xF4;
    const CMD_DISABLE: u8 = 0xF5;
    const CMD_DEFAULTS: u8 = 0xF6;
    const CMD_RESET: u8 = 0xFF;
    /// Packet byte 0 bit 3 is always set.
    const PACKET_SYNC: u8 = 0x08;

    fn new() -> Mouse {
        Mouse {
            queue: DevQueue::default(),
            reporting: false,
            pending: None,
            sample_rate: 100,
            resolution: 2,
            scaling_2to1: false,
            wrap: false,
        }
    }

    fn defaults(&mut self) {
        self.queue.0.clear();
        self.reporting = false;
        self.sample_rate = 100;
        self.resolution = 2;
        self.scaling_2to1 = false;
    }

    fn status(&self) -> [u8; 3] {
        let s = (u8::from(self.reporting) << 5) | (u8::from(self.scaling_2to1) << 4);
        [s, self.resolution, self.sample_rate]
    }

    fn write(&mut self, val: u8) {
        if let Some(cmd) = self.pending.take() {
            if cmd == Self::CMD_SAMPLE_RATE {
                self.sample_rate = val;
            } else {
                self.resolution = val & 3;
            }
            return self.queue.push(&[ACK]);
        }
        if self.wrap && val != Self::CMD_RESET_WRAP && val != Self::CMD_RESET {
            return self.queue.push(&[val]);
        }
        match val {
            Self::CMD_RESET => {
                self.defaults();
                self.wrap = false;
                self.queue.push(&[ACK, BAT_OK, MOUSE_ID]);
                return;
            }
            Self::CMD_IDENTIFY => return self.queue.push(&[ACK, MOUSE_ID]),
            Self::CMD_STATUS => {
                self.queue.push(&[ACK]);
                return self.queue.push(&self.status());
            }
            Self::CMD_READ_DATA => return self.queue.push(&[ACK, Self::PACKET_SYNC, 0, 0]),
            Self::CMD_SAMPLE_RATE | Self::CMD_SET_RESOLUTION => self.pending = Some(val),
            Self::CMD_ENABLE => self.reporting = true,
            Self::CMD_DISABLE => self.reporting = false,
            Self::CMD_DEFAULTS => self.defaults(),
            Self::CMD_SCALING_1TO1 => self.scaling_2to1 = false,
            Self::CMD_SCALING_2TO1 => self.scaling_2to1 = true,
            Self::CMD_SET_WRAP => self.wrap = true,
            Self::CMD_RESET_WRAP => self.wrap = false,
            _ => log::trace!(target: LOG, "mouse: command {val:#04x} acknowledged"),
        }
        self.queue.push(&[ACK]);
    }
}

/// The output buffer's content and where it came from.
#[derive(Debug, Clone, Copy)]
struct OutByte {
    val: u8,
    aux: bool,
}

/// The 8042 controller with its keyboard and mouse.
pub struct I8042 {
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; RAM_SIZE],
    outport: u8,
    last_was_command: bool,
    /// A controller command waiting for its data byte.
    pending: Option<u8>,
    out: Option<OutByte>,
    last_read: u8,
    /// Controller replies, ahead of device data.
    replies: VecDeque<OutByte>,
    kbd: Keyboard,
    mouse: Mouse,
    irq1: IrqLine,
    irq12: IrqLine,
    levels: (bool, bool),
    a20: Arc<A20Gate>,
    control: Arc<MachineControl>,
}

impl I8042 {
    /// A controller in its post-BIOS state; `irq1`/`irq12` are the keyboard and
    /// aux interrupt lines, `a20` the gate output port bit 1 drives.
    pub fn new(
        irq1: IrqLine,
        irq12: IrqLine,
        a20: Arc<A20Gate>,
        control: Arc<MachineControl>,
    ) -> I8042 {
        let mut ram = [0u8; RAM_SIZE];
        ram[0] = CB_DEFAULT;
        I8042 {
            ram,
            outport: OUT_DEFAULT,
            last_was_command: false,
            pending: None,
            out: None,
            last_read: 0,
            replies: VecDeque::new(),
            kbd: Keyboard::new(),
            mouse: Mouse::new(),
            irq1,
            irq12,
            levels: (false, false),
            a20,
            control,
        }
    }

    /// Registers the data port at 0x60 and the command port at 0x64.
    pub fn register(dev: &Arc<Mutex<I8042>>, bus: &mut Bus) -> vireo_core::Result<()> {
        for port in [DATA_PORT, COMMAND_PORT] {
            bus.insert(
                port,
                1,
                Arc::new(Mutex::new(I8042Port::new(dev.clone(), port))),
            )?;
        }
        Ok(())
    }

    fn cmd_byte(&self) -> u8 {
        self.ram[0]
    }

    /// Queues keyboard bytes as the keyboard sends them (scan code set 2 make/break
    /// sequences; the guest sees them as they are, the controller does not
    /// translate). Dropped while the keyboard is not scanning.
    pub fn inject_scancodes(&mut self, bytes: &[u8]) {
        if self.kbd.scanning {
            self.kbd.queue.push(bytes);
            self.refill();
        }
    }

    /// Queues a standard 3-byte mouse packet, if the guest enabled reporting.
    /// `buttons` bits 0-2 are left, right, middle; `dy` is positive upwards.
    pub fn inject_mouse(&mut self, dx: i16, dy: i16, buttons: u8) {
        if !self.mouse.reporting {
            return;
        }
        let clamp = |v: i16| v.clamp(-255, 255);
        let (dx, dy) = (clamp(dx), clamp(dy));
        let b0 = Mouse::PACKET_SYNC
            | (buttons & 7)
            | if dx < 0 { 0x10 } else { 0 }
            | if dy < 0 { 0x20 } else { 0 };
        self.mouse.queue.push(&[b0, dx as u8, dy as u8]);
        self.refill();
    }

    fn reply(&mut self, val: u8, aux: bool) {
        self.replies.push_back(OutByte { val, aux });
        self.refill();
    }

    /// Moves the next byte into an empty output buffer and updates the IRQ lines.
    fn refill(&mut self) {
        if self.out.is_none() {
            let cb = self.cmd_byte();
            self.out = self.replies.pop_front().or_else(|| {
                let kbd = (cb & CB_KBD_DISABLE == 0)
                    .then(|| self.kbd.queue.0.pop_front())
                    .flatten()
                    .map(|val| OutByte { val, aux: false });
                kbd.or_else(|| {
                    (cb & CB_AUX_DISABLE == 0)
                        .then(|| self.mouse.queue.0.pop_front())
                        .flatten()
                        .map(|val| OutByte { val, aux: true })
                })
            });
        }
        self.update_irqs();
    }

    fn update_irqs(&mut self) {
        let cb = self.cmd_byte();
        let levels = match self.out {
            Some(OutByte { aux: false, .. }) => (cb & CB_KBD_INT != 0, false),
            Some(OutByte { aux: true, .. }) => (false, cb & CB_AUX_INT != 0),
            None => (false, false),
        };
        if levels.0 != self.levels.0 {
            self.irq1.set(levels.0);
        }
        if levels.1 != self.levels.1 {
            self.irq12.set(levels.1);
        }
        self.levels = levels;
    }

    /// Reads the status register.
    pub fn status(&self) -> u8 {
        let mut s = ST_UNLOCKED;
        if let Some(o) = self.out {
            s |= ST_OBF | if o.aux { ST_AUX_OBF } else { 0 };
        }
        if self.cmd_byte() & CB_SYS != 0 {
            s |= ST_SYS;
        }
        if self.last_was_command {
            s |= ST_CMD;
        }
        s
    }

    /// Reads the data port: takes the output buffer (the last byte again if empty).
    pub fn read_data(&mut self) -> u8 {
        if let Some(o) = self.out.take() {
            self.last_read = o.val;
            self.update_irqs();
            self.refill();
        }
        self.last_read
    }

    fn output_port(&self) -> u8 {
        let mut v = self.outport & !(OUT_KBD_OBF | OUT_AUX_OBF | OUT_A20);
        match self.out {
            Some(OutByte { aux: false, .. }) => v |= OUT_KBD_OBF,
            Some(OutByte { aux: true, .. }) => v |= OUT_AUX_OBF,
            None => {}
        }
        if self.a20.enabled() {
            v |= OUT_A20;
        }
        v
    }

    fn write_output_port(&mut self, val: u8) {
        self.outport = val;
        self.a20.set(val & OUT_A20 != 0);
        if val & OUT_RESET == 0 {
            log::info!(target: LOG, "reset through the output port");
            self.control.request_stop(StopReason::Reset);
        }
    }

    /// Writes the command port.
    pub fn write_command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = None;
        match cmd {
            CMD_READ_RAM..=CMD_READ_RAM_LAST => {
                let v = self.ram[usize::from(cmd - CMD_READ_RAM)];
                self.reply(v, false);
            }
            CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT
            | CMD_WRITE_KBD_OBUF
            | CMD_WRITE_AUX_OBUF
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.set_cmd_byte(self.cmd_byte() | CB_AUX_DISABLE),
            CMD_AUX_ENABLE => self.set_cmd_byte(self.cmd_byte() & !CB_AUX_DISABLE),
            CMD_AUX_TEST | CMD_KBD_TEST => self.reply(INTERFACE_TEST_OK, false),
            CMD_SELF_TEST => {
                self.set_cmd_byte(self.cmd_byte() | CB_SYS);
                self.reply(SELF_TEST_OK, false);
            }
            CMD_KBD_DISABLE => self.set_cmd_byte(self.cmd_byte() | CB_KBD_DISABLE),
            CMD_KBD_ENABLE => self.set_cmd_byte(self.cmd_byte() & !CB_KBD_DISABLE),
            CMD_READ_INPUT => self.reply(INPUT_PORT, false),
            CMD_READ_OUTPUT => {
                let v = self.output_port();
                self.reply(v, false);
            }
            CMD_A20_OFF => self.a20.set(false),
            CMD_A20_ON => self.a20.set(true),
            CMD_READ_TEST_INPUTS => self.reply(0, false),
            CMD_PULSE_FIRST..=0xFF => {
                // Bits 3:0 = 0 pulse the corresponding output port line low.
                if cmd & OUT_RESET == 0 {
                    log::info!(target: LOG, "reset through pulse command {cmd:#04x}");
                    self.control.request_stop(StopReason::Reset);
                }
            }
            _ => log::debug!(target: LOG, "unhandled controller command {cmd:#04x}"),
        }
    }

    fn set_cmd_byte(&mut self, val: u8) {
        self.ram[0] = val;
        self.refill();
    }

    /// Writes the data port: the argument of a pending controller command, or a
    /// byte for the keyboard.
    pub fn write_data(&mut self, val: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_OUTPUT) => self.write_output_port(val),
            Some(CMD_WRITE_KBD_OBUF) => self.reply(val, false),
            Some(CMD_WRITE_AUX_OBUF) => self.reply(val, true),
            Some(CMD_WRITE_AUX) => {
                // Talking to the mouse enables its interface (as QEMU does).
                self.ram[0] &= !CB_AUX_DISABLE;
                self.mouse.write(val);
                self.refill();
            }
            Some(cmd) => {
                let i = usize::from(cmd.wrapping_sub(CMD_WRITE_RAM)) % RAM_SIZE;
                self.ram[i] = val;
                self.refill();
            }
            None => {
                // Sending to the keyboard enables its interface.
                self.ram[0] &= !CB_KBD_DISABLE;
                self.kbd.write(val);
                self.refill();
            }
        }
    }
}

/// One port of an [`I8042`] on a bus.
pub struct I8042Port {
    dev: Arc<Mutex<I8042>>,
    command: bool,
}

impl I8042Port {
    /// `port` is [`DATA_PORT`] or [`COMMAND_PORT`].
    pub fn new(dev: Arc<Mutex<I8042>>, port: u64) -> I8042Port {
        I8042Port {
            dev,
            command: port == COMMAND_PORT,
        }
    }
}

impl BusDevice for I8042Port {
    fn name(&self) -> &str {
        if self.command {
            "i8042-cmd"
        } else {
            "i8042-data"
        }
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let mut d = self.dev.lock();
        let v = if self.command {
            d.status()
        } else {
            d.read_data()
        };
        data.fill(v);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let mut d = self.dev.lock();
        if self.command {
            d.write_command(v);
        } else {
            d.write_data(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_core::irq::IrqRecorder;

    struct Rig {
        bus: Bus,
        dev: Arc<Mutex<I8042>>,
        rec: Arc<IrqRecorder>,
        a20: Arc<A20Gate>,
        ctl: Arc<MachineControl>,
    }

    fn rig() -> Rig {
        let rec = IrqRecorder::new();
        let a20 = A20Gate::new();
        let ctl = MachineControl::new();
        let dev = Arc::new(Mutex::new(I8042::new(
            rec.line(1),
            rec.line(12),
            a20.clone(),
            ctl.clone(),
        )));
        let mut bus = Bus::new("pio");
        I8042::register(&dev, &mut bus).unwrap();
        Rig {
            bus,
            dev,
            rec,
            a20,
            ctl,
        }
    }

    impl Rig {
        fn inb(&self, port: u64) -> u8 {
            let mut b = [0u8];
            self.bus.read(port, &mut b);
            b[0]
        }
        fn outb(&self, port: u64, v: u8) {
            self.bus.write(port, &[v]);
        }
        /// Linux's `__i8042_command`: command, parameters, then results, waiting
        /// for IBF clear / OBF set (immediately true here).
        fn command(&self, cmd: u8, params: &[u8], nresults: usize) -> Vec<u8> {
            assert_eq!(self.inb(0x64) & 0x02, 0, "IBF");
            self.outb(0x64, cmd);
            for &p in params {
                self.outb(0x60, p);
            }
            (0..nresults)
                .map(|_| {
                    assert_ne!(self.inb(0x64) & ST_OBF, 0, "no result for {cmd:#x}");
                    self.inb(0x60)
                })
                .collect()
        }
        fn send_kbd(&self, bytes: &[u8]) -> Vec<u8> {
            for &b in bytes {
                self.outb(0x60, b);
            }
            self.drain()
        }
        fn drain(&self) -> Vec<u8> {
            let mut v = vec![];
            while self.inb(0x64) & ST_OBF != 0 {
                v.push(self.inb(0x60));
            }
            v
        }
    }

    #[test]
    fn linux_probe_sequence() {
        let r = rig();
        // i8042_controller_check / i8042_flush.
        assert_ne!(r.inb(0x64), 0xFF);
        assert!(r.drain().is_empty());
        // i8042_controller_selftest.
        assert_eq!(r.command(CMD_SELF_TEST, &[], 1), [SELF_TEST_OK]);
        // i8042_controller_init: read the CTR twice, write it back modified.
        let ctr = r.command(CMD_READ_RAM, &[], 1)[0];
        assert_eq!(r.command(CMD_READ_RAM, &[], 1)[0], ctr);
        let ctr = (ctr | CB_KBD_DISABLE) & !(CB_KBD_INT | CB_AUX_INT);
        r.command(CMD_WRITE_RAM, &[ctr], 0);
        assert_eq!(r.command(CMD_READ_RAM, &[], 1), [ctr]);
        r.rec.take();
        // i8042_check_aux: the AUX loopback must come back as aux data.
        r.outb(0x64, CMD_WRITE_AUX_OBUF);
        r.outb(0x60, 0x5A);
        assert_eq!(r.inb(0x64) & (ST_OBF | ST_AUX_OBF), ST_OBF | ST_AUX_OBF);
        assert_eq!(r.inb(0x60), 0x5A);
        // Bit assignment test: A7 sets, A8 clears the aux-disable CTR bit.
        r.command(CMD_AUX_DISABLE, &[], 0);
        assert_ne!(r.command(CMD_READ_RAM, &[], 1)[0] & CB_AUX_DISABLE, 0);
        r.command(CMD_AUX_ENABLE, &[], 0);
        assert_eq!(r.command(CMD_READ_RAM, &[], 1)[0] & CB_AUX_DISABLE, 0);
        assert_eq!(r.command(CMD_AUX_TEST, &[], 1), [0]);
        assert_eq!(r.command(CMD_KBD_TEST, &[], 1), [0]);
        // Interrupts were disabled in the CTR: no IRQ so far.
        assert_eq!(r.rec.rising_edges(1) + r.rec.rising_edges(12), 0);
        // Enable the keyboard port with its IRQ; atkbd probes the keyboard.
        r.command(
            CMD_WRITE_RAM,
            &[CB_KBD_INT | CB_AUX_INT | CB_SYS | CB_XLATE],
            0,
        );
        r.command(CMD_KBD_ENABLE, &[], 0);
        assert_eq!(r.send_kbd(&[0xF2]), [ACK, 0xAB, 0x83]);
        assert_eq!(r.rec.rising_edges(1), 3, "one IRQ1 edge per byte");
        assert_eq!(r.send_kbd(&[0xF5]), [ACK]);
        assert_eq!(r.send_kbd(&[0xFF]), [ACK, BAT_OK]);
        assert_eq!(r.send_kbd(&[0xF0, 0x02]), [ACK, ACK]);
        assert_eq!(r.send_kbd(&[0xF0, 0x00]), [ACK, ACK, 2]);
        assert_eq!(r.send_kbd(&[0xF3, 0x00, 0xED, 0x07, 0xF4]), [ACK; 5]);
        assert_eq!(r.dev.lock().kbd.leds, 7);
        assert_eq!(r.send_kbd(&[0xEE]), [0xEE]);
        assert_eq!(r.send_kbd(&[0x42]), [RESEND]);
        // psmouse probe through 0xD4.
        let aux = |b: u8, n: usize| r.command(CMD_WRITE_AUX, &[b], n);
        assert_eq!(aux(0xFF, 3), [ACK, BAT_OK, MOUSE_ID]);
        assert_eq!(aux(0xF2, 2), [ACK, MOUSE_ID]);
        assert_eq!(aux(0xF3, 1), [ACK]);
        assert_eq!(aux(200, 1), [ACK]);
        assert_eq!(aux(0xE9, 4), [ACK, 0x00, 2, 200]);
        assert_eq!(aux(0xF4, 1), [ACK]);
        assert!(r.rec.rising_edges(12) >= 10);
        assert_eq!(r.inb(0x64) & ST_OBF, 0);
    }

    #[test]
    fn status_and_command_byte() {
        let r = rig();
        assert_eq!(r.inb(0x64), ST_UNLOCKED | ST_SYS);
        r.outb(0x64, CMD_READ_RAM);
        assert_eq!(r.inb(0x64), ST_UNLOCKED | ST_SYS | ST_CMD | ST_OBF);
        assert_eq!(r.inb(0x60), CB_DEFAULT);
        // IRQ1 with KBD_INT set in the default command byte.
        assert_eq!(r.rec.take(), vec![(1, true), (1, false)]);
        // The buffer reads the last byte again when empty.
        assert_eq!(r.inb(0x60), CB_DEFAULT);
        r.command(CMD_WRITE_RAM, &[0x00], 0);
        assert_eq!(r.inb(0x64) & (ST_SYS | ST_CMD), 0);
        // 0xD2 echoes a byte as keyboard data, 0xD3 as aux data (IRQ12 needs AUX_INT).
        r.command(CMD_WRITE_RAM, &[CB_AUX_INT], 0);
        r.rec.take();
        assert_eq!(r.command(CMD_WRITE_KBD_OBUF, &[0x11], 1), [0x11]);
        assert_eq!(r.command(CMD_WRITE_AUX_OBUF, &[0x22], 1), [0x22]);
        assert_eq!(r.rec.take(), vec![(12, true), (12, false)]);
        // 0xAD/0xAE gate keyboard data.
        r.command(CMD_KBD_DISABLE, &[], 0);
        r.dev.lock().inject_scancodes(&[0x1C, 0xF0, 0x1C]);
        assert_eq!(r.inb(0x64) & ST_OBF, 0);
        r.command(CMD_KBD_ENABLE, &[], 0);
        assert_eq!(r.drain(), [0x1C, 0xF0, 0x1C]);
        // Other controller queries.
        assert_eq!(r.command(CMD_READ_INPUT, &[], 1), [INPUT_PORT]);
        assert_eq!(r.command(CMD_READ_TEST_INPUTS, &[], 1), [0]);
        r.command(0x65, &[0x99], 0);
        assert_eq!(r.command(0x25, &[], 1), [0x99]);
    }

    #[test]
    fn a20_and_reset_through_output_port() {
        let r = rig();
        assert_eq!(r.command(CMD_READ_OUTPUT, &[], 1), [OUT_DEFAULT]);
        // The classic A20 disable/enable sequence.
        r.command(CMD_WRITE_OUTPUT, &[OUT_DEFAULT & !OUT_A20], 0);
        assert!(!r.a20.enabled());
        assert_eq!(r.command(CMD_READ_OUTPUT, &[], 1)[0] & OUT_A20, 0);
        r.command(CMD_WRITE_OUTPUT, &[OUT_DEFAULT], 0);
        assert!(r.a20.enabled());
        r.command(CMD_A20_OFF, &[], 0);
        assert!(!r.a20.enabled());
        r.command(CMD_A20_ON, &[], 0);
        assert!(r.a20.enabled());
        assert_eq!(r.ctl.stop_reason(), None);
        // 0xFF pulses nothing.
        r.command(0xFF, &[], 0);
        assert_eq!(r.ctl.stop_reason(), None);
        // Pulsing the reset line.
        r.command(0xFE, &[], 0);
        assert_eq!(r.ctl.stop_reason(), Some(StopReason::Reset));
        r.ctl.clear();
        // Writing the reset bit low.
        r.command(CMD_WRITE_OUTPUT, &[OUT_DEFAULT & !OUT_RESET], 0);
        assert_eq!(r.ctl.stop_reason(), Some(StopReason::Reset));
    }

    #[test]
    fn scancode_injection_and_mouse_packets() {
        let r = rig();
        r.dev.lock().inject_scancodes(&[0x1C]);
        assert_eq!(r.inb(0x64) & (ST_OBF | ST_AUX_OBF), ST_OBF);
        assert_eq!(r.inb(0x60), 0x1C);
        // Disabled keyboard (0xF5) drops input.
        assert_eq!(r.send_kbd(&[0xF5]), [ACK]);
        r.dev.lock().inject_scancodes(&[0x1C]);
        assert!(r.drain().is_empty());
        // Mouse reporting off: nothing; on: a packet with sign bits.
        r.dev.lock().inject_mouse(1, 1, 0);
        assert!(r.drain().is_empty());
        r.command(CMD_WRITE_AUX, &[0xF4], 1);
        r.dev.lock().inject_mouse(-3, 5, 1);
        assert_eq!(r.inb(0x64) & ST_AUX_OBF, ST_AUX_OBF);
        assert_eq!(r.drain(), [0x08 | 0x10 | 1, 0xFD, 5]);
        // A flood is bounded.
        r.command(CMD_WRITE_AUX, &[0xF5], 1);
        assert_eq!(r.send_kbd(&[0xF4]), [ACK]);
        r.command(CMD_KBD_DISABLE, &[], 0);
        for _ in 0..1000 {
            r.dev.lock().inject_scancodes(&[0x1C]);
        }
        r.command(CMD_KBD_ENABLE, &[], 0);
        assert_eq!(r.drain().len(), DEVICE_QUEUE_LEN);
    }

    #[test]
    fn every_byte_is_harmless() {
        let r = rig();
        for a in 0..=255u8 {
            for b in [0u8, 0xFF, a] {
                r.outb(0x64, a);
                if a & 0xF1 == 0xF0 || a == CMD_WRITE_OUTPUT {
                    r.ctl.clear();
                    continue;
                }
                r.outb(0x60, b);
                r.drain();
            }
            r.ctl.clear();
        }
    }
}
