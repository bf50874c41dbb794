//! The terminal as the guest's console: raw mode and QEMU's Ctrl-A escapes.

use parking_lot::Mutex;
use std::io::Read;
use std::sync::Arc;
use vireo_core::{MachineControl, StopReason};
use vireo_devices::serial::Serial;

/// Puts the terminal on stdin in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Raw mode if stdin is a terminal; otherwise a no-op guard.
    pub fn enter() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a zero-initialised termios
        // that tcgetattr fills; no memory is shared with the kernel beyond the call.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing so host-side messages still get CR LF.
            t.c_oflag |= libc::OPOST;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal { saved: Some(saved) }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enter` on the same fd.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// What a byte typed on the console means.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    /// Send these bytes to the guest.
    Guest(Vec<u8>),
    Quit,
    Help,
    None,
}

/// QEMU's mux escapes: Ctrl-A X quits, Ctrl-A H helps, Ctrl-A Ctrl-A sends Ctrl-A.
#[derive(Default)]
struct Escapes {
    after_ctrl_a: bool,
}

impl Escapes {
    fn feed(&mut self, b: u8) -> Key {
        if self.after_ctrl_a {
            self.after_ctrl_a = false;
            return match b {
                b'x' | b'X' => Key::Quit,
                b'h' | b'H' | b'?' => Key::Help,
                0x01 => Key::Guest(vec![0x01]),
                _ => Key::None,
            };
        }
        if b == 0x01 {
            self.after_ctrl_a = true;
            Key::None
        } else {
            Key::Guest(vec![b])
        }
    }
}

const ESCAPE_HELP: &str =
    "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  sends C-a\r\n";

/// Forwards stdin to `serial` on a background thread until EOF.
pub fn spawn_stdin(serial: Arc<Mutex<Serial>>, control: Arc<MachineControl>) {
    let r = std::thread::Builder::new()
        .name("vireo-stdin".into())
        .spawn(move || {
            let mut esc = Escapes::default();
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::new();
                for &b in &buf[..n] {
                    match esc.feed(b) {
                        Key::Guest(v) => out.extend(v),
                        Key::Quit => {
                            control.request_stop(StopReason::Quit);
                            return;
                        }
                        Key::Help => eprint!("{ESCAPE_HELP}"),
                        Key::None => {}
                    }
                }
                if !out.is_empty() {
                    serial.lock().queue_input(&out);
                }
            }
        });
    if let Err(e) = r {
        log::warn!(target: "vireo::machine", "no console input: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_escapes() {
        let mut e = Escapes::default();
        assert_eq!(e.feed(b'a'), Key::Guest(vec![b'a']));
        assert_eq!(e.feed(1), Key::None);
        assert_eq!(e.feed(1), Key::Guest(vec![1]));
        assert_eq!(e.feed(1), Key::None);
        assert_eq!(e.feed(b'x'), Key::Quit);
        assert_eq!(e.feed(b'x'), Key::Guest(vec![b'x']));
    }
}
