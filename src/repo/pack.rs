//! Blobs and packs. A blob is one chunk of file data or one directory tree,
//! compressed and sealed with its id as associated data. A pack is many blobs
//! followed by a sealed header that lists them, so a pack alone says what it
//! holds (an index can always be rebuilt from the packs).
//!
//! Pack layout: `blob_1 || … || blob_n || sealed_header || header_length (u32 LE)`.

use std::cell::RefCell;

use super::crypto::{Keys, OVERHEAD, Unauthentic};
use super::id::Id;

/// Packs are closed once they reach this size.
pub const TARGET_PACK_SIZE: usize = 16 * 1024 * 1024;
/// Associated data of pack headers.
const HEADER_AAD: &[u8] = b"fenice.io pack header v1";
const HEADER_VERSION: u8 = 1;
/// type (1) + stored length (4) + raw length (4) + id (32).
const ENTRY_LEN: usize = 41;
/// zstd level for blobs. Level 1 against 3 on bench/repo.sh's 1 GiB tenant set
/// (2026-12-07): a cold backup's compression took a third less time and the
/// repository came out 0.6% smaller (557.6 against 560.7 MB).
const ZSTD_LEVEL: i32 = 1;
/// The largest raw length of a data blob: a chunk is at most FastCDC 2020's
/// largest maximum size, whatever the repository's chunker bounds.
pub const MAX_DATA_BLOB: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

impl BlobType {
    fn byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
}

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobEntry {
    pub id: Id,
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    pub offset: u32,
    /// Stored (sealed) length.
    pub length: u32,
    /// Length of the plaintext before compression.
    pub raw_length: u32,
}

/// A pack that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("pack is too short to hold a header")]
    TooShort,
    #[error("pack header does not authenticate: wrong key, or the pack was altered")]
    HeaderUnauthentic,
    #[error("pack header is malformed: {0}")]
    Malformed(&'static str),
    #[error("blob {id} does not authenticate: the pack was altered")]
    BlobUnauthentic { id: Id },
    #[error("blob {id} does not decompress: {reason}")]
    BlobCorrupt { id: Id, reason: String },
}

/// Compresses (when that helps) and seals a blob's plaintext. The first
/// plaintext byte says which: 0 stored as is, 1 zstd.
pub fn seal_blob(keys: &Keys, id: &Id, plaintext: &[u8]) -> Vec<u8> {
    let bound = zstd::zstd_safe::compress_bound(plaintext.len()).max(plaintext.len());
    keys.seal_with(1 + bound, &id.0, |out| {
        let start = out.len();
        out.push(1);
        let compressed = compress_into(plaintext, out).is_some_and(|n| n + 64 < plaintext.len());
        if !compressed {
            out.truncate(start);
            out.push(0);
            out.extend_from_slice(plaintext);
        }
    })
}

/// Opens a sealed blob and checks that its content has the id it claims.
pub fn open_blob(keys: &Keys, entry: &BlobEntry, sealed: &[u8]) -> Result<Vec<u8>, PackError> {
    let mut sealed = sealed.to_vec();
    let plaintext = match unseal(keys, entry, &mut sealed)? {
        Framed::Stored(raw) => raw.to_vec(),
        Framed::Compressed(compressed) => {
            let mut out = Vec::new();
            inflate(entry, compressed, &mut out)?;
            out
        }
    };
    check_content(keys, entry, &plaintext)?;
    Ok(plaintext)
}

/// As [`open_blob`], decrypting where the sealed blob lies; a compressed blob
/// decompresses into `scratch`, whose memory a caller opening many blobs keeps.
pub fn open_blob_in_place<'a>(
    keys: &Keys,
    entry: &BlobEntry,
    sealed: &'a mut [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], PackError> {
    let plaintext: &[u8] = match unseal(keys, entry, sealed)? {
        Framed::Stored(raw) => raw,
        Framed::Compressed(compressed) => {
            inflate(entry, compressed, scratch)?;
            scratch
        }
    };
    check_content(keys, entry, plaintext)?;
    Ok(plaintext)
}

/// A blob's plaintext as sealed: as is, or zstd.
enum Framed<'a> {
    Stored(&'a [u8]),
    Compressed(&'a [u8]),
}

/// Decrypts a sealed blob where it lies and reads its framing byte.
fn unseal<'a>(keys: &Keys, entry: &BlobEntry, sealed: &'a mut [u8]) -> Result<Framed<'a>, PackError> {
    let id = entry.id;
    let framed = keys.open_in_place(sealed, &id.0).map_err(|Unauthentic| PackError::BlobUnauthentic { id })?;
    if entry.blob_type == BlobType::Data && entry.raw_length > MAX_DATA_BLOB {
        let reason = format!("its raw length {} is more than any chunk ({MAX_DATA_BLOB} bytes)", entry.raw_length);
        return Err(PackError::BlobCorrupt { id, reason });
    }
    match framed.split_first() {
        Some((0, raw)) => Ok(Framed::Stored(raw)),
        Some((1, compressed)) => Ok(Framed::Compressed(compressed)),
        _ => Err(PackError::BlobCorrupt { id, reason: "unknown framing byte".into() }),
    }
}

