//! Connection caps for the supervisor's listeners (control socket, HTTP server).
//!
//! A client past the cap gets one clear refusal (a control-protocol error line, an HTTP 503)
//! and is closed; the supervisor never crashes or slows down for it. Each connection holds a
//! permit for its lifetime, so the count can never exceed the cap.
//!
//! Refusals are tasks too (the reply is written, our side shut down, and the client's request
//! drained for at most [`REFUSAL_LINGER`] so closing does not reset the connection before the
//! client reads the reply), and they are capped as well: past both caps a connection is
//! closed at once, without a reply. Nothing here grows with what clients do.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a refused connection is kept to deliver its refusal.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The bytes of a refused client read (and discarded) before closing.
const DRAIN_BYTES: u64 = 64 * 1024;

/// A cap on concurrent connections.
#[derive(Debug, Clone)]
pub struct ConnLimit {
    active: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    max: usize,
}

impl ConnLimit {
    /// At most `max` connections at once (at least 1), and as many refusals in flight.
    pub fn new(max: usize) -> ConnLimit {
        let max = max.max(1);
        ConnLimit {
            active: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A permit for one more connection, `None` when the cap is reached. Dropping the permit
    /// frees the slot.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.active.clone().try_acquire_owned().ok()
    }

    /// Sends `reply` to a connection that was not admitted and closes it, in a task of its own.
    pub fn refuse<S>(&self, mut stream: S, reply: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            // Refusals are capped too: drop the connection without a word.
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(&reply).await?;
                stream.shutdown().await?;
                // Reading what the client sent keeps our close from resetting the connection
                // (and discarding the reply) while its request is still unread.
                let mut sink = tokio::io::sink();
                tokio::io::copy(&mut (&mut stream).take(DRAIN_BYTES), &mut sink).await
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_cap_and_frees_slots_on_drop() {
        let limit = ConnLimit::new(2);
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none(), "third is past the cap");
        drop(a);
        assert!(limit.admit().is_some(), "a slot came back");
        assert_eq!(ConnLimit::new(0).max(), 1);
    }
}
