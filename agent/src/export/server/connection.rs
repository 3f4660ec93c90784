//! One client connection, from accept to close, under a deadline at every
//! moment: the TLS handshake and the request headers get `header_timeout`,
//! the wait for a next request on a kept-alive connection `idle_timeout`,
//! and a request from its headers to the last byte of its response
//! `write_timeout`. A watchdog beside the HTTP connection closes it when the
//! deadline of its current phase passes, or when the listener evicts it to
//! make room (see `listener`).
//!
//! hyper's own `header_read_timeout` is not used: it starts when hyper
//! begins waiting for a request, so on a kept-alive connection it would
//! also bound the idle time, and it does not cover TLS.

use std::{
    convert::Infallible,
    future::Future,
    io,
    os::fd::{AsRawFd as _, RawFd},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{extract::Request, http::Response, Router};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{watch, Notify},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

use super::{
    body::Guarded,
    limits::HttpLimits,
    stats::{DropReason, HttpStats},
};

/// What every connection of one listener shares.
pub struct Shared {
    pub app: Router,
    pub tls: Option<TlsAcceptor>,
    pub http: http1::Builder,
    pub timeouts: Timeouts,
    pub stats: Arc<HttpStats>,
    /// Deadlines are kept as milliseconds since this instant.
    pub epoch: Instant,
}

impl Shared {
    pub fn new(app: Router, tls: Option<TlsAcceptor>, limits: &HttpLimits, stats: Arc<HttpStats>) -> Self {
        let mut http = http1::Builder::new();
        http.header_read_timeout(None)
            .max_header_size(limits.max_header_bytes as usize)
            // The read buffer holds the headers; hyper's minimum is 8 KiB.
            .max_buf_size((limits.max_header_bytes as usize).max(8192))
            .keep_alive(true);
        let timeouts =
            Timeouts { header: limits.header_timeout, idle: limits.idle_timeout, write: limits.write_timeout };
        Self { app, tls, http, timeouts, stats, epoch: Instant::now() }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// TLS handshake.
    Handshake,
    /// Waiting for (the rest of) a request's headers.
    Headers,
    /// A request is being answered.
    Busy,
    /// Kept alive between requests.
    Idle,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Handshake, Self::Headers, Self::Busy, Self::Idle];

    fn timeout(self, timeouts: &Timeouts) -> Duration {
        match self {
            Self::Handshake | Self::Headers => timeouts.header,
            Self::Busy => timeouts.write,
            Self::Idle => timeouts.idle,
        }
    }

    fn expired(self) -> DropReason {
        match self {
            Self::Handshake => DropReason::HandshakeTimeout,
            Self::Headers => DropReason::HeaderTimeout,
            Self::Busy => DropReason::WriteTimeout,
            Self::Idle => DropReason::IdleTimeout,
        }
    }
}

/// A connection's phase and deadline, shared by its reader (which sees a
/// next request begin), its service (which sees requests start and end),
/// its watchdog and the listener (which may evict it).
pub struct Tracker {
    epoch: Instant,
    timeouts: Timeouts,
    /// Deadline in ms since `epoch`, shifted left by 8, with the phase in
    /// the low byte: one atomic, so the watchdog never pairs the deadline
    /// of one phase with another phase.
    state: AtomicU64,
    evicted: AtomicBool,
    wake: Notify,
}

impl Tracker {
    pub fn new(shared: &Shared, first: Phase) -> Self {
        let tracker = Self {
            epoch: shared.epoch,
            timeouts: shared.timeouts,
            state: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        };
        tracker.enter(first);
        tracker
    }

    /// Start `phase` now, with its timeout.
    pub fn enter(&self, phase: Phase) {
        let deadline = Instant::now() + phase.timeout(&self.timeouts);
        // Rounded up: never a moment early.
        let millis =
            u64::try_from(deadline.duration_since(self.epoch).as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX >> 8);
        let code = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0) as u64;
        self.state.store(millis.min(u64::MAX >> 8) << 8 | code, Ordering::SeqCst);
        // Stored as a permit if the watchdog is not waiting right now.
        self.wake.notify_one();
    }

    fn load(&self) -> (Phase, Instant) {
        let state = self.state.load(Ordering::SeqCst);
        let phase = Phase::ALL.get((state & 0xff) as usize).copied().unwrap_or(Phase::Busy);
        (phase, self.epoch + Duration::from_millis(state >> 8))
    }

    pub fn phase(&self) -> Phase {
        self.load().0
    }

    /// Not answering a request, and not already evicted.
    pub fn evictable(&self) -> bool {
        self.phase() != Phase::Busy && !self.evicted.load(Ordering::SeqCst)
    }

    /// Close this connection now; false if it already was.
    pub fn evict(&self) -> bool {
        if self.evicted.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.wake.notify_one();
        true
    }

    /// Completes when the connection must be closed, and says why.
    pub async fn watchdog(&self) -> DropReason {
        loop {
            if self.evicted.load(Ordering::SeqCst) {
                return DropReason::Evicted;
            }
            let (phase, deadline) = self.load();
            if Instant::now() >= deadline {
                return phase.expired();
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.wake.notified() => {}
            }
        }
    }
}

