//! When an SdI channel's client certificate expires, read from the
//! certificate itself: a channel whose certificate has expired cannot
//! transmit after a failover, whatever the configuration says.
//!
//! Only the validity's end is needed, so this walks the DER structure to it
//! (RFC 5280: Certificate → tbsCertificate → validity → notAfter) rather than
//! bringing in a full X.509 library; nothing here verifies a signature.

use std::time::Duration;

use base64::Engine;
use jiff::Timestamp;

/// Certificates that expire within this are reported.
pub const WARN_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM block `BEGIN CERTIFICATE` found: put the PEM-encoded client certificate in the Secret")]
    NoPem,
    #[error("the PEM certificate is not valid base64")]
    Base64,
    #[error("not an X.509 certificate: {0}")]
    Malformed(&'static str),
}

/// How a certificate stands at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Valid for less than [`WARN_BEFORE`].
    Expiring,
    Expired,
}

/// The standing at `now` of a certificate valid until `not_after`.
pub fn standing(not_after: Timestamp, now: Timestamp) -> Standing {
    if not_after <= now {
        Standing::Expired
    } else if not_after.duration_since(now).unsigned_abs() < WARN_BEFORE {
        Standing::Expiring
    } else {
        Standing::Valid
    }
}

/// The end of validity of the first certificate in PEM `text`.
pub fn not_after(text: &str) -> Result<Timestamp, CertError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN).ok_or(CertError::NoPem)? + BEGIN.len();
    let len = text[start..].find(END).ok_or(CertError::NoPem)?;
    let body: String = text[start..start + len].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| CertError::Base64)?;
    not_after_der(&der)
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT`, the tbsCertificate's optional version.
const VERSION: u8 = 0xa0;

/// The end of validity of a DER-encoded certificate.
pub fn not_after_der(der: &[u8]) -> Result<Timestamp, CertError> {
    let (tag, certificate, _) = element(der)?;
    expect(tag, SEQUENCE, "the certificate is not a SEQUENCE")?;
    let (tag, mut tbs, _) = element(certificate)?;
    expect(tag, SEQUENCE, "tbsCertificate is not a SEQUENCE")?;
    let (tag, _, rest) = element(tbs)?;
    if tag == VERSION {
        tbs = rest;
    }
    // serialNumber, signature, issuer, then validity.
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    let (tag, validity, _) = element(tbs)?;
    expect(tag, SEQUENCE, "validity is not a SEQUENCE")?;
    let not_before_rest = element(validity)?.2;
    let (tag, time, _) = element(not_before_rest)?;
    let text = std::str::from_utf8(time).map_err(|_| CertError::Malformed("notAfter is not text"))?;
    match tag {
        UTC_TIME => parse_time(text, true),
        GENERALIZED_TIME => parse_time(text, false),
        _ => Err(CertError::Malformed("notAfter is neither UTCTime nor GeneralizedTime")),
    }
}

fn expect(tag: u8, wanted: u8, what: &'static str) -> Result<(), CertError> {
    if tag == wanted { Ok(()) } else { Err(CertError::Malformed(what)) }
}

/// One DER element of `input`: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let truncated = CertError::Malformed("truncated");
    let (&tag, rest) = input.split_first().ok_or(truncated.clone())?;
    let (&first, mut rest) = rest.split_first().ok_or(truncated.clone())?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(CertError::Malformed("a length is not definite DER"));
        }
        let len = rest[..count].iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        rest = &rest[count..];
        len
    };
    if rest.len() < len {
        return Err(truncated);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `YYMMDDHHMMSSZ` (UTCTime: years 50–99 are 19xx) or `YYYYMMDDHHMMSSZ`.
fn parse_time(text: &str, two_digit_year: bool) -> Result<Timestamp, CertError> {
    let bad = CertError::Malformed("notAfter is not a UTC time in seconds");
    let digits = text.strip_suffix('Z').ok_or(bad.clone())?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() != if two_digit_year { 12 } else { 14 } {
        return Err(bad);
    }
    let num = |range: std::ops::Range<usize>| digits[range].parse::<i16>().map_err(|_| bad.clone());
    let (year, rest) = if two_digit_year {
        let yy = num(0..2)?;
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    } else {
        (num(0..4)?, 4)
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2).and_then(|n| i8::try_from(n).map_err(|_| bad.clone()));
    let civil = jiff::civil::DateTime::new(year, field(0)?, field(1)?, field(2)?, field(3)?, field(4)?, 0)
        .map_err(|_| bad.clone())?;
    civil.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|_| bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> String {
        let path = format!("{}/tests/vectors/sdi/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_end_of_validity_is_read_from_utc_and_generalized_times() {
        // Made with `openssl req -x509` and `openssl ca -enddate` (tests/vectors/README.md).
        assert_eq!(not_after(&vector("expired-2025-03-01.pem")), Ok(at("2025-03-01T12:00:00Z")));
        assert_eq!(not_after(&vector("until-2036-11-20.pem")), Ok(at("2036-11-20T20:19:50Z")));
        assert_eq!(not_after(&vector("until-2051-06-15.pem")), Ok(at("2051-06-15T08:00:00Z")));
    }

    #[test]
    fn a_certificate_is_valid_expiring_within_30_days_or_expired() {
        let end = at("2026-12-01T00:00:00Z");
        assert_eq!(standing(end, at("2026-10-01T00:00:00Z")), Standing::Valid);
        assert_eq!(standing(end, at("2026-11-02T00:00:00Z")), Standing::Expiring);
        assert_eq!(standing(end, end), Standing::Expired);
    }

    #[test]
    fn what_is_not_a_certificate_is_refused_without_panicking() {
        assert_eq!(not_after("a private key, not a certificate"), Err(CertError::NoPem));
        let pem = vector("until-2036-11-20.pem");
        assert_eq!(not_after(&pem.replace("MII", "M!I")), Err(CertError::Base64));
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        // Every truncation and every single flipped byte: an error or a date, never a panic.
        for len in 0..der.len() {
            let _ = not_after_der(&der[..len]);
        }
        for i in 0..der.len() {
            let mut flipped = der.clone();
            flipped[i] ^= 0xff;
            let _ = not_after_der(&flipped);
        }
        assert!(not_after_der(&der[..40]).is_err());
    }
}
