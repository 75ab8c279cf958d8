//! Key files: the master key wrapped for one holder each. A passphrase holder
//! wraps it with an Argon2id-derived key; a recipient holder (an offline
//! recovery key) with an X25519 key agreement. Adding or removing a holder
//! writes or deletes one key file and never touches data.

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::crypto::{KEY_LEN, MasterKey, Sealer, Unauthentic, random};
use super::id::{hex, unhex};

/// Associated data of every wrapped master key.
const WRAP_AAD: &[u8] = b"fenice.io master key v1";
const CONTEXT_X25519_WRAP: &str = "fenice.io 2026-11 x25519 key wrap v1";
const RECOVERY_PREFIX: &str = "fenice-recovery-1:";
const RECIPIENT_PREFIX: &str = "fenice-recipient-1:";

/// Argon2id cost parameters, stored in each passphrase key file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl KdfParams {
    /// The most a key file may ask for: 1 GiB of memory, 16 passes, 16 lanes.
    /// Key files are not sealed, so anyone who can write to the store can write
    /// one; without bounds, one asking for 4 TiB or 4 billion passes would stop
    /// every unlock, the break-glass restore's included.
    pub const MAX: KdfParams = KdfParams { memory_kib: 1024 * 1024, iterations: 16, parallelism: 16 };

    /// `Ok` if the parameters are within [`MAX`](Self::MAX) (and not zero).
    pub fn check(&self) -> Result<(), KeyError> {
        let max = Self::MAX;
        let within = |value: u32, max: u32| (1..=max).contains(&value);
        if within(self.memory_kib, max.memory_kib)
            && within(self.iterations, max.iterations)
            && within(self.parallelism, max.parallelism)
        {
            return Ok(());
        }
        Err(KeyError::Kdf {
            what: format!(
                "Argon2id with {} KiB, {} passes, {} lanes is beyond what this version runs ({} KiB, {} passes, {} \
                 lanes)",
                self.memory_kib, self.iterations, self.parallelism, max.memory_kib, max.iterations, max.parallelism
            ),
        })
    }
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: about a second on one core of a small machine, which
    /// is nothing for an SRE opening a repository and a lot for a guesser.
    fn default() -> Self {
        Self { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 }
    }
}

/// How a key file's master key is wrapped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Holder {
    #[serde(rename_all = "camelCase")]
    Passphrase {
        kdf: KdfParams,
        /// 16 random bytes, hex.
        salt: String,
    },
    #[serde(rename_all = "camelCase")]
    Recipient {
        /// The recipient's X25519 public key, hex.
        recipient: String,
        /// The ephemeral X25519 public key of this wrapping, hex.
        ephemeral: String,
    },
}

/// One key file, stored as JSON under `keys/<id>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyFile {
    pub version: u32,
    /// RFC 3339.
    pub created: String,
    pub host: String,
    /// Who or what holds it, e.g. `operator` or `offline recovery 2026`.
    pub label: String,
    #[serde(flatten)]
    pub holder: Holder,
    /// The sealed master key, hex: `nonce || ciphertext || tag`.
    pub wrapped_key: String,
}

/// Why a key file could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the passphrase or key does not open this key file")]
    Wrong(#[from] Unauthentic),
    #[error("key file is malformed: {what}")]
    Malformed { what: String },
    #[error("key derivation parameters are not usable: {what}")]
    Kdf { what: String },
    #[error(
        "this is not a recovery key: it should read fenice-recovery-1: followed by 72 hex digits in groups ({what})"
    )]
    BadRecoveryText { what: &'static str },
    #[error("this is not a recipient: it should read fenice-recipient-1: followed by 64 hex digits")]
    BadRecipientText,
}

/// A secret passphrase. Its Debug never shows it.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(text: String) -> Self {
        Passphrase(Zeroizing::new(text))
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

/// An offline recovery key: an X25519 secret, printed as text to be locked away.
pub struct RecoveryKey(StaticSecret);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey([redacted])")
    }
}

impl RecoveryKey {
    pub fn generate() -> Self {
        RecoveryKey(StaticSecret::from(random::<KEY_LEN>()))
    }

    /// The public half, which `fenice repo key add --recipient` takes.
    pub fn recipient(&self) -> Recipient {
        Recipient(PublicKey::from(&self.0))
    }

    /// `fenice-recovery-1:` and 64 hex digits plus an 8-digit checksum, in
    /// groups of 8, so a transcription error is caught before it is used.
    pub fn to_text(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(self.0.to_bytes());
        let mut digits = Zeroizing::new(hex(&secret[..]));
        digits.push_str(&hex(&checksum(&secret[..])));
        let groups: Vec<&str> = (0..digits.len()).step_by(8).map(|i| &digits[i..i + 8]).collect();
        Zeroizing::new(format!("{RECOVERY_PREFIX}{}", groups.join("-")))
    }

