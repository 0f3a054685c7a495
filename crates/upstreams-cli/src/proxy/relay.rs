//! The relay: copying bytes both ways between a client and its backend once the backend
//! has answered, with the idle timer and the per-thread buffer pool sessions draw from.
//! `forward.rs` decides where a session goes (picks, retries, the replay of the first
//! bytes); this module only moves bytes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::stats::UpStats;

/// Room made for one read (and the size of a pooled buffer).
pub(crate) const READ_SIZE: usize = 16 * 1024;

/// `from + d`, or `from` plus a year when that would overflow the clock (settings are
/// bounded well below, so this only guards the arithmetic).
pub(crate) fn later(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(from)
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides done (or the backend's end, unless half-close).
    Done,
    /// Neither side sent a byte for the idle timeout.
    Idle,
    /// The client reset or refused bytes: not the backend's fault.
    ClientFailed,
    /// The backend reset, or refused the client's bytes (closed while they were still
    /// coming): a failure of the backend.
    BackendFailed,
}

/// Copies both ways (only backend → client once the client has half-closed) until both
/// sides are done or one fails, or until neither has sent a byte for `idle`. `buffers` carry
/// client → backend and backend → client; each read is added to `figures`' byte counters at
/// once, so a long session's traffic shows while it lasts.
///
/// The client's end of stream is passed to the backend (`shutdown`), and the backend's
/// answer still flows back. The backend's end, once all it sent reached the client, ends the
/// session, unless `half_close`: then it is passed to the client and the session waits for
/// the client's end. Ending there saves the client's round trip and, on short connections,
/// 4–13 % of the proxy's CPU (a `shutdown`, a wake-up and a read per connection; measured by
/// `scripts/ab-proxy`, BENCHMARKS.md). nginx stream, unless `proxy_half_close on`, ends the
/// session at either side's end; a client's end is passed on here, because a client that
/// ends its request that way waits for the answer. When the second side ends the caller's
/// `close` of both sockets sends the last FIN, so no second `shutdown` is made.
pub(crate) async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    buffers: [&mut Vec<u8>; 2],
    client_done: bool,
    idle: Duration,
    half_close: bool,
    figures: &UpStats,
) -> (End, u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // The same moment on both clocks: reads note activity on the coarse one, the timer runs
    // on the precise one (so it may fire up to a tick early).
    let (epoch, coarse_epoch) = (Instant::now(), coarsetime::Instant::now());
    let last = AtomicU64::new(0);
    let activity = Activity {
        last: &last,
        epoch: coarse_epoch,
    };
    let [up_buf, down_buf] = buffers;
    let mut up = Half::new(up_buf, client_done, &figures.bytes_out);
    let mut down = Half::new(down_buf, false, &figures.bytes_in);
    let copy = std::future::poll_fn(|cx| {
        // An I/O error ends the session like its end (nothing to retry any more); whose
        // error it was decides whether the backend is blamed.
        if !up.ended {
            match up.poll_copy(cx, client, backend, activity) {
                Poll::Ready(Ok(())) if !down.ended => {
                    if let Poll::Ready(Err(_)) = Pin::new(&mut *backend).poll_shutdown(cx) {
                        return Poll::Ready(End::BackendFailed);
                    }
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(Side::Source)) => return Poll::Ready(End::ClientFailed),
                Poll::Ready(Err(Side::Sink)) => return Poll::Ready(End::BackendFailed),
            }
        }
        if !down.ended {
            match down.poll_copy(cx, backend, client, activity) {
                Poll::Ready(Ok(())) if !up.ended && !half_close => return Poll::Ready(End::Done),
                Poll::Ready(Ok(())) if !up.ended => {
                    if let Poll::Ready(Err(_)) = Pin::new(&mut *client).poll_shutdown(cx) {
                        return Poll::Ready(End::ClientFailed);
                    }
                }
                Poll::Ready(Ok(())) | Poll::Pending => {}
                Poll::Ready(Err(Side::Source)) => return Poll::Ready(End::BackendFailed),
                Poll::Ready(Err(Side::Sink)) => return Poll::Ready(End::ClientFailed),
            }
        }
        if up.ended && down.ended {
            Poll::Ready(End::Done)
        } else {
            Poll::Pending
        }
    });
    tokio::pin!(copy);
    let end = loop {
        let quiet_since = epoch + Duration::from_micros(last.load(Ordering::Relaxed));
        tokio::select! {
            end = &mut copy => break end,
            () = tokio::time::sleep_until(later(quiet_since, idle).into()) => {
                let latest = epoch + Duration::from_micros(last.load(Ordering::Relaxed));
                if latest == quiet_since {
                    break End::Idle;
                }
            }
        }
    };
    (end, up.bytes, down.bytes)
}

