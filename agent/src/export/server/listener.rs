//! The accept loop: a cap on connections that a flood cannot turn into a
//! denial of service, and an accept loop that never spins.
//!
//! At the cap, the oldest connection that is not answering a request (idle
//! between requests, still sending its headers, or in its TLS handshake) is
//! closed to make room, as nginx does with its reusable connections. So
//! thousands of slow or idle connections hold at most `max_connections`
//! slots, and a scraper that connects and sends its request at once is
//! served: it is the newest connection, the last to be evicted. Only when
//! every connection is answering a request is a new one refused. (While
//! evicted connections close, up to [`EVICTION_SLACK`] more are open.)
//!
//! A failed accept that concerns one connection is skipped; any other
//! (EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected) pauses the loop,
//! 5 ms doubling to 1 s like Go's net/http, because the listening socket
//! stays readable and retrying at once would spin a core.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    os::fd::AsRawFd as _,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};

use super::{
    connection::{self, Phase, Shared, Tracker},
    stats::{DropReason, HttpStats},
};

/// How long connections in progress get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connections admitted in place of evicted ones that have not closed yet:
/// an evicted connection closes at its task's next poll, and the accept
/// loop does not wait for each (under a flood it would accept at the pace
/// of task switches, and the kernel's accept queue would overflow and drop
/// the SYNs of honest clients). Open connections stay below the cap plus
/// this.
pub const EVICTION_SLACK: u32 = 32;

/// Waiting longer than this for an evicted connection to close means
/// something is wrong: refuse instead.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where connections come from: a TCP listener, or a test's stand-in.
pub trait Incoming: Send {
    fn accept(&mut self) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl Incoming for TcpListener {
    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _peer)| stream)
    }
}

/// The open connections, oldest first (ids grow with each accept).
#[derive(Default)]
struct Connections {
    table: Mutex<BTreeMap<u64, Arc<Tracker>>>,
}

impl Connections {
    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Tracker>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Evict the oldest connection not answering a request; false if every
    /// one is.
    fn evict_oldest(&self) -> bool {
        self.table().values().any(|tracker| tracker.evictable() && tracker.evict())
    }
}

/// Held by a connection's task: its slot, its entry in the table and the
/// open gauge, all released when the task ends however it ends.
struct Open {
    id: u64,
    connections: Arc<Connections>,
    stats: Arc<HttpStats>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.table().remove(&self.id);
        self.stats.closed();
    }
}

/// Accept until `shutdown`, then give the connections in progress
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn run(
    mut incoming: impl Incoming,
    shared: Arc<Shared>,
    max_connections: u32,
    shutdown: impl Future<Output = ()> + Send,
) {
    shared.stats.set_max_connections(max_connections);
    let slots = Arc::new(Semaphore::new((max_connections + EVICTION_SLACK) as usize));
    let connections = Arc::new(Connections::default());
    let (stop, stopped) = watch::channel(false);
    let mut backoff = Backoff::default();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = incoming.accept() => accepted,
        };
        let tcp = match accepted {
            Ok(tcp) => {
                backoff.reset();
                tcp
            }
            Err(err) => {
                shared.stats.accept_error(&err);
                if let Some(pause) = backoff.after(&err) {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let Some(slot) = admit(&slots, &connections).await else {
            connection::reset_on_close(tcp.as_raw_fd());
            drop(tcp);
            shared.stats.dropped(DropReason::Limit);
            continue;
        };
        next_id += 1;
        let first = if shared.tls.is_some() { Phase::Handshake } else { Phase::Headers };
        let tracker = Arc::new(Tracker::new(&shared, first));
        connections.table().insert(next_id, Arc::clone(&tracker));
        shared.stats.opened();
        let open =
            Open { id: next_id, connections: Arc::clone(&connections), stats: Arc::clone(&shared.stats), _slot: slot };
        let (shared, stopped) = (Arc::clone(&shared), stopped.clone());
        tokio::spawn(async move {
            let _open = open;
            connection::run(tcp, shared, tracker, stopped).await;
        });
    }
    // New connections are refused from here on.
    drop(incoming);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(max_connections + EVICTION_SLACK)).await;
    if drained.is_err() {
        tracing::info!("connections still open after {SHUTDOWN_GRACE:?} of shutdown; closing them");
    }
}

/// A slot for a new connection: a free one below the cap, else one freed
/// by evicting the oldest connection that is not answering a request
/// (taken from the slack at once while the evicted one closes). The evicted
/// connection's task counts it.
async fn admit(slots: &Arc<Semaphore>, connections: &Connections) -> Option<OwnedSemaphorePermit> {
    // This loop is the only one taking slots: no race between the check
    // and the acquisition.
    if slots.available_permits() > EVICTION_SLACK as usize {
        return Arc::clone(slots).try_acquire_owned().ok();
    }
    if !connections.evict_oldest() {
        return None;
    }
    if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
        return Some(slot);
    }
    // The slack is used up: wait for an evicted connection to close.
    tokio::time::timeout(EVICTION_WAIT, Arc::clone(slots).acquire_owned()).await.ok()?.ok()
}