/// Decompresses a blob's plaintext into `out`, never past its raw length.
fn inflate(entry: &BlobEntry, compressed: &[u8], out: &mut Vec<u8>) -> Result<(), PackError> {
    let id = entry.id;
    // NB: the raw length is what the header says, and a holder of the key
    // writes headers too: a tree's may claim 4 GiB. Reserve no more than a
    // chunk up front; beyond that, memory grows with the content.
    let capacity = entry.raw_length.min(MAX_DATA_BLOB) as usize;
    match decompress_into(compressed, u64::from(entry.raw_length), capacity, out) {
        Ok(true) => Ok(()),
        Ok(false) => {
            let reason = format!("it decompresses to more than its raw length {}", entry.raw_length);
            Err(PackError::BlobCorrupt { id, reason })
        }
        Err(e) => Err(PackError::BlobCorrupt { id, reason: e.to_string() }),
    }
}

/// Checks that a blob's plaintext has its length and id.
fn check_content(keys: &Keys, entry: &BlobEntry, plaintext: &[u8]) -> Result<(), PackError> {
    if plaintext.len() != entry.raw_length as usize || keys.blob_id(plaintext) != entry.id {
        return Err(PackError::BlobCorrupt { id: entry.id, reason: "content does not match its id".into() });
    }
    Ok(())
}

thread_local! {
    // NB: creating a zstd context per blob was 4% of a restore's time: each
    // thread keeps one of each.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Appends `plaintext` compressed to `out`, within its capacity; the
/// compressed length, or `None` when it does not fit or zstd fails.
fn compress_into(plaintext: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        if compressor.is_none() {
            *compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let mut tail = std::io::Cursor::new(out);
        tail.set_position(tail.get_ref().len() as u64);
        compressor.as_mut()?.compress_to_buffer(plaintext, &mut tail).ok()
    })
}

/// Decompresses zstd frames (one or more, concatenated); `None` when they hold
/// more than `limit` bytes. Memory grows with what the frames hold, from
/// `capacity`, never with what their headers claim: a few bytes of zstd can
/// claim, or hold, gigabytes.
pub fn decompress(compressed: &[u8], limit: u64, capacity: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    Ok(decompress_into(compressed, limit, capacity, &mut out)?.then_some(out))
}

/// As [`decompress`], into `out` (emptied first, its memory kept); `false`
/// when the frames hold more than `limit` bytes.
pub fn decompress_into(compressed: &[u8], limit: u64, capacity: usize, out: &mut Vec<u8>) -> std::io::Result<bool> {
    use std::io::Read;
    out.clear();
    if let Ok(limit) = usize::try_from(limit)
        && limit <= capacity
    {
        // What the caller reserves anyway holds the whole content: one call
        // decompresses into it, and keeps no window buffer (a streaming
        // context kept per thread held a chunk's window each).
        out.reserve(limit);
        let done = DECOMPRESSOR.with_borrow_mut(|decompressor| {
            if decompressor.is_none() {
                *decompressor = zstd::bulk::Decompressor::new().ok();
            }
            decompressor.as_mut().map(|d| d.decompress_to_buffer(compressed, out))
        });
        if let Some(Ok(_)) = done {
            // NB: memory kept from a longer blob may have held more than the limit.
            return Ok(out.len() <= limit);
        }
        // NB: too long or broken: the streaming decoder below tells which.
        out.clear();
    }
    out.reserve(capacity.min(usize::try_from(limit).unwrap_or(usize::MAX)));
    zstd::stream::read::Decoder::with_buffer(compressed)?.take(limit.saturating_add(1)).read_to_end(out)?;
    Ok(out.len() as u64 <= limit)
}

/// Builds one pack in memory.
#[derive(Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl PackBuilder {
    /// A pack built in `buffer`'s memory (its content is dropped).
    pub fn in_buffer(mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        PackBuilder { bytes: buffer, entries: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.bytes.len() >= TARGET_PACK_SIZE
    }

    /// Appends an already sealed blob.
    pub fn add(&mut self, id: Id, blob_type: BlobType, sealed: &[u8], raw_length: usize) {
        // NB: blobs are at most a chunk (8 MiB) or a tree, and packs close at 16 MiB,
        // so offsets and lengths fit in u32.
        let entry = BlobEntry {
            id,
            blob_type,
            offset: self.bytes.len() as u32,
            length: sealed.len() as u32,
            raw_length: raw_length as u32,
        };
        self.bytes.extend_from_slice(sealed);
        self.entries.push(entry);
    }

    /// The finished pack and what it holds.
    pub fn finish(mut self, keys: &Keys) -> (Vec<u8>, Vec<BlobEntry>) {
        let mut header = Vec::with_capacity(1 + self.entries.len() * ENTRY_LEN);
        header.push(HEADER_VERSION);
        for e in &self.entries {
            header.push(e.blob_type.byte());
            header.extend_from_slice(&e.length.to_le_bytes());
            header.extend_from_slice(&e.raw_length.to_le_bytes());
            header.extend_from_slice(&e.id.0);
        }
        let sealed = keys.seal(&header, HEADER_AAD);
        self.bytes.extend_from_slice(&sealed);
        self.bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        (self.bytes, self.entries)
    }
}

