//! Keys and sealing. One random master key per repository; from it, by BLAKE3
//! key derivation, the key of the blob-id hash and the encryption key. Every
//! sealed value is `nonce (24) || ciphertext || tag (16)`, XChaCha20-Poly1305.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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
///
/// Built as XChaCha20 is defined (draft-irtf-cfrg-xchacha): HChaCha20 of the key
/// and the nonce's first 16 bytes is the message's key for the IETF
/// ChaCha20-Poly1305, whose nonce is 4 zero bytes and the nonce's last 8.
// NB: that AEAD from aws-lc, which the TLS stack links anyway: its assembly seals
// and opens 1 MiB messages at 1.9 GB/s on one core here against 1.0 GB/s for
// the portable `chacha20poly1305` crate, the bytes the same (2026-12-07), and
// a restore from the S3 server was bound by the CPU.
#[derive(Clone)]
pub struct Sealer(Zeroizing<[u8; KEY_LEN]>);

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Sealer(Zeroizing::new(*key))
    }

    /// The message key and IETF nonce for the extended nonce `nonce`.
    fn message_key(&self, nonce: &[u8]) -> (LessSafeKey, Nonce) {
        let (head, tail) = nonce.split_at(16);
        let head: &[u8; 16] = head.try_into().expect("a 24-byte nonce");
        let mut subkey: Zeroizing<[u8; KEY_LEN]> =
            Zeroizing::new(chacha20::hchacha::<chacha20::R20>(&(*self.0).into(), &(*head).into()).into());
        let mut ietf = [0; 12];
        ietf[4..].copy_from_slice(tail);
        let key = UnboundKey::new(&CHACHA20_POLY1305, subkey.as_slice()).expect("a 32-byte key");
        subkey.zeroize();
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(ietf))
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
        let (key, ietf) = self.message_key(&nonce);
        let tag = key
            .seal_in_place_separate_tag(ietf, Aad::from(aad), &mut out[NONCE_LEN..])
            // NB: fails only for messages over 256 GiB, which nothing here makes.
            .expect("message too long for XChaCha20-Poly1305");
        out.extend_from_slice(tag.as_ref());
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
        let (key, ietf) = self.message_key(nonce);
        let plaintext = key.open_in_place(ietf, Aad::from(aad), rest).map_err(|_| Unauthentic)?;
        Ok(plaintext)
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

    /// The test vector of draft-irtf-cfrg-xchacha-03, A.3.1: the format is
    /// XChaCha20-Poly1305 as specified there, whichever library computes it.
    #[test]
    fn sealing_is_the_specified_xchacha20_poly1305() {
        let hex = |s: &str| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        let key: Vec<u8> = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let nonce: Vec<u8> = hex("404142434445464748494a4b4c4d4e4f5051525354555657");
        let aad: Vec<u8> = hex("50515253c0c1c2c3c4c5c6c7");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, \
                          sunscreen would be it.";
        let expected: Vec<u8> = hex(concat!(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6",
            "708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c9763",
            "7da9768812f615c68b13b52e",
            "c0875924c1c7987947deafd8780acf49",
        ));
        let sealer = Sealer::new(&key.try_into().unwrap());
        let mut sealed = nonce.clone();
        sealed.extend_from_slice(&expected);
        assert_eq!(sealer.open(&sealed, &aad).unwrap(), plaintext);
        // Sealing takes a random nonce: what it makes opens, and so does the vector.
        let own = sealer.seal(plaintext, &aad);
        assert_eq!(sealer.open(&own, &aad).unwrap(), plaintext);
    }

    #[test]
    fn nonces_differ_between_seals() {
        let keys = MasterKey::generate().derive();
        assert_ne!(keys.seal(b"same", b"")[..NONCE_LEN], keys.seal(b"same", b"")[..NONCE_LEN]);
    }
}