    /// Parses the text form; spaces, dashes, line breaks and case do not matter.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        // Retyped from paper: line breaks and spaces may fall anywhere, even in the prefix.
        let text: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase());
        let rest = text
            .strip_prefix(RECOVERY_PREFIX)
            .ok_or(KeyError::BadRecoveryText { what: "the fenice-recovery-1: prefix is missing" })?;
        let digits: Zeroizing<String> =
            Zeroizing::new(rest.chars().filter(|c| !c.is_whitespace() && *c != '-').collect::<String>());
        let bytes = Zeroizing::new(unhex(&digits).ok_or(KeyError::BadRecoveryText { what: "not hex" })?);
        if bytes.len() != KEY_LEN + 4 {
            return Err(KeyError::BadRecoveryText { what: "wrong length" });
        }
        let (secret, sum) = bytes.split_at(KEY_LEN);
        if checksum(secret) != sum {
            return Err(KeyError::BadRecoveryText { what: "checksum does not match: a digit is mistyped" });
        }
        let mut array = [0; KEY_LEN];
        array.copy_from_slice(secret);
        Ok(RecoveryKey(StaticSecret::from(array)))
    }
}

fn checksum(bytes: &[u8]) -> [u8; 4] {
    let hash = blake3::hash(bytes);
    let mut out = [0; 4];
    out.copy_from_slice(&hash.as_bytes()[..4]);
    out
}

/// The public half of a recovery key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Recipient(PublicKey);

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{RECIPIENT_PREFIX}{}", hex(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Recipient {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text
            .trim()
            .strip_prefix(RECIPIENT_PREFIX)
            .and_then(unhex)
            .filter(|b| b.len() == KEY_LEN)
            .ok_or(KeyError::BadRecipientText)?;
        let mut array = [0; KEY_LEN];
        array.copy_from_slice(&bytes);
        Ok(Recipient(PublicKey::from(array)))
    }
}

fn argon2id(passphrase: &Passphrase, salt: &[u8], kdf: KdfParams) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    kdf.check()?;
    let params = argon2::Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(KEY_LEN))
        .map_err(|e| KeyError::Kdf { what: e.to_string() })?;
    let mut out = Zeroizing::new([0; KEY_LEN]);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(passphrase.0.as_bytes(), salt, &mut out[..])
        .map_err(|e| KeyError::Kdf { what: e.to_string() })?;
    Ok(out)
}

