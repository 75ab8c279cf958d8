//! 32-byte identifiers of blobs and objects, written as lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte identifier: a keyed BLAKE3 hash for blobs, a plain BLAKE3 hash of
/// the stored bytes for repository objects.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The plain BLAKE3 hash of `data`: the name of a stored object.
    pub fn of_content(data: &[u8]) -> Self {
        Id(*blake3::hash(data).as_bytes())
    }

    /// The first 8 hex digits, as tables show it.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes from hex; `None` if `text` is not even-length lowercase or uppercase hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    // NB: not `u8::from_str_radix`, which takes "+f" for 15.
    let digit = |b: &u8| char::from(*b).to_digit(16);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks_exact(2).map(|pair| Some((digit(&pair[0])? << 4 | digit(&pair[1])?) as u8)).collect()
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not an id: ids are 64 hex digits")]
pub struct InvalidId {
    pub text: String,
}

impl FromStr for Id {
    type Err = InvalidId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = unhex(text).filter(|b| b.len() == 32).ok_or_else(|| InvalidId { text: text.to_owned() })?;
        let mut id = [0; 32];
        id.copy_from_slice(&bytes);
        Ok(Id(id))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_json() {
        let id = Id::of_content(b"fattura");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<Id>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
        assert_eq!(id.short(), text[..8]);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for text in ["", "abc", &"g".repeat(64), &"a".repeat(62), &"+a".repeat(32)] {
            assert!(text.parse::<Id>().is_err(), "{text}");
        }
    }
}
