//! Content-defined chunking of a stream: FastCDC 2020 cuts, the same places
//! `fastcdc::v2020::StreamCDC` cuts, through one buffer kept for a whole backup.
//!
//! `StreamCDC` allocates a buffer of the largest chunk per stream and, after
//! every chunk, moves what is left of it to the front: on a backup of 1 GiB of
//! large files, page faults on fresh buffers and those moves were a fifth of
//! the backup's time.

use std::io::{ErrorKind, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

use super::repository::ChunkerParams;

pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    /// Twice the largest chunk, allocated on first use: bytes are moved to the
    /// front at most once each.
    buffer: Vec<u8>,
}

impl Chunker {
    pub fn new(params: ChunkerParams) -> Self {
        let avg = params.avg_size as usize;
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        Chunker {
            min: params.min_size as usize,
            avg,
            max: params.max_size as usize,
            mask_s,
            mask_l,
            buffer: Vec::new(),
        }
    }

    /// Calls `each` with every chunk of `reader`, in order; returns their total
    /// length. A chunk is cut where FastCDC finds a boundary in the next
    /// `max` bytes, so the buffer holds at least that much unless the stream ended.
    pub fn chunks(&mut self, reader: &mut dyn Read, mut each: impl FnMut(&[u8])) -> std::io::Result<u64> {
        let capacity = 2 * self.max;
        if self.buffer.len() < capacity {
            self.buffer = vec![0; capacity];
        }
        let (mut start, mut end, mut eof, mut total) = (0, 0, false, 0u64);
        loop {
            if !eof && end - start < self.max {
                self.buffer.copy_within(start..end, 0);
                (start, end) = (0, end - start);
                while end < capacity {
                    match reader.read(&mut self.buffer[end..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => end += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if start == end {
                return Ok(total);
            }
            let (mask_s, mask_l) = (self.mask_s, self.mask_l);
            let (_, length) =
                cut(&self.buffer[start..end], self.min, self.avg, self.max, mask_s, mask_l, mask_s << 1, mask_l << 1);
            each(&self.buffer[start..start + length]);
            start += length;
            total += length as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads at most `step` bytes per call, as pipes and sockets do.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    fn params() -> ChunkerParams {
        ChunkerParams { min_size: 64 * 1024, avg_size: 256 * 1024, max_size: 1024 * 1024 }
    }

    fn cuts(chunker: &mut Chunker, data: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let total = chunker.chunks(&mut Trickle { data, step }, |c| chunks.push(c.to_vec())).unwrap();
        assert_eq!(total, data.len() as u64);
        chunks
    }

    #[test]
    fn cuts_where_the_stream_chunker_cuts_whatever_the_reads() {
        // Runs of zeros force cuts at the largest size; random data cuts by content.
        let mut data = pseudo_random(5 * 1024 * 1024);
        data[1_000_000..3_500_000].fill(0);
        let p = params();
        let expected: Vec<Vec<u8>> =
            fastcdc::v2020::StreamCDC::new(&data[..], p.min_size as usize, p.avg_size as usize, p.max_size as usize)
                .map(|c| c.unwrap().data)
                .collect();
        assert!(expected.len() > 8, "the data must cut into many chunks");
        let mut chunker = Chunker::new(p);
        for step in [usize::MAX, 4096, 777_777] {
            assert_eq!(cuts(&mut chunker, &data, step), expected, "reads of {step} bytes");
        }
    }

    #[test]
    fn a_buffer_kept_from_a_longer_stream_leaks_nothing_into_the_next() {
        let mut chunker = Chunker::new(params());
        cuts(&mut chunker, &pseudo_random(3 * 1024 * 1024), usize::MAX);
        let short = b"one small invoice".to_vec();
        assert_eq!(cuts(&mut chunker, &short, usize::MAX), vec![short]);
        assert!(cuts(&mut chunker, b"", usize::MAX).is_empty());
    }

    #[test]
    fn a_read_error_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
        }
        let error = Chunker::new(params()).chunks(&mut Broken, |_| panic!("no chunk")).unwrap_err();
        assert_eq!(error.to_string(), "disk gone");
    }
}
