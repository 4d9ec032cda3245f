//! What the session task, the writer task and the stream halves share: the queues' message types, the
//! session's counters, and the count of handles that keep it alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::frame::{Frame, RstStatus};

/// What goes to the writer task.
pub(super) enum Out {
    Frame(Frame),
    /// Flush, shut the connection's write side down and stop.
    Close,
}

/// What stream halves tell the session.
pub(super) enum Cmd {
    /// The reader consumed `bytes` (returned to the window).
    Consumed {
        stream_id: u32,
        bytes: usize,
    },
    /// The writer queued its FIN.
    LocalFin(u32),
    /// The writer was dropped without FIN: the session sends it.
    WriterDropped(u32),
    Reset {
        stream_id: u32,
        status: RstStatus,
    },
}

/// Session state the handles read.
pub(super) struct SessionShared {
    open_streams: AtomicUsize,
    closing: AtomicBool,
    start: Instant,
    /// Milliseconds after `start` of the last frame read or written.
    last_activity: AtomicU64,
}

impl SessionShared {
    pub fn new() -> Self {
        SessionShared {
            open_streams: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            start: Instant::now(),
            last_activity: AtomicU64::new(0),
        }
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    pub fn set_open_streams(&self, n: usize) {
        self.open_streams.store(n, Ordering::Release);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// From now on stream halves fail instead of queueing.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity.fetch_max(ms, Ordering::AcqRel);
    }

    pub fn last_activity(&self) -> Instant {
        self.start + std::time::Duration::from_millis(self.last_activity.load(Ordering::Acquire))
    }
}

/// Counts the handles that can still use the session: every `Session` clone and every stream half.
pub(super) struct Live {
    count: AtomicUsize,
    gone: Notify,
}

impl Live {
    pub fn new() -> Arc<Self> {
        Arc::new(Live {
            count: AtomicUsize::new(0),
            gone: Notify::new(),
        })
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves after the count dropped to zero (a drop while nobody waited is remembered).
    pub fn gone(&self) -> tokio::sync::futures::Notified<'_> {
        self.gone.notified()
    }
}

pub(super) struct LiveToken(Arc<Live>);

impl LiveToken {
    pub fn new(live: &Arc<Live>) -> Self {
        live.count.fetch_add(1, Ordering::AcqRel);
        LiveToken(live.clone())
    }
}

impl Clone for LiveToken {
    fn clone(&self) -> Self {
        LiveToken::new(&self.0)
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.gone.notify_one();
        }
    }
}
