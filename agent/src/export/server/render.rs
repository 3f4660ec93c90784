//! How concurrent scrapes share work. Rendering `/metrics` reads every
//! kernel map and encodes every series (1–5 ms and ~1.2 MB at 10,000
//! series), so fifty scrapers arriving together must not cost fifty
//! renders, nor fifty bodies in memory.
//!
//! - A scrape is answered with a render that **completed after it
//!   arrived**: one in progress when it arrives (single flight), or one that
//!   completed while it waited. It never gets data older than its request.
//! - At most `max_concurrent_scrapes` scrapes hold a slot, from the render
//!   they wait for to the last byte of their response; the others queue
//!   (first come, first served) without holding a body. So the bodies alive
//!   are at most the slots plus one, whatever clients do, including clients
//!   that do not read their responses.
//! - The newest body is kept only while a scrape is in progress, for the
//!   queued ones; an idle agent keeps none (the render may keep a sent
//!   body's buffer for its next body: `metrics::Spare`).
//!
//! The render itself is an opaque function, run on a blocking thread (it is
//! a series of syscalls); it runs to completion even if the scrape that
//! started it goes away, so the scrapes sharing it still get it.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use axum::body::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

pub use crate::export::exposition::Format;

/// A finished body; cloning shares it.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub body: Bytes,
    pub content_type: &'static str,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the metrics task failed")]
    Task,
}

pub type RenderFn = dyn Fn(Format) -> Result<Rendered, RenderError> + Send + Sync;

type Outcome = Result<Rendered, RenderError>;

/// Renders in progress and recent, per format, and the scrape slots.
pub struct Renders {
    slots: Arc<Semaphore>,
    flights: [Mutex<Flight>; 2],
}

#[derive(Default)]
struct Flight {
    /// The render in progress: `None` inside until it is done.
    rendering: Option<watch::Receiver<Option<Outcome>>>,
    /// The newest successful render and when it completed, kept while
    /// scrapes are in progress.
    latest: Option<(Instant, Rendered)>,
    /// Scrapes between arrival and their last byte sent.
    active: usize,
}

impl Renders {
    pub fn new(max_concurrent_scrapes: u32) -> Arc<Self> {
        let slots = usize::try_from(max_concurrent_scrapes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Arc::new(Self { slots: Arc::new(Semaphore::new(slots)), flights: Default::default() })
    }

    fn flight(&self, format: Format) -> MutexGuard<'_, Flight> {
        let index = match format {
            Format::Text => 0,
            Format::OpenMetrics => 1,
        };
        self.flights[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A scrape arrives now.
    pub fn begin(self: &Arc<Self>, format: Format) -> Scrape {
        self.flight(format).active += 1;
        Scrape { renders: Arc::clone(self), format, arrived: Instant::now(), slot: None }
    }
}

/// One `/metrics` request, from its arrival to its last byte sent: keep it
/// alive with the response body ([`super::body::Guarded`]).
pub struct Scrape {
    renders: Arc<Renders>,
    format: Format,
    arrived: Instant,
    slot: Option<OwnedSemaphorePermit>,
}

impl Scrape {
    /// Wait for a slot, then for a render that completed after this scrape
    /// arrived (starting one if none is in progress).
    pub async fn render(&mut self, render: &Arc<RenderFn>) -> Outcome {
        if self.slot.is_none() {
            // The semaphore is never closed.
            let slot = Arc::clone(&self.renders.slots).acquire_owned().await.map_err(|_| RenderError::Task)?;
            self.slot = Some(slot);
        }
        let mut done = {
            let mut flight = self.renders.flight(self.format);
            if let Some((completed, rendered)) = &flight.latest {
                if *completed >= self.arrived {
                    return Ok(rendered.clone());
                }
            }
            match &flight.rendering {
                Some(rendering) => rendering.clone(),
                None => {
                    let rendering = self.start(Arc::clone(render));
                    flight.rendering = Some(rendering.clone());
                    rendering
                }
            }
        };
        let outcome = done.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
        // Err: the render task was dropped with the runtime (shutdown).
        outcome.ok().flatten().unwrap_or(Err(RenderError::Task))
    }

    /// Render on a blocking thread, from a task of its own so that it
    /// completes (and is shared) even if this scrape is dropped.
    fn start(&self, render: Arc<RenderFn>) -> watch::Receiver<Option<Outcome>> {
        let (publish, rendering) = watch::channel(None);
        let (renders, format) = (Arc::clone(&self.renders), self.format);
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || render(format)).await.unwrap_or(Err(RenderError::Task));
            {
                let mut flight = renders.flight(format);
                flight.rendering = None;
                if let Ok(rendered) = &outcome {
                    if flight.active > 0 {
                        flight.latest = Some((Instant::now(), rendered.clone()));
                    }
                }
            }
            // Nobody may be waiting any more; that is fine.
            let _ = publish.send(Some(outcome));
        });
        rendering
    }
}