/// Which end of a [`Half`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Reading from the source.
    Source,
    /// Writing to the sink.
    Sink,
}

/// Where [`relay`] notes when a side last delivered bytes: microseconds since `epoch` on the
/// coarse clock (a read of it costs ≈ 4 ns; the idle timer needs no finer than a tick). The
/// read skips `coarsetime`'s process-wide cache, which every worker thread would otherwise
/// write on every read.
#[derive(Clone, Copy)]
struct Activity<'a> {
    last: &'a AtomicU64,
    epoch: coarsetime::Instant,
}

impl Activity<'_> {
    fn note(self) {
        let micros = coarsetime::Instant::now_without_cache_update()
            .duration_since(self.epoch)
            .as_micros();
        // Relaxed: the idle timer only compares two readings of it.
        self.last.store(micros, Ordering::Relaxed);
    }
}

/// One direction of a relay: bytes read from one side wait in `buf[at..]` until the other
/// side has taken them.
struct Half<'a> {
    buf: &'a mut Vec<u8>,
    at: usize,
    /// Where bytes read are counted (the upstream's bytes in or out).
    counter: &'a AtomicU64,
    /// The source has ended and everything read from it was written.
    ended: bool,
    /// The source has ended.
    eof: bool,
    /// Bytes read from the source (this session's, for the access log).
    bytes: u64,
}

impl<'a> Half<'a> {
    fn new(buf: &'a mut Vec<u8>, ended: bool, counter: &'a AtomicU64) -> Self {
        buf.clear();
        Self {
            buf,
            at: 0,
            counter,
            ended,
            eof: ended,
            bytes: 0,
        }
    }

    /// Moves bytes from `src` to `dst` until `src` ends (ready), fails (naming the side), or
    /// must wait. Reads go into the buffer's spare capacity, so nothing is zeroed.
    fn poll_copy<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        activity: Activity<'_>,
    ) -> Poll<Result<(), Side>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if self.at < self.buf.len() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf[self.at..]))
                    .map_err(|_| Side::Sink)?;
                if n == 0 {
                    return Poll::Ready(Err(Side::Sink));
                }
                self.at += n;
                continue;
            }
            if self.eof {
                self.ended = true;
                return Poll::Ready(Ok(()));
            }
            self.buf.clear();
            self.at = 0;
            if self.buf.capacity() == 0 {
                *self.buf = pool::take_one();
            }
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut *src), cx, &mut *self.buf);
            let Poll::Ready(read) = read else {
                // Nothing to move: the buffer goes back to the thread's pool while this side
                // is quiet, so an idle session holds none (5 000 kept-alive sessions would
                // otherwise keep two touched pages each; BENCHMARKS.md).
                pool::give(std::mem::take(self.buf));
                return Poll::Pending;
            };
            let n = read.map_err(|_| Side::Source)?;
            if n == 0 {
                self.eof = true;
            } else {
                // Relaxed: a figure for the pages, read on its own.
                self.counter.fetch_add(n as u64, Ordering::Relaxed);
                self.bytes += n as u64;
                activity.note();
            }
        }
    }
}

/// Session buffers kept for reuse on each thread: a session takes two and gives them back
/// when it ends, so steady traffic allocates none (a 16 KiB `malloc` and `free` per buffer,
/// with glibc's consolidation, cost about 1 % of a short connection's CPU).
pub(crate) mod pool {
    use std::cell::RefCell;

    use super::READ_SIZE;

    /// Most buffers a thread keeps (4 MiB at 16 KiB).
    const KEEP: usize = 256;
    /// Buffers that grew beyond this (a long replay) are freed, not kept.
    const LARGEST: usize = 4 * READ_SIZE;

    thread_local! {
        static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub(crate) fn take_one() -> Vec<u8> {
        FREE.with(|free| free.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(READ_SIZE))
    }

    pub(crate) fn give(mut buf: Vec<u8>) {
        // An empty one (already given back while its session was quiet) holds nothing.
        if buf.capacity() == 0 || buf.capacity() > LARGEST {
            return;
        }
        buf.clear();
        FREE.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEEP {
                free.push(buf);
            }
        });
    }

    /// A session's two buffers, back to the pool on drop (whichever way the session ends).
    pub(crate) struct Buffers {
        pub(crate) sent: Vec<u8>,
        pub(crate) answer: Vec<u8>,
    }

    impl Buffers {
        pub(crate) fn take() -> Self {
            Self {
                sent: take_one(),
                answer: take_one(),
            }
        }
    }

    impl Drop for Buffers {
        fn drop(&mut self) {
            give(std::mem::take(&mut self.sent));
            give(std::mem::take(&mut self.answer));
        }
    }
}
