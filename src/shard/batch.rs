//! Batch submit: many send requests in one call, each with its own outcome.
//!
//! Every item goes through exactly the single-send path ([`Pipeline::send`]: validation,
//! admission, route, `accepted` write, submit, `submitted` write), so a batch item has the
//! same guarantees and the same errors as a single send. What the batch adds is
//! concurrency: up to [`BATCH_WINDOW`] items of one batch are in flight at once, as local
//! tasks of this shard. Their state writes therefore reach the store's writer together and
//! are committed in shared write batches (one journal write and, with `fsync = batch`, one
//! fdatasync for many messages), and their submits fill the SMPP windows instead of going
//! one round trip at a time.
//!
//! Results come back in item order. The window is the bound on what one batch holds in
//! flight (tasks, store ops, queued submits); the item count itself is bounded by the API.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;

use crate::api::error::ApiError;
use crate::shard::pipeline::{Pipeline, SendAnswer, SendInput};
use crate::shard::stages::RequestMeta;

/// Items of one batch in flight at once on the shard.
pub const BATCH_WINDOW: usize = 256;

/// Most headers kept for the items' admission (HTTP allows at most 32 per request here).
const MAX_META_HEADERS: usize = 32;

/// The request metadata the admission stages need, owned, so that every item (a task of its
/// own) can build its [`RequestMeta`].
#[derive(Debug, Clone)]
pub struct BatchMeta {
    client_ip: IpAddr,
    /// `(name, value)` for every header that is valid UTF-8.
    headers: Vec<(String, String)>,
}

impl BatchMeta {
    pub fn new<'h>(client_ip: IpAddr, headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Self {
        BatchMeta {
            client_ip,
            headers: headers
                .filter_map(|(n, v)| Some((n.to_owned(), std::str::from_utf8(v).ok()?.to_owned())))
                .take(MAX_META_HEADERS)
                .collect(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Pipeline {
    /// Sends every item through [`Pipeline::send`], at most [`BATCH_WINDOW`] at once, and
    /// returns one result per item in order. Items already refused by the caller (`Err`,
    /// e.g. a malformed item) are passed through without being sent.
    ///
    /// Dropping the returned future stops starting new items; items already started run to
    /// their end (their outcome is in the store under their transaction_id).
    pub async fn send_batch(
        self: &Rc<Self>,
        items: Vec<Result<SendInput, ApiError>>,
        meta: BatchMeta,
    ) -> Vec<Result<SendAnswer, ApiError>> {
        let meta = Rc::new(meta);
        // (index, task) in item order; the oldest is awaited when the window is full.
        let mut in_flight = VecDeque::with_capacity(BATCH_WINDOW.min(items.len()));
        let mut slots: Vec<Option<Result<SendAnswer, ApiError>>> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Err(e) => slots.push(Some(Err(e))),
                Ok(input) => {
                    slots.push(None);
                    if in_flight.len() >= BATCH_WINDOW
                        && let Some((j, task)) = in_flight.pop_front()
                    {
                        slots[j] = Some(task.await);
                    }
                    let pipeline = Rc::clone(self);
                    let meta = Rc::clone(&meta);
                    let task = monoio::spawn(async move {
                        let lookup = |name: &str| meta.header(name);
                        let m = RequestMeta {
                            client_ip: meta.client_ip,
                            header: &lookup,
                        };
                        pipeline.send(input, &m).await
                    });
                    in_flight.push_back((i, task));
                }
            }
        }
        for (j, task) in in_flight {
            slots[j] = Some(task.await);
        }
        // Every slot is filled above: either passed through or awaited.
        slots
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    Err(ApiError::new(
                        crate::api::error::ErrorKind::Internal,
                        "batch item lost",
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_keeps_utf8_headers_case_insensitively() {
        let hs: Vec<(&str, &[u8])> = vec![
            ("Authorization", b"Bearer x"),
            ("X-App-ID", b"7"),
            ("X-Bin", &[0xff, 0xfe]),
        ];
        let m = BatchMeta::new(IpAddr::from([127, 0, 0, 1]), hs.into_iter());
        assert_eq!(m.header("authorization"), Some("Bearer x"));
        assert_eq!(m.header("x-app-id"), Some("7"));
        assert_eq!(m.header("x-bin"), None);
        assert_eq!(m.header("missing"), None);
    }
}
