//! A response body that holds a guard until its last byte has been handed to
//! the connection: a scrape slot (`render`) or the connection's "request in
//! progress" state (`connection`) lasts exactly as long as the response is
//! being sent, including to a client that reads slowly.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

pub struct Guarded<G> {
    body: Body,
    /// Dropped at the end of the body, or with it (connection closed).
    guard: Option<G>,
}

impl<G> Guarded<G> {
    pub fn new(body: Body, guard: G) -> Self {
        Self { body, guard: Some(guard) }
    }
}

impl<G: Send + Unpin + 'static> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use http_body::Body as _;

    use super::*;

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guard_lives_until_the_last_frame() {
        let released = Arc::new(AtomicBool::new(false));
        let mut body = Guarded::new(Body::from("abc"), Flag(Arc::clone(&released)));
        assert_eq!(body.size_hint().exact(), Some(3));
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(frame.is_some_and(|f| f.is_ok_and(|f| f.data_ref().is_some_and(|d| d == "abc"))));
        assert!(!released.load(Ordering::SeqCst), "released before the end");
        assert!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.is_none());
        assert!(released.load(Ordering::SeqCst), "held after the end");
    }

    #[test]
    fn guard_goes_with_an_unsent_body() {
        let released = Arc::new(AtomicBool::new(false));
        drop(Guarded::new(Body::from("abc"), Flag(Arc::clone(&released))));
        assert!(released.load(Ordering::SeqCst));
    }
}
