//! Code memory mapped twice: writable at one address, executable at another (or, for
//! `perf`, anonymous memory flipped between writable and executable: [`set_anonymous`]).
//!
//! A chunk is a `memfd` mapped read-write and read-execute (shared): compiled code is
//! copied in through the writable view and run from the executable one, so no page
//! is ever writable and executable at once and no `mprotect` is needed per block
//! (turning a chunk writable and back cost two page-table updates of the whole chunk
//! for every compiled block). x86 keeps instruction fetches coherent with stores to
//! any alias of the same physical memory; new code only ever goes into bytes no code
//! has run from. Both views are populated when the chunk is mapped (`MAP_POPULATE`):
//! faulting its pages in one by one, twice each (written through one view, run from
//! the other), was 1.4% of a Linux boot; a chunk fills up before the next is made, so
//! the resident set grows by at most one chunk's unused tail.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Chunks made from now on are anonymous memory (see [`set_anonymous`]).
static ANONYMOUS: AtomicBool = AtomicBool::new(false);

/// Makes new chunks anonymous memory, written by turning the pages being written
/// writable and back (one `mprotect` pair per block, of its pages only), instead of
/// a memfd mapped twice: `perf` names code in anonymous memory from
/// `/tmp/perf-<pid>.map` but treats a memfd mapping as a file without symbols. Code
/// runs on the thread that compiles it (one JIT cache per thread), so no other thread
/// executes a page while it is writable.
pub fn set_anonymous(on: bool) {
    ANONYMOUS.store(on, Ordering::Relaxed);
}

/// Whether new chunks are anonymous memory ([`set_anonymous`]).
pub fn is_anonymous() -> bool {
    ANONYMOUS.load(Ordering::Relaxed)
}

/// One chunk of code memory.
pub struct CodeChunk {
    /// Null once sealed; equal to `rx` for an anonymous chunk.
    rw: *mut u8,
    rx: *mut u8,
    len: usize,
    used: usize,
}

// SAFETY: the chunk owns its two mappings; the raw pointers are only used through
// `&mut self` (writes) or to compute addresses.
unsafe impl Send for CodeChunk {}

impl CodeChunk {
    /// Maps a chunk of `len` bytes (rounded up to pages by the kernel).
    pub fn new(len: usize) -> io::Result<CodeChunk> {
        if ANONYMOUS.load(Ordering::Relaxed) {
            return Self::new_anonymous(len);
        }
        // SAFETY: plain system calls on a file descriptor this function owns; every
        // result is checked, and the descriptor is closed on all paths (the mappings
        // keep the memory alive).
        unsafe {
            let fd = libc::memfd_create(c"vireo-jit".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let map = |prot| {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            };
            let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput);
            let result = match size {
                Err(e) => Err(io::Error::from(e)),
                Ok(size) if libc::ftruncate(fd, size) != 0 => Err(io::Error::last_os_error()),
                Ok(_) => {
                    let rw = map(libc::PROT_READ | libc::PROT_WRITE);
                    if rw == libc::MAP_FAILED {
                        Err(io::Error::last_os_error())
                    } else {
                        let rx = map(libc::PROT_READ | libc::PROT_EXEC);
                        if rx == libc::MAP_FAILED {
                            let e = io::Error::last_os_error();
                            libc::munmap(rw, len);
                            Err(e)
                        } else {
                            Ok(CodeChunk {
                                rw: rw.cast(),
                                rx: rx.cast(),
                                len,
                                used: 0,
                            })
                        }
                    }
                }
            };
            libc::close(fd);
            result
        }
    }

    fn new_anonymous(len: usize) -> io::Result<CodeChunk> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(CodeChunk {
            rw: p.cast(),
            rx: p.cast(),
            len,
            used: 0,
        })
    }

    /// Bytes left.
    pub fn room(&self) -> usize {
        if self.rw.is_null() {
            0
        } else {
            self.len - self.used
        }
    }

    /// Drops the writable view: the chunk takes no more code, and its pages stop
    /// counting twice in the process's resident set.
    pub fn seal(&mut self) {
        if self.rw == self.rx {
            self.rw = std::ptr::null_mut();
            return;
        }
        if !self.rw.is_null() {
            // SAFETY: the writable mapping made by `new` (`len` bytes), unmapped once;
            // nothing reads or writes through it afterwards (`room` is 0 from now on).
            unsafe { libc::munmap(self.rw.cast(), self.len) };
            self.rw = std::ptr::null_mut();
        }
    }

    /// Skips bytes (never executed) so that the next code pushed starts on a
    /// multiple of `to` (a power of two), if that fits.
    pub fn align(&mut self, to: usize) {
        let at = self.rx as usize + self.used;
        let pad = at.next_multiple_of(to) - at;
        if pad <= self.room() {
            self.used += pad;
        }
    }

    /// Copies `code` in after the code already there; returns its executable
    /// address, or `None` if it does not fit.
    pub fn push(&mut self, code: &[u8]) -> Option<usize> {
        if code.len() > self.room() {
            return None;
        }
        if self.rw == self.rx {
            return self.push_anonymous(code);
        }
        // SAFETY: `used + code.len() <= len`, so the destination lies inside the
        // writable mapping; no code runs from these bytes yet (they were never handed
        // out), and `code` is a distinct host buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.add(self.used), code.len());
        }
        let at = self.rx as usize + self.used;
        self.used += code.len();
        Some(at)
    }
}

