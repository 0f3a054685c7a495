//! Memory given back after a burst. glibc keeps what sessions freed in its heaps (its
//! per-thread arenas are trimmed only from their top, and a burst leaves them fragmented), so
//! without help the proxy stays at its peak: 5 000 kept-alive sessions took RSS from 6.8 to
//! 27 MiB, and it stayed at 27.7 MiB 10 s after they closed (`scripts/bench-idle-sessions`,
//! BENCHMARKS.md). `malloc_trim(0)` returns every free page of every arena to the kernel; it
//! runs off the worker threads, at most every [`PERIOD`], and only after at least [`ENDED`]
//! sessions ended since the last high-water mark, so steady traffic never pays for it.

use std::sync::Arc;
use std::time::Duration;

use super::forward::Sessions;

/// How often the open-session count is looked at.
const PERIOD: Duration = Duration::from_secs(2);
/// Sessions that must have ended (from the highest count seen) before a trim.
const ENDED: usize = 256;

/// Watches `sessions` and trims the allocator's heaps after a burst.
pub(crate) async fn after_bursts(sessions: Arc<Sessions>) {
    let mut high = sessions.open();
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tick.tick().await;
        let open = sessions.open();
        high = high.max(open);
        if high - open >= ENDED {
            high = open;
            let _ = tokio::task::spawn_blocking(release_free_memory).await;
        }
    }
}

/// Returns the allocator's free pages to the kernel (glibc's `malloc_trim`; nothing with
/// another C library).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own free
    // lists under its own locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}