impl Drop for Scrape {
    fn drop(&mut self) {
        let mut flight = self.renders.flight(self.format);
        flight.active = flight.active.saturating_sub(1);
        if flight.active == 0 {
            flight.latest = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly")]
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    /// A render that takes `millis` and counts its runs; its body says
    /// which run it was.
    fn counting(millis: u64) -> (Arc<AtomicUsize>, Arc<RenderFn>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let render: Arc<RenderFn> = Arc::new(move |_| {
            let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(millis));
            Ok(Rendered { body: Bytes::from(run.to_string()), content_type: "text/plain" })
        });
        (runs, render)
    }

    fn body(outcome: &Outcome) -> String {
        String::from_utf8(outcome.as_ref().unwrap().body.to_vec()).unwrap()
    }

    /// Fifty scrapes at once, eight slots: one render serves them all,
    /// including those that got a slot after it completed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_render() {
        let renders = Renders::new(8);
        let (runs, render) = counting(100);
        let scrapes: Vec<Scrape> = (0..50).map(|_| renders.begin(Format::Text)).collect();
        let tasks: Vec<_> = scrapes
            .into_iter()
            .map(|mut scrape| {
                let render = Arc::clone(&render);
                tokio::spawn(async move {
                    let outcome = scrape.render(&render).await;
                    // Sending takes a moment; the slot is held meanwhile.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    drop(scrape);
                    outcome
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(body(&task.await.unwrap()), "1");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(renders.flight(Format::Text).latest.is_none(), "the body is released once every scrape is done");
    }

    /// A scrape never gets a render that completed before it arrived.
    #[tokio::test]
    async fn later_scrapes_get_fresh_renders() {
        let renders = Renders::new(8);
        let (runs, render) = counting(0);
        let mut first = renders.begin(Format::Text);
        assert_eq!(body(&first.render(&render).await), "1");
        // `first` is still being sent when `second` arrives.
        let mut second = renders.begin(Format::Text);
        assert_eq!(body(&second.render(&render).await), "2");
        drop((first, second));
        let mut third = renders.begin(Format::Text);
        assert_eq!(body(&third.render(&render).await), "3");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    /// The formats are separate renders.
    #[tokio::test]
    async fn formats_do_not_share() {
        let renders = Renders::new(8);
        let (runs, render) = counting(0);
        let mut text = renders.begin(Format::Text);
        let mut open = renders.begin(Format::OpenMetrics);
        text.render(&render).await.unwrap();
        open.render(&render).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// The scrape that started a render goes away: the others still get it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_scrape_does_not_cancel_the_render() {
        let renders = Renders::new(8);
        let (runs, render) = counting(200);
        let mut leader = renders.begin(Format::Text);
        let mut follower = renders.begin(Format::Text);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), leader.render(&render)).await;
        assert!(cancelled.is_err(), "the leader gave up mid-render");
        drop(leader);
        assert_eq!(body(&follower.render(&render).await), "1");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// Slots are the bound: a scrape without one waits, whatever the others do.
    #[tokio::test]
    async fn scrapes_beyond_the_slots_wait() {
        let renders = Renders::new(1);
        let (_, render) = counting(0);
        let mut holder = renders.begin(Format::Text);
        holder.render(&render).await.unwrap();
        let mut waiting = renders.begin(Format::Text);
        let blocked = tokio::time::timeout(Duration::from_millis(100), waiting.render(&render)).await;
        assert!(blocked.is_err(), "no slot while the holder sends");
        drop(holder);
        waiting.render(&render).await.unwrap();
    }

    /// A failed render is shared with the scrapes waiting for it, not kept.
    #[tokio::test]
    async fn errors_are_shared_and_not_kept() {
        let renders = Renders::new(8);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let render: Arc<RenderFn> = Arc::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(RenderError::Task)
        });
        let mut first = renders.begin(Format::Text);
        assert!(matches!(first.render(&render).await, Err(RenderError::Task)));
        let mut second = renders.begin(Format::Text);
        assert!(second.render(&render).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
