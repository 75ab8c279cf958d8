//! Keys and sealing. One random master key per repository; from it, by BLAKE3
//! key derivation, the key of the blob-id hash and the encryption key. Every
//! sealed value is `nonce (24) || ciphertext || tag (16)`, XChaCha20-Poly1305.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::id::Id;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes that sealing adds to a plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// BLAKE3 `derive_key` contexts. Changing one makes every repository unreadable.
const CONTEXT_BLOB_ID: &str = "fenice.io 2026-11 repository blob id v1";
const CONTEXT_ENCRYPTION: &str = "fenice.io 2026-11 repository encryption v1";

/// Sealed data that does not open: a wrong key, or bytes changed since sealing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("authentication failed: wrong key, or the data was altered")]
pub struct Unauthentic;

/// Fills an array with bytes from the operating system's generator.
pub fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    // NB: without randomness there is no safe key or nonce: better to stop.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// A repository's master key. Never stored in the clear: key files hold it
/// wrapped for each holder.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MasterKey([u8; KEY_LEN]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey(random())
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The working keys of the repository.
    pub fn derive(&self) -> Keys {
        let id_key = blake3::derive_key(CONTEXT_BLOB_ID, &self.0);
        let mut enc = blake3::derive_key(CONTEXT_ENCRYPTION, &self.0);
        let keys = Keys { id_key, sealer: Sealer::new(&enc) };
        enc.zeroize();
        keys
    }
}

/// The keys a repository works with, derived from its master key.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; KEY_LEN],
    sealer: Sealer,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.id_key.zeroize();
    }
}

impl Keys {
    /// The id of a blob: BLAKE3 keyed with a key only holders of the master key
    /// have, so ids reveal nothing about content to the store.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        self.sealer.seal(plaintext, aad)
    }

    /// As [`seal`](Self::seal), for a plaintext that `fill` appends to the buffer
    /// (of room for `capacity` plaintext bytes) the sealed value is built in.
    pub fn seal_with(&self, capacity: usize, aad: &[u8], fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        self.sealer.seal_with(capacity, aad, fill)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        self.sealer.open(sealed, aad)
    }

    /// As [`open`](Self::open), decrypting where the sealed value lies; the
    /// plaintext is the returned part of it.
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8], aad: &[u8]) -> Result<&'a [u8], Unauthentic> {
        self.sealer.open_in_place(sealed, aad)
    }
}

/// XChaCha20-Poly1305 with a random 24-byte nonce per message: random nonces of
/// that size never collide in practice, however many blobs a repository holds.
#[derive(Clone)]
pub struct Sealer(XChaCha20Poly1305);

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Sealer(XChaCha20Poly1305::new(key.into()))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        self.seal_with(plaintext.len(), aad, |out| out.extend_from_slice(plaintext))
    }

    // NB: a blob's plaintext is compressed straight into the buffer it is then
    // encrypted in: each copy more of a backup's data was a few percent of its time.
    pub fn seal_with(&self, capacity: usize, aad: &[u8], fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random();
        let mut out = Vec::with_capacity(capacity + OVERHEAD);
        out.extend_from_slice(&nonce);
        fill(&mut out);
        let tag = self
            .0
            .encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[NONCE_LEN..]).into())
            // NB: fails only for messages over 256 GiB, which nothing here makes.
            .expect("message too long for XChaCha20-Poly1305");
        out.extend_from_slice(&tag);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Unauthentic> {
        let mut plaintext = sealed.to_vec();
        let length = self.open_in_place(&mut plaintext, aad)?.len();
        plaintext.drain(..NONCE_LEN);
        plaintext.truncate(length);
        Ok(plaintext)
    }

    // NB: a restore decrypts each blob where its window of the pack lies: a
    // copy per blob was memory on top of the window, and time.
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8], aad: &[u8]) -> Result<&'a [u8], Unauthentic> {
        if sealed.len() < OVERHEAD {
            return Err(Unauthentic);
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(&*nonce).map_err(|_| Unauthentic)?;
        let tag = chacha20poly1305::Tag::try_from(&*tag).map_err(|_| Unauthentic)?;
        self.0.decrypt_inout_detached(&nonce, aad, (&mut *ciphertext).into(), &tag).map_err(|_| Unauthentic)?;
        Ok(ciphertext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_the_same_key_and_aad_only() {
        let keys = MasterKey::generate().derive();
        let sealed = keys.seal(b"IT01234567897_00001.xml", b"blob-id");
        assert_eq!(sealed.len(), 23 + OVERHEAD);
        assert_eq!(keys.open(&sealed, b"blob-id").unwrap(), b"IT01234567897_00001.xml");
        assert_eq!(keys.open(&sealed, b"other-id"), Err(Unauthentic));
        let stranger = MasterKey::generate().derive();
        assert_eq!(stranger.open(&sealed, b"blob-id"), Err(Unauthentic));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let keys = MasterKey::generate().derive();
        let sealed = keys.seal(&[7; 100], b"");
        for i in 0..sealed.len() {
            let mut broken = sealed.clone();
            broken[i] ^= 1;
            assert_eq!(keys.open(&broken, b""), Err(Unauthentic), "byte {i}");
        }
        assert_eq!(keys.open(&sealed[..10], b""), Err(Unauthentic));
    }

    #[test]
    fn blob_ids_depend_on_the_key() {
        let a = MasterKey::generate().derive();
        let b = MasterKey::generate().derive();
        assert_eq!(a.blob_id(b"x"), a.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_ne!(a.blob_id(b"x"), Id::of_content(b"x"));
    }

    #[test]
    fn key_material_never_prints() {
        let master = MasterKey::from_bytes([0xab; 32]);
        let printed = format!("{master:?} {:?}", master.derive());
        assert!(!printed.contains("ab"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn nonces_differ_between_seals() {
        let keys = MasterKey::generate().derive();
        assert_ne!(keys.seal(b"same", b"")[..NONCE_LEN], keys.seal(b"same", b"")[..NONCE_LEN]);
    }
}
