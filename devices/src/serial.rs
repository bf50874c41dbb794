//! 16550A UART (COM1..COM4), built on rust-vmm's `vm-superio` register model.
//!
//! The register file comes from `vm-superio`; vireo adds the PC wiring: the ISA IRQ
//! line (an edge per interrupt event), the character back end, and guest input with
//! back-pressure (bytes wait in a host-side queue while the 64-byte FIFO is full).

use crate::chardev::CharOut;
use std::collections::VecDeque;
use vireo_core::{BusDevice, IrqLine};
use vm_superio::{Serial as Uart, Trigger};

/// Standard base ports and IRQs of COM1..COM4.
pub const COM_PORTS: [(u16, u32); 4] = [(0x3f8, 4), (0x2f8, 3), (0x3e8, 4), (0x2e8, 3)];
/// Number of registers of a 16550.
pub const UART_REGS: u64 = 8;

/// Interrupt events from the UART become edges on the ISA IRQ line.
pub struct IrqTrigger(IrqLine);

impl Trigger for IrqTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// One 16550A UART.
pub struct Serial {
    name: String,
    uart: Uart<IrqTrigger, vm_superio::serial::NoEvents, CharOut>,
    /// Guest input not yet taken by the FIFO.
    pending: VecDeque<u8>,
    /// Output errors so far (only the first is logged as a warning).
    output_errors: u64,
}

impl Serial {
    /// A UART named `name` (`"serial0"`) raising `irq`, writing to `out`.
    pub fn new(name: &str, irq: IrqLine, out: CharOut) -> Serial {
        Serial {
            name: name.to_string(),
            uart: Uart::new(IrqTrigger(irq), out),
            pending: VecDeque::new(),
            output_errors: 0,
        }
    }

    /// Queues bytes typed by the user; they enter the receive FIFO as it drains.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        self.fill_fifo();
    }

    /// Bytes of input still waiting outside the FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn fill_fifo(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..room).collect();
        if let Err(e) = self.uart.enqueue_raw_bytes(&chunk) {
            log::warn!(target: "vireo::dev::serial", "{}: input dropped: {e:?}", self.name);
        }
    }
}

impl BusDevice for Serial {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.uart.read(offset as u8);
        data.fill(0);
        data[0] = v;
        // Reading the receive buffer makes room for queued input.
        if offset == 0 && !self.pending.is_empty() {
            self.fill_fifo();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A host-side write error (closed stdout, full disk) must not stop the
            // guest, nor flood the log: one warning, then the output is dropped.
            self.output_errors += 1;
            if self.output_errors == 1 {
                log::warn!(target: "vireo::dev::serial",
                    "{}: output error: {e:?}; dropping further output that fails", self.name);
            } else {
                log::debug!(target: "vireo::dev::serial", "{}: output error: {e:?}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chardev::CaptureBuffer;
    use vireo_core::irq::IrqRecorder;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const LSR: u64 = 5;

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn transmit_reaches_backend() {
        let rec = IrqRecorder::new();
        let cap = CaptureBuffer::new();
        let mut s = Serial::new("serial0", rec.line(4), Box::new(cap.clone()));
        // Divisor latch set-up as firmware does, then 8N1.
        s.write(LCR, &[0x80]);
        s.write(0, &[1]);
        s.write(1, &[0]);
        s.write(LCR, &[0x03]);
        assert_eq!(rd(&mut s, LSR) & 0x60, 0x60, "THR and TEMT empty");
        for b in b"ok\n" {
            s.write(THR, &[*b]);
        }
        assert_eq!(cap.text(), "ok\n");
        assert_eq!(rec.rising_edges(4), 0, "no interrupt while IER is 0");
    }

    /// A host side that refuses every write (a closed pipe).
    struct Closed;
    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_counted_and_the_uart_keeps_working() {
        let rec = IrqRecorder::new();
        let mut s = Serial::new("serial0", rec.line(4), Box::new(Closed));
        for b in b"lost" {
            s.write(THR, &[*b]);
        }
        assert_eq!(s.output_errors, 4);
        assert_eq!(rd(&mut s, LSR) & 0x60, 0x60, "the transmitter still drains");
    }

    #[test]
    fn input_raises_irq_and_backpressure_holds_the_rest() {
        let rec = IrqRecorder::new();
        let mut s = Serial::new("serial0", rec.line(4), Box::new(std::io::sink()));
        s.write(IER, &[0x01]); // receive-data interrupt
        let input: Vec<u8> = (0..100u8).collect();
        s.queue_input(&input);
        assert!(rec.rising_edges(4) >= 1);
        assert_eq!(s.pending_input(), 100 - 64);
        let mut got = vec![];
        while rd(&mut s, LSR) & 1 != 0 {
            got.push(rd(&mut s, 0));
        }
        assert_eq!(
            got, input,
            "all input arrives, in order, despite the 64-byte FIFO"
        );
    }
}
