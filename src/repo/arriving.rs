//! A ranged read taken by the object's own offsets as its bytes arrive, so
//! that a read of a whole pack never has to be held whole.

use bytes::{Buf, Bytes};
use futures::StreamExt;

use crate::store::{self, Chunks};

/// The chunks of a read that starts at the object's offset `at`.
pub struct Arriving {
    /// NB: fused: the caller asks again after the end.
    chunks: futures::stream::Fuse<Chunks>,
    head: Bytes,
    at: u64,
}

impl Arriving {
    pub fn new(chunks: Chunks, at: u64) -> Self {
        Arriving { chunks: chunks.fuse(), head: Bytes::new(), at }
    }

    /// Appends the object's bytes `offset..offset + len` to `out`, passing
    /// over what comes before them. `false` when the object ends first (what
    /// arrived of them is appended all the same); an error when the read broke.
    pub async fn append(&mut self, offset: u64, len: usize, out: &mut Vec<u8>) -> store::Result<bool> {
        let end = offset + len as u64;
        while self.at < end {
            if self.head.is_empty() {
                match self.chunks.next().await {
                    Some(chunk) => self.head = chunk?,
                    None => return Ok(false),
                }
                continue;
            }
            let skip = offset.saturating_sub(self.at).min(self.head.len() as u64) as usize;
            let take = if skip > 0 { 0 } else { ((end - self.at) as usize).min(self.head.len()) };
            out.extend_from_slice(&self.head[..take]);
            self.head.advance(skip + take);
            self.at += (skip + take) as u64;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arriving(pieces: &[&[u8]], at: u64, then: Option<store::Error>) -> Arriving {
        let mut items: Vec<store::Result<Bytes>> = pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        items.extend(then.map(Err));
        // NB: unfold, as the stores' are: polled again after its end, it panics.
        let chunks = futures::stream::unfold(items.into_iter(), |mut items| async { items.next().map(|i| (i, items)) });
        Arriving::new(Box::pin(chunks), at)
    }

    #[tokio::test]
    async fn bytes_are_taken_by_offset_across_chunks_and_gaps() {
        // The object's bytes 10..22 arrive as "abc", "", "defghij", "kl".
        let mut read = arriving(&[b"abc", b"", b"defghij", b"kl"], 10, None);
        let mut out = Vec::new();
        assert!(read.append(11, 3, &mut out).await.unwrap());
        assert_eq!(out, b"bcd");
        assert!(read.append(17, 2, &mut out).await.unwrap(), "a gap is passed over");
        assert_eq!(out, b"bcdhi");
        assert!(!read.append(20, 5, &mut out).await.unwrap(), "the object ends first");
        assert_eq!(out, b"bcdhikl");
        assert!(!read.append(30, 1, &mut out).await.unwrap(), "and stays ended");
    }

    #[tokio::test]
    async fn a_broken_read_says_so_after_what_arrived() {
        let broke = store::Error::Io {
            store: "s".into(),
            operation: "read",
            key: "k".into(),
            source: std::io::Error::other("reset"),
        };
        let mut read = arriving(&[b"abcd"], 0, Some(broke));
        let mut out = Vec::new();
        assert!(read.append(0, 2, &mut out).await.unwrap());
        assert!(read.append(2, 4, &mut out).await.is_err());
        assert_eq!(out, b"abcd", "what arrived before the break is kept; the caller cuts it off");
    }
}