fn x25519_kek(shared: &[u8; 32], ephemeral: &PublicKey, recipient: &PublicKey) -> Zeroizing<[u8; KEY_LEN]> {
    let mut material = Zeroizing::new(Vec::with_capacity(96));
    material.extend_from_slice(shared);
    material.extend_from_slice(ephemeral.as_bytes());
    material.extend_from_slice(recipient.as_bytes());
    Zeroizing::new(blake3::derive_key(CONTEXT_X25519_WRAP, &material))
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

impl KeyFile {
    /// Wraps `master` for a passphrase.
    pub fn for_passphrase(
        master: &MasterKey,
        passphrase: &Passphrase,
        kdf: KdfParams,
        label: &str,
    ) -> Result<Self, KeyError> {
        let salt: [u8; 16] = random();
        let kek = argon2id(passphrase, &salt, kdf)?;
        Ok(Self::new(master, &kek, label, Holder::Passphrase { kdf, salt: hex(&salt) }))
    }

    /// Wraps `master` for a recovery key's public half.
    pub fn for_recipient(master: &MasterKey, recipient: &Recipient, label: &str) -> Self {
        let ephemeral = StaticSecret::from(random::<KEY_LEN>());
        let ephemeral_public = PublicKey::from(&ephemeral);
        let shared = ephemeral.diffie_hellman(&recipient.0);
        let kek = x25519_kek(shared.as_bytes(), &ephemeral_public, &recipient.0);
        let holder =
            Holder::Recipient { recipient: hex(recipient.0.as_bytes()), ephemeral: hex(ephemeral_public.as_bytes()) };
        Self::new(master, &kek, label, holder)
    }

    fn new(master: &MasterKey, kek: &[u8; KEY_LEN], label: &str, holder: Holder) -> Self {
        let wrapped = Sealer::new(kek).seal(master.as_bytes(), WRAP_AAD);
        KeyFile {
            version: 1,
            created: now_rfc3339(),
            host: super::host_name(),
            label: label.to_owned(),
            holder,
            wrapped_key: hex(&wrapped),
        }
    }

    /// Whether this file is wrapped for `recipient`.
    pub fn is_for(&self, recipient: &Recipient) -> bool {
        matches!(&self.holder, Holder::Recipient { recipient: r, .. } if *r == hex(recipient.0.as_bytes()))
    }

    pub fn open_with_passphrase(&self, passphrase: &Passphrase) -> Result<MasterKey, KeyError> {
        let Holder::Passphrase { kdf, salt } = &self.holder else {
            return Err(KeyError::Wrong(Unauthentic));
        };
        let salt = unhex(salt).ok_or_else(|| KeyError::Malformed { what: "salt is not hex".into() })?;
        let kek = argon2id(passphrase, &salt, *kdf)?;
        self.unwrap_with(&kek)
    }

    pub fn open_with_recovery(&self, key: &RecoveryKey) -> Result<MasterKey, KeyError> {
        let Holder::Recipient { ephemeral, .. } = &self.holder else {
            return Err(KeyError::Wrong(Unauthentic));
        };
        let ephemeral = unhex(ephemeral)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(PublicKey::from)
            .ok_or_else(|| KeyError::Malformed { what: "ephemeral key is not 32 bytes of hex".into() })?;
        let shared = key.0.diffie_hellman(&ephemeral);
        // NB: with a low-order ephemeral key the shared secret is zero whatever
        // the recovery secret: whoever wrote the file (anyone who can write to
        // the store) knows the key that wraps it, and the master key inside.
        if !shared.was_contributory() {
            return Err(KeyError::Malformed {
                what: "ephemeral key is a low-order point, which any key agrees with".into(),
            });
        }
        let kek = x25519_kek(shared.as_bytes(), &ephemeral, &PublicKey::from(&key.0));
        self.unwrap_with(&kek)
    }

    fn unwrap_with(&self, kek: &[u8; KEY_LEN]) -> Result<MasterKey, KeyError> {
        let sealed =
            unhex(&self.wrapped_key).ok_or_else(|| KeyError::Malformed { what: "wrappedKey is not hex".into() })?;
        let plain = Zeroizing::new(Sealer::new(kek).open(&sealed, WRAP_AAD)?);
        let bytes: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Malformed { what: "wrapped key is not 32 bytes".into() })?;
        Ok(MasterKey::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check the wrapping, not Argon2's cost.
    const FAST: KdfParams = KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    #[test]
    fn a_passphrase_key_file_opens_with_that_passphrase_only() {
        let master = MasterKey::generate();
        let file = KeyFile::for_passphrase(&master, &Passphrase::new("correct horse".into()), FAST, "ops").unwrap();
        let json = serde_json::to_string(&file).unwrap();
        assert!(json.contains("\"kind\":\"passphrase\""), "{json}");
        assert!(json.contains("\"memoryKib\":64"), "{json}");
        let file: KeyFile = serde_json::from_str(&json).unwrap();
        assert_eq!(file.open_with_passphrase(&Passphrase::new("correct horse".into())).unwrap(), master);
        let wrong = file.open_with_passphrase(&Passphrase::new("battery staple".into())).unwrap_err();
        assert!(matches!(wrong, KeyError::Wrong(_)), "{wrong}");
    }

    #[test]
    fn a_recovery_key_opens_its_key_file_from_its_printed_text() {
        let master = MasterKey::generate();
        let recovery = RecoveryKey::generate();
        let recipient: Recipient = recovery.recipient().to_string().parse().unwrap();
        let file = KeyFile::for_recipient(&master, &recipient, "offline recovery");
        assert!(file.is_for(&recipient));
        let text = recovery.to_text();
        assert!(text.starts_with("fenice-recovery-1:"));
        // An SRE retyping it from paper, in capitals and on two lines.
        let (prefix, groups) = text.split_at("fenice-recovery-1:".len());
        let retyped = format!("{}{}", prefix.to_uppercase(), groups.to_uppercase().replace('-', "\n "));
        let parsed = RecoveryKey::from_text(&retyped).unwrap();
        assert_eq!(file.open_with_recovery(&parsed).unwrap(), master);
        let other = RecoveryKey::generate();
        assert!(file.open_with_recovery(&other).is_err());
    }

    #[test]
    fn a_mistyped_recovery_key_is_caught_by_its_checksum() {
        let text = RecoveryKey::generate().to_text();
        let mut chars: Vec<char> = text.chars().collect();
        let i = "fenice-recovery-1:".len() + 3;
        chars[i] = if chars[i] == '0' { '1' } else { '0' };
        let err = RecoveryKey::from_text(&chars.into_iter().collect::<String>()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        let err = RecoveryKey::from_text("hello").unwrap_err();
        assert!(err.to_string().contains("fenice-recovery-1:"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let recovery = RecoveryKey::generate();
        let text = recovery.to_text();
        let digits = &text["fenice-recovery-1:".len().."fenice-recovery-1:".len() + 8];
        let printed = format!("{recovery:?} {:?}", Passphrase::new("hunter2".into()));
        assert!(!printed.contains(digits) && !printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn wrapping_never_exposes_the_master_key() {
        let master = MasterKey::from_bytes([0x5a; 32]);
        let file = KeyFile::for_passphrase(&master, &Passphrase::new("pw".into()), FAST, "x").unwrap();
        let json = serde_json::to_string(&file).unwrap();
        assert!(!json.contains(&hex(&[0x5a; 8])), "{json}");
    }
}
