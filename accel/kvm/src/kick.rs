//! Kicking a vCPU out of `KVM_RUN` from another thread, without a lost-wakeup race.
//!
//! The vCPU thread publishes a pointer to its `kvm_run.immediate_exit` byte in a
//! thread-local. The kicker sets a flag and sends `SIGRTMIN` to the thread; the signal
//! handler sets `immediate_exit`, so a kick that lands just before `KVM_RUN` makes it
//! return at once with `EINTR`, and one during `KVM_RUN` interrupts it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use vireo_core::VcpuKicker;

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick_signal(_sig: libc::c_int) {
    // Only touches a const-initialised thread-local: async-signal-safe.
    let p = IMMEDIATE_EXIT.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer was published by this thread and points into its live
        // kvm_run mapping; it is cleared before the mapping can go away.
        unsafe { p.write_volatile(1) };
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Installs the no-op-but-for-immediate-exit handler once per process.
pub(crate) fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installing a handler that only does an async-signal-safe store; the
        // sigaction struct is fully initialised.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick_signal as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Publishes (or clears with null) this thread's `immediate_exit` byte.
pub(crate) fn publish_immediate_exit(p: *mut u8) {
    IMMEDIATE_EXIT.with(|c| c.set(p));
}

/// The shared half of a vCPU that other threads use to kick it.
#[derive(Default)]
pub struct Kicker {
    /// pthread_t of the thread inside `run`, or 0.
    thread: AtomicU64,
    kicked: AtomicBool,
}

impl Kicker {
    pub fn new() -> Arc<Kicker> {
        Arc::new(Kicker::default())
    }
    pub(crate) fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.thread.store(me as u64, Ordering::SeqCst);
    }
    pub(crate) fn leave(&self) {
        self.thread.store(0, Ordering::SeqCst);
    }
    /// Whether a kick arrived since the last call; clears it.
    pub(crate) fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::SeqCst)
    }
}

impl VcpuKicker for Kicker {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        let t = self.thread.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: `t` is the pthread_t of a thread currently inside `run` (it clears
            // the field before leaving); sending a signal with an installed handler is
            // harmless.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }
}