impl CodeChunk {
    /// `push` into an anonymous chunk: the pages the code goes to are made writable
    /// (not executable) for the copy, then executable again.
    fn push_anonymous(&mut self, code: &[u8]) -> Option<usize> {
        const PAGE: usize = 4096;
        let base = self.rx as usize;
        let first = (base + self.used) & !(PAGE - 1);
        let end = (base + self.used + code.len()).next_multiple_of(PAGE);
        let span = end - first;
        // SAFETY: `[first, end)` lies inside the mapping (`used + len <= self.len`,
        // the mapping is page-aligned and its length page-rounded by the kernel); no
        // code runs while it is writable (compiling and running happen on one
        // thread); the copy goes to bytes never handed out.
        unsafe {
            let p = first as *mut libc::c_void;
            if libc::mprotect(p, span, libc::PROT_READ | libc::PROT_WRITE) != 0 {
                return None;
            }
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.rx.add(self.used), code.len());
            if libc::mprotect(p, span, libc::PROT_READ | libc::PROT_EXEC) != 0 {
                return None;
            }
        }
        let at = base + self.used;
        self.used += code.len();
        Some(at)
    }
}

impl Drop for CodeChunk {
    fn drop(&mut self) {
        self.seal();
        // SAFETY: the executable mapping was made by `new` with `len` bytes and is
        // unmapped once; whoever drops a chunk guarantees no code of it runs any more
        // (the JIT cache drops chunks only in `flush`, which ends every block's life).
        unsafe { libc::munmap(self.rx.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_written_through_one_view_runs_from_the_other() {
        let mut c = CodeChunk::new(4096).unwrap();
        // mov eax, 42; ret
        let f1 = c.push(&[0xb8, 42, 0, 0, 0, 0xc3]).unwrap();
        // mov eax, 7; ret
        let f2 = c.push(&[0xb8, 7, 0, 0, 0, 0xc3]).unwrap();
        assert_eq!(f2, f1 + 6);
        // SAFETY: both addresses hold the complete functions just written.
        let (a, b) = unsafe {
            let a: extern "C" fn() -> u32 = std::mem::transmute(f1);
            let b: extern "C" fn() -> u32 = std::mem::transmute(f2);
            (a(), b())
        };
        assert_eq!((a, b), (42, 7));
        assert_eq!(c.room(), 4096 - 12);
        assert!(c.push(&vec![0x90; 5000]).is_none());
        // Sealed: the code still runs, nothing more goes in.
        c.seal();
        // SAFETY: as above; the executable view is still mapped.
        let a = unsafe { std::mem::transmute::<usize, extern "C" fn() -> u32>(f1)() };
        assert_eq!(a, 42);
        assert_eq!(c.room(), 0);
        assert!(c.push(&[0xc3]).is_none());
    }

    #[test]
    fn anonymous_chunks_run_their_code_too() {
        let mut c = CodeChunk::new_anonymous(8192).unwrap();
        let f1 = c.push(&[0xb8, 5, 0, 0, 0, 0xc3]).unwrap();
        // Across the page boundary.
        c.push(&vec![0x90; 4088]).unwrap();
        let f2 = c.push(&[0xb8, 9, 0, 0, 0, 0xc3]).unwrap();
        assert!((f2 - c.rx as usize) < 4096 && (f2 + 6 - c.rx as usize) > 4096);
        // SAFETY: both addresses hold the complete functions just written.
        let (a, b) = unsafe {
            let a: extern "C" fn() -> u32 = std::mem::transmute(f1);
            let b: extern "C" fn() -> u32 = std::mem::transmute(f2);
            (a(), b())
        };
        assert_eq!((a, b), (5, 9));
        c.seal();
        assert_eq!(c.room(), 0);
    }
}