/// Serve one accepted connection until it ends; count it if the agent
/// ended it.
pub async fn run(tcp: TcpStream, shared: Arc<Shared>, tracker: Arc<Tracker>, shutdown: watch::Receiver<bool>) {
    let fd = tcp.as_raw_fd();
    let watchdog = async {
        let reason = tracker.watchdog().await;
        if reason.resets() {
            // Still open: `serve` below owns the socket until this
            // `select!` returns.
            reset_on_close(fd);
        }
        reason
    };
    let dropped = tokio::select! {
        reason = watchdog => Some(reason),
        reason = serve(tcp, &shared, &tracker, shutdown) => reason,
    };
    if let Some(reason) = dropped {
        tracing::trace!(reason = reason.label(), "connection closed by the agent");
        shared.stats.dropped(reason);
    }
}

/// Make the coming close send a reset: nothing is left to send, and the
/// agent's side skips `TIME_WAIT`.
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is an open socket owned by the caller's stream for the
    // duration of this call; setsockopt reads the struct we pass.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::trace!(error = %io::Error::last_os_error(), "SO_LINGER failed; closing normally");
    }
}

/// The handshake, if any, then HTTP/1.1 until the client or the shutdown
/// ends it.
async fn serve(
    tcp: TcpStream,
    shared: &Shared,
    tracker: &Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) -> Option<DropReason> {
    let Some(acceptor) = &shared.tls else {
        return http(tcp, shared, tracker, shutdown).await;
    };
    match acceptor.accept(tcp).await {
        Ok(tls) => {
            tracker.enter(Phase::Headers);
            http(tls, shared, tracker, shutdown).await
        }
        Err(err) => {
            tracing::trace!(error = %err, "TLS handshake failed");
            Some(DropReason::HandshakeFailed)
        }
    }
}

async fn http<S>(
    io: S,
    shared: &Shared,
    tracker: &Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<DropReason>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(TrackedIo { inner: io, tracker: Arc::clone(tracker) });
    let service = TrackedService { app: shared.app.clone(), tracker: Arc::clone(tracker) };
    let connection = shared.http.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // A dropped sender is a shutdown too.
        () = stopped(&mut shutdown) => {
            // Finish the request in progress, if any; close otherwise.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    let err = result.err()?;
    if err.is_parse_too_large() {
        // hyper has answered 431.
        Some(DropReason::HeaderTooLarge)
    } else if err.is_parse() {
        // hyper has answered 400.
        Some(DropReason::BadRequest)
    } else {
        // The client went away (reset, EOF mid-request): its choice.
        tracing::trace!(error = %err, "connection ended");
        None
    }
}

/// Completes at shutdown (or when the listener is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The stream, noticing the first bytes of a next request on a kept-alive
/// connection (the idle deadline gives way to the header deadline).
struct TrackedIo<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before && self.tracker.phase() == Phase::Idle {
            self.tracker.enter(Phase::Headers);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The routes, marking the connection busy from a request's headers to its
/// response's last byte.
struct TrackedService {
    app: Router,
    tracker: Arc<Tracker>,
}

/// Back to idle when dropped with the response body.
struct RequestDone(Arc<Tracker>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Guarded<RequestDone>>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<Guarded<RequestDone>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.tracker.enter(Phase::Busy);
        let done = RequestDone(Arc::clone(&self.tracker));
        // A Router is always ready: `poll_ready` can be skipped.
        let response = tower_service::Service::call(&mut self.app.clone(), request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Guarded::new(body, done)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(header: u64, idle: u64, write: u64) -> Shared {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(header),
            idle_timeout: Duration::from_millis(idle),
            write_timeout: Duration::from_millis(write),
            ..HttpLimits::default()
        };
        Shared::new(Router::new(), None, &limits, Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline() {
        let shared = shared(100, 1000, 10_000);
        for (phase, after, reason) in [
            (Phase::Handshake, 100, DropReason::HandshakeTimeout),
            (Phase::Headers, 100, DropReason::HeaderTimeout),
            (Phase::Idle, 1000, DropReason::IdleTimeout),
            (Phase::Busy, 10_000, DropReason::WriteTimeout),
        ] {
            let tracker = Tracker::new(&shared, phase);
            let start = Instant::now();
            assert_eq!(tracker.watchdog().await, reason);
            assert_eq!(start.elapsed(), Duration::from_millis(after), "{phase:?}");
        }
    }

    /// A phase change moves the deadline, earlier or later, while the
    /// watchdog already waits.
    #[tokio::test(start_paused = true)]
    async fn phase_changes_move_the_deadline() {
        let shared = shared(100, 1000, 10_000);
        let tracker = Arc::new(Tracker::new(&shared, Phase::Idle));
        let start = Instant::now();
        let changer = Arc::clone(&tracker);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A next request begins: its headers get 100 ms from now.
            changer.enter(Phase::Headers);
        });
        assert_eq!(tracker.watchdog().await, DropReason::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_millis(600));

        let tracker = Arc::new(Tracker::new(&shared, Phase::Headers));
        let changer = Arc::clone(&tracker);
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            changer.enter(Phase::Busy);
        });
        assert_eq!(tracker.watchdog().await, DropReason::WriteTimeout);
        assert_eq!(start.elapsed(), Duration::from_millis(10_050));
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_is_immediate_and_once() {
        let shared = shared(100_000, 100_000, 100_000);
        let tracker = Arc::new(Tracker::new(&shared, Phase::Headers));
        assert!(tracker.evictable());
        let evictor = Arc::clone(&tracker);
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(evictor.evict());
            assert!(!evictor.evict(), "a second eviction of the same connection");
        });
        assert_eq!(tracker.watchdog().await, DropReason::Evicted);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert!(!tracker.evictable());
        let busy = Tracker::new(&shared, Phase::Busy);
        assert!(!busy.evictable(), "a request in progress is never evicted");
    }
}