/// Length of the sealed header, from a pack's last 4 bytes.
pub fn header_length(tail: &[u8]) -> Result<usize, PackError> {
    let last: [u8; 4] =
        tail.get(tail.len().saturating_sub(4)..).and_then(|s| s.try_into().ok()).ok_or(PackError::TooShort)?;
    Ok(u32::from_le_bytes(last) as usize)
}

/// Reads the blob list from a pack's sealed header.
pub fn parse_header(keys: &Keys, sealed_header: &[u8]) -> Result<Vec<BlobEntry>, PackError> {
    if sealed_header.len() < OVERHEAD {
        return Err(PackError::TooShort);
    }
    let header = keys.open(sealed_header, HEADER_AAD).map_err(|Unauthentic| PackError::HeaderUnauthentic)?;
    let (&version, body) = header.split_first().ok_or(PackError::Malformed("empty header"))?;
    if version != HEADER_VERSION {
        return Err(PackError::Malformed("unknown header version"));
    }
    if !body.len().is_multiple_of(ENTRY_LEN) {
        return Err(PackError::Malformed("header length is not a whole number of entries"));
    }
    let mut offset = 0u32;
    body.chunks_exact(ENTRY_LEN)
        .map(|e| {
            let blob_type = BlobType::from_byte(e[0]).ok_or(PackError::Malformed("unknown blob type"))?;
            let length = u32::from_le_bytes([e[1], e[2], e[3], e[4]]);
            let raw_length = u32::from_le_bytes([e[5], e[6], e[7], e[8]]);
            let mut id = [0; 32];
            id.copy_from_slice(&e[9..41]);
            let entry = BlobEntry { id: Id(id), blob_type, offset, length, raw_length };
            offset = offset.checked_add(length).ok_or(PackError::Malformed("offsets overflow"))?;
            Ok(entry)
        })
        .collect()
}

/// Reads the header of a whole pack held in memory.
pub fn read_header(keys: &Keys, pack: &[u8]) -> Result<Vec<BlobEntry>, PackError> {
    let len = header_length(pack)?;
    let start = pack.len().checked_sub(4 + len).ok_or(PackError::TooShort)?;
    parse_header(keys, &pack[start..pack.len() - 4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::crypto::MasterKey;

    fn blob(keys: &Keys, builder: &mut PackBuilder, data: &[u8], t: BlobType) -> Id {
        let id = keys.blob_id(data);
        builder.add(id, t, &seal_blob(keys, &id, data), data.len());
        id
    }

    #[test]
    fn a_pack_lists_its_blobs_and_each_blob_opens() {
        let keys = MasterKey::generate().derive();
        let mut builder = PackBuilder::default();
        let text = b"INSERT INTO invoices VALUES (1);\n".repeat(1000);
        let random: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let a = blob(&keys, &mut builder, &text, BlobType::Data);
        let b = blob(&keys, &mut builder, &random, BlobType::Data);
        let c = blob(&keys, &mut builder, b"{\"nodes\":[]}", BlobType::Tree);
        let (pack, entries) = builder.finish(&keys);
        assert_eq!(read_header(&keys, &pack).unwrap(), entries);
        assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), [a, b, c]);
        assert!((entries[0].length as usize) < text.len() / 10, "SQL text compresses");
        for (entry, data) in entries.iter().zip([&text[..], &random[..], b"{\"nodes\":[]}"]) {
            let sealed = &pack[entry.offset as usize..(entry.offset + entry.length) as usize];
            assert_eq!(open_blob(&keys, entry, sealed).unwrap(), data);
        }
    }

    #[test]
    fn a_damaged_blob_or_header_is_named() {
        let keys = MasterKey::generate().derive();
        let mut builder = PackBuilder::default();
        let id = blob(&keys, &mut builder, b"fattura", BlobType::Data);
        let (mut pack, entries) = builder.finish(&keys);
        pack[3] ^= 0x40;
        let sealed = &pack[..entries[0].length as usize];
        assert_eq!(open_blob(&keys, &entries[0], sealed), Err(PackError::BlobUnauthentic { id }));
        let n = pack.len();
        pack[n - 10] ^= 1;
        assert_eq!(read_header(&keys, &pack), Err(PackError::HeaderUnauthentic));
        assert_eq!(read_header(&keys, &[1, 2]), Err(PackError::TooShort));
    }
}
