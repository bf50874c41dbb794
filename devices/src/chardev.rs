//! Character back ends: where serial ports and debug consoles send their bytes.
//!
//! A back end is any `Write + Send`; this module adds the ones the command line names
//! (`stdio`, `file:PATH`, `null`/`none`) and an in-memory capture for tests.

use parking_lot::Mutex;
use std::io::{self, Write};
use std::sync::Arc;

/// The output side of a character device.
pub type CharOut = Box<dyn Write + Send>;

/// Bytes written are kept in memory; clones share the buffer. Used by tests and by
/// anything that wants to watch a console (boot markers).
#[derive(Clone, Default)]
pub struct CaptureBuffer(Arc<Mutex<Vec<u8>>>);

impl CaptureBuffer {
    pub fn new() -> CaptureBuffer {
        CaptureBuffer::default()
    }
    /// Everything written so far, lossily decoded as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
    /// Everything written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().clone()
    }
}

impl Write for CaptureBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes to two sinks (a console and a capture, say).
pub struct Tee<A: Write, B: Write>(pub A, pub B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Process stdout, flushed after every write so guest output appears as it is made.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_and_tee() {
        let a = CaptureBuffer::new();
        let b = CaptureBuffer::new();
        let mut t = Tee(a.clone(), b.clone());
        t.write_all(b"hi\n").unwrap();
        assert_eq!(a.text(), "hi\n");
        assert_eq!(b.bytes(), b"hi\n");
    }
}