/// The pause after a failed accept.
#[derive(Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    fn reset(&mut self) {
        self.last = None;
    }

    /// None for errors of one connection (it is gone; take the next).
    fn after(&mut self, err: &io::Error) -> Option<Duration> {
        if concerns_one_connection(err) {
            return None;
        }
        let pause = self.last.map_or(BACKOFF_MIN, |last| (last * 2).min(BACKOFF_MAX));
        self.last = Some(pause);
        Some(pause)
    }
}

/// accept(2): "Linux accept() passes already-pending network errors on the
/// new socket as an error code from accept()"; those, and a connection
/// aborted before it was accepted, say nothing about the listener.
fn concerns_one_connection(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;

    use super::*;
    use crate::export::server::limits::HttpLimits;

    #[test]
    fn backoff_doubles_to_a_second_and_skips_connection_errors() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<u128> = (0..10).filter_map(|_| backoff.after(&emfile)).map(|d| d.as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff.after(&io::Error::from_raw_os_error(libc::ECONNABORTED)), None);
        backoff.reset();
        assert_eq!(backoff.after(&io::Error::from_raw_os_error(libc::ENFILE)), Some(BACKOFF_MIN));
        assert_eq!(backoff.after(&io::Error::other("unexpected")), Some(BACKOFF_MIN * 2));
    }

    /// A listener that is out of descriptors forever.
    struct Exhausted(Arc<AtomicUsize>);

    impl Incoming for Exhausted {
        async fn accept(&mut self) -> io::Result<TcpStream> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
    }

    /// Connect and send `request`; an error if the agent resets the
    /// connection first.
    async fn try_send(addr: std::net::SocketAddr, request: &str) -> io::Result<TcpStream> {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        // Let the agent's side accept it and read what was sent.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(stream)
    }

    async fn send(addr: std::net::SocketAddr, request: &str) -> TcpStream {
        try_send(addr, request).await.expect("connect and send")
    }

    /// Everything the agent sends until it closes (empty if it reset).
    async fn until_closed(mut stream: TcpStream) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "still open after 5 s");
        String::from_utf8_lossy(&received).into_owned()
    }

    /// At the cap, a connection that is not answering a request makes room
    /// for a new one; when every connection is answering one, a new
    /// connection is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cap_evicts_idle_connections_and_refuses_when_all_are_busy() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let opened = Arc::clone(&gate);
        let app = Router::new()
            .route(
                "/wait",
                axum::routing::get(move || {
                    let gate = Arc::clone(&opened);
                    async move {
                        gate.notified().await;
                        "done\n"
                    }
                }),
            )
            .route("/", axum::routing::get(|| async { "ok\n" }));
        let stats = Arc::new(HttpStats::default());
        let shared = Arc::new(Shared::new(app, None, &HttpLimits::default(), Arc::clone(&stats)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(run(listener, shared, 2, std::future::pending()));

        let wait = "GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let silent = send(addr, "").await;
        let busy = send(addr, wait).await;
        // Full: the silent one is evicted for the newcomer, which is served.
        let served = send(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(until_closed(served).await.ends_with("ok\n"));
        assert_eq!(until_closed(silent).await, "", "evicted");
        assert_eq!(stats.dropped_count(DropReason::Evicted), 1);

        // Full of requests in progress: refused.
        let busy_too = send(addr, wait).await;
        // Reset at once: possibly before the connect or the send completes.
        if let Ok(refused) = try_send(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await {
            assert_eq!(until_closed(refused).await, "", "refused");
        }
        assert_eq!(stats.dropped_count(DropReason::Limit), 1);
        assert_eq!(stats.dropped_count(DropReason::Evicted), 1, "a request in progress is never evicted");
        gate.notify_waiters();
        assert!(until_closed(busy).await.ends_with("done\n"));
        assert!(until_closed(busy_too).await.ends_with("done\n"));
    }

    /// At EMFILE the loop sleeps instead of spinning: over 1.3 s, 5 + 10 +
    /// … + 640 ms of pauses allow 9 attempts.
    #[tokio::test(start_paused = true)]
    async fn emfile_does_not_spin() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(HttpStats::default());
        let shared = Arc::new(Shared::new(Router::new(), None, &HttpLimits::default(), Arc::clone(&stats)));
        let stop = tokio::time::sleep(Duration::from_millis(1300));
        run(Exhausted(Arc::clone(&calls)), shared, 4, stop).await;
        assert_eq!(calls.load(Ordering::SeqCst), 9);
    }
}
