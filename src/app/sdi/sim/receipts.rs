//! The receipt rules: what SdI answers for a file, and when.
//!
//! A file is read once, when it arrives (and again when the simulator restarts),
//! into a [`Verdict`]. The receipts are then a pure function of the verdict, the
//! time the file was received, the receipt delay and the current time, so nothing
//! about them needs to be stored.

use std::time::Duration;

use jiff::Timestamp;
use quick_xml::XmlVersion;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use crate::app::sdi::{Receipt, ReceiptKind};

/// The `CodiceDestinatario` that means "no SdI channel": the invoice goes by PEC
/// if there is a `PECDestinatario`, else to the recipient's reserved area (MC).
const NO_CHANNEL: &str = "0000000";
/// The detail of the public body's NE in the simulator: always an acceptance.
const NE_ACCEPTED: &str = "EC01 accepted";
const MC_DETAIL: &str = "CodiceDestinatario is 0000000 and there is no PECDestinatario: \
                         the invoice is available to the recipient in its reserved area";

/// What SdI decides about a file, from its content alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// SdI cannot process the file: NS, with why.
    Rejected { reason: String },
    /// An invoice between private parties (FPR12) that SdI cannot deliver: MC.
    Undeliverable,
    /// An invoice between private parties (FPR12): RC.
    Delivered,
    /// An invoice to a public body (FPA12): RC, then the body's NE.
    PublicBody,
}

/// Reads a file as SdI would, as far as the simulator models it.
pub fn classify(xml: &[u8]) -> Verdict {
    match read(xml) {
        Ok(facts) => decide(&facts),
        Err(reason) => Verdict::Rejected { reason },
    }
}

/// The receipts issued for a file with `verdict`, received at `received_at`,
/// that `now` has reached: each one `delay` after the one before.
pub fn receipts(verdict: &Verdict, received_at: Timestamp, delay: Duration, now: Timestamp) -> Vec<Receipt> {
    schedule(verdict)
        .into_iter()
        .map_while(|(delays, kind, detail)| {
            let issued_at = received_at.checked_add(delay.checked_mul(delays)?).ok()?;
            (issued_at <= now).then(|| Receipt { kind, issued_at: issued_at.to_string(), detail })
        })
        .collect()
}

/// Every receipt a verdict leads to, each with how many delays after the
/// reception it is issued.
fn schedule(verdict: &Verdict) -> Vec<(u32, ReceiptKind, String)> {
    match verdict {
        Verdict::Rejected { reason } => vec![(1, ReceiptKind::NS, reason.clone())],
        Verdict::Undeliverable => vec![(1, ReceiptKind::MC, MC_DETAIL.to_string())],
        Verdict::Delivered => vec![(1, ReceiptKind::RC, String::new())],
        Verdict::PublicBody => {
            vec![(1, ReceiptKind::RC, String::new()), (2, ReceiptKind::NE, NE_ACCEPTED.to_string())]
        }
    }
}

/// What the rules look at in a well-formed file.
#[derive(Debug, Default)]
struct Facts {
    /// The local name of the root element (any namespace prefix dropped).
    root: String,
    /// The root's `versione` attribute.
    versione: Option<String>,
    /// The text of the first `CodiceDestinatario`.
    codice_destinatario: Option<String>,
    /// The text of the first `PECDestinatario`.
    pec_destinatario: Option<String>,
}

fn decide(facts: &Facts) -> Verdict {
    let rejected = |reason: String| Verdict::Rejected { reason };
    if facts.root != "FatturaElettronica" {
        return rejected(format!("the root element is <{}>, not <FatturaElettronica>", facts.root));
    }
    match facts.versione.as_deref() {
        Some("FPA12") => Verdict::PublicBody,
        Some("FPR12") => {
            let codice = facts.codice_destinatario.as_deref().map(str::trim);
            let pec = facts.pec_destinatario.as_deref().map_or("", str::trim);
            if codice == Some(NO_CHANNEL) && pec.is_empty() { Verdict::Undeliverable } else { Verdict::Delivered }
        }
        Some(other) => rejected(format!("versione {other:?} of <FatturaElettronica> is not FPR12 or FPA12")),
        None => rejected("<FatturaElettronica> has no versione attribute (FPR12 or FPA12)".to_string()),
    }
}

/// Which element's text is being collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    CodiceDestinatario,
    PecDestinatario,
}

/// Checks that `xml` is well-formed and picks out the [`Facts`]; the error says
/// why it is not well-formed.
///
/// NB: quick-xml checks the syntax of each event and that end tags match, but
/// not the document as a whole: one root, no text outside it, nothing left
/// open at the end, only predefined entities. Those checks are here.
fn read(xml: &[u8]) -> Result<Facts, String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_comments = true;
    let mut facts = Facts::default();
    let mut seen_root = false;
    let mut open: Vec<String> = Vec::new();
    let mut collecting: Option<Field> = None;
    loop {
        let event =
            reader.read_event().map_err(|e| format!("not well-formed XML at byte {}: {e}", reader.error_position()))?;
        let at = reader.buffer_position();
        let outside_root = open.is_empty();
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                let name = element_name(start, at)?;
                check_attributes(start, &name, at)?;
                if outside_root {
                    if seen_root {
                        return Err(format!("not well-formed XML at byte {at}: a second root element <{name}>"));
                    }
                    seen_root = true;
                    facts.versione = attribute(start, "versione")?;
                    facts.root.clone_from(&name);
                }
                let field = match name.as_str() {
                    "CodiceDestinatario" if facts.codice_destinatario.is_none() => {
                        facts.codice_destinatario = Some(String::new());
                        Some(Field::CodiceDestinatario)
                    }
                    "PECDestinatario" if facts.pec_destinatario.is_none() => {
                        facts.pec_destinatario = Some(String::new());
                        Some(Field::PecDestinatario)
                    }
                    _ => None,
                };
                if matches!(event, Event::Start(_)) {
                    open.push(name);
                    collecting = field;
                }
            }
            Event::End(_) => {
                open.pop();
                collecting = None;
            }
            Event::Text(text) => {
                let text = text.decode().map_err(|e| format!("text at byte {at} is not UTF-8: {e}"))?;
                if outside_root && !text.trim().is_empty() {
                    return Err(format!("not well-formed XML at byte {at}: text outside the root element"));
                }
                collect(&mut facts, collecting, &text);
            }
            Event::CData(data) => {
                if outside_root {
                    return Err(format!("not well-formed XML at byte {at}: CDATA outside the root element"));
                }
                let text = data.decode().map_err(|e| format!("CDATA at byte {at} is not UTF-8: {e}"))?;
                collect(&mut facts, collecting, &text);
            }
            Event::GeneralRef(reference) => {
                let name = reference.decode().map_err(|e| format!("reference at byte {at} is not UTF-8: {e}"))?;
                if outside_root {
                    return Err(format!("not well-formed XML at byte {at}: &{name}; outside the root element"));
                }
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match resolve_predefined_entity(&name) {
                        Some(text) => text.to_string(),
                        None => return Err(format!("not well-formed XML at byte {at}: undefined entity &{name};")),
                    },
                    Err(e) => return Err(format!("not well-formed XML at byte {at}: &{name};: {e}")),
                };
                collect(&mut facts, collecting, &resolved);
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(name) = open.last() {
        return Err(format!("not well-formed XML: the file ends inside <{name}>"));
    }
    if !seen_root {
        return Err("not well-formed XML: no root element".to_string());
    }
    Ok(facts)
}

fn collect(facts: &mut Facts, field: Option<Field>, text: &str) {
    let target = match field {
        Some(Field::CodiceDestinatario) => &mut facts.codice_destinatario,
        Some(Field::PecDestinatario) => &mut facts.pec_destinatario,
        None => return,
    };
    if let Some(value) = target {
        value.push_str(text);
    }
}

/// The local name of an element (`p:FatturaElettronica` → `FatturaElettronica`).
fn element_name(start: &BytesStart<'_>, at: u64) -> Result<String, String> {
    String::from_utf8(start.local_name().as_ref().to_vec())
        .map_err(|_| format!("not well-formed XML at byte {at}: an element name is not UTF-8"))
}

/// Checks every attribute of an element: syntax, no duplicates, valid escapes.
fn check_attributes(start: &BytesStart<'_>, element: &str, at: u64) -> Result<(), String> {
    for attribute in start.attributes() {
        let attribute =
            attribute.map_err(|e| format!("not well-formed XML at byte {at}: an attribute of <{element}>: {e}"))?;
        attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| format!("not well-formed XML at byte {at}: an attribute of <{element}>: {e}"))?;
    }
    Ok(())
}

/// The value of the unprefixed attribute `name`, if there is one; attributes
/// were checked by [`check_attributes`] already.
fn attribute(start: &BytesStart<'_>, name: &str) -> Result<Option<String>, String> {
    for attribute in start.attributes().flatten() {
        if attribute.key.as_ref() == name.as_bytes() {
            let value = attribute.normalized_value(XmlVersion::Implicit1_0).map_err(|e| e.to_string())?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(versione: &str, codice: &str, pec: Option<&str>) -> String {
        let pec = pec.map(|p| format!("<PECDestinatario>{p}</PECDestinatario>")).unwrap_or_default();
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<p:FatturaElettronica versione="{versione}" xmlns:p="http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2">
  <FatturaElettronicaHeader>
    <DatiTrasmissione>
      <CodiceDestinatario>{codice}</CodiceDestinatario>{pec}
    </DatiTrasmissione>
  </FatturaElettronicaHeader>
  <FatturaElettronicaBody><!-- lines --></FatturaElettronicaBody>
</p:FatturaElettronica>
"#
        )
    }

    fn rejected(xml: &str) -> String {
        match classify(xml.as_bytes()) {
            Verdict::Rejected { reason } => reason,
            other => panic!("{xml:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn invoices_are_classified_by_version_and_recipient() {
        let cases = [
            (invoice("FPR12", "ABC1234", None), Verdict::Delivered),
            (invoice("FPR12", "0000000", Some("buyer@pec.example.it")), Verdict::Delivered),
            (invoice("FPR12", "0000000", None), Verdict::Undeliverable),
            (invoice("FPR12", " 0000000 ", Some("  ")), Verdict::Undeliverable),
            (invoice("FPA12", "UFXYZ1", None), Verdict::PublicBody),
            (invoice("FPA12", "0000000", None), Verdict::PublicBody),
        ];
        for (xml, expected) in cases {
            assert_eq!(classify(xml.as_bytes()), expected, "{xml}");
        }
    }

    #[test]
    fn an_unprefixed_root_and_escaped_text_are_read() {
        let xml = r#"<FatturaElettronica versione="FPR12"><CodiceDestinatario>&#48;000000</CodiceDestinatario></FatturaElettronica>"#;
        assert_eq!(classify(xml.as_bytes()), Verdict::Undeliverable);
        let xml = r#"<FatturaElettronica versione="FPR12"><CodiceDestinatario><![CDATA[0000000]]></CodiceDestinatario><PECDestinatario/></FatturaElettronica>"#;
        assert_eq!(classify(xml.as_bytes()), Verdict::Undeliverable);
    }

    #[test]
    fn files_that_are_not_invoices_are_rejected_with_the_reason() {
        let cases = [
            ("<FatturaElettronica versione=\"FPR12\">", "ends inside <FatturaElettronica>"),
            ("<a><b></a>", "not well-formed"),
            ("", "no root element"),
            ("just text", "text outside the root element"),
            ("<a/><b/>", "a second root element <b>"),
            ("<a x='1' x='2'/>", "an attribute of <a>"),
            ("<a>&nbsp;</a>", "undefined entity &nbsp;"),
            ("<a>fish & chips</a>", "not well-formed"),
            ("<a><!-- a -- b --></a>", "not well-formed"),
            ("<Fattura versione=\"FPR12\"/>", "the root element is <Fattura>"),
            ("<FatturaElettronica/>", "no versione attribute"),
            ("<FatturaElettronica versione=\"FPR13\"/>", "versione \"FPR13\""),
        ];
        for (xml, expected) in cases {
            let reason = rejected(xml);
            assert!(reason.contains(expected), "{xml:?}: {reason:?} does not say {expected:?}");
        }
    }

    #[test]
    fn receipts_appear_one_delay_after_another() {
        let received: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
        let delay = Duration::from_secs(5);
        let at = |secs: i64| received + jiff::SignedDuration::from_secs(secs);
        let kinds = |verdict: &Verdict, now| -> Vec<(ReceiptKind, String)> {
            receipts(verdict, received, delay, now).into_iter().map(|r| (r.kind, r.issued_at)).collect()
        };
        assert!(kinds(&Verdict::Delivered, at(4)).is_empty());
        assert_eq!(kinds(&Verdict::Delivered, at(5)), [(ReceiptKind::RC, "2026-03-02T10:00:05Z".to_string())]);
        assert_eq!(kinds(&Verdict::Undeliverable, at(60)), [(ReceiptKind::MC, "2026-03-02T10:00:05Z".to_string())]);
        assert_eq!(kinds(&Verdict::PublicBody, at(9)), [(ReceiptKind::RC, "2026-03-02T10:00:05Z".to_string())]);
        assert_eq!(
            kinds(&Verdict::PublicBody, at(10)),
            [
                (ReceiptKind::RC, "2026-03-02T10:00:05Z".to_string()),
                (ReceiptKind::NE, "2026-03-02T10:00:10Z".to_string())
            ]
        );
        let ns = receipts(&Verdict::Rejected { reason: "why".into() }, received, delay, at(5));
        assert_eq!((ns[0].kind, ns[0].detail.as_str()), (ReceiptKind::NS, "why"));
    }

    #[test]
    fn a_zero_delay_issues_every_receipt_at_once() {
        let received: Timestamp = "2026-03-02T10:00:00.123Z".parse().unwrap();
        let all = receipts(&Verdict::PublicBody, received, Duration::ZERO, received);
        let kinds: Vec<_> = all.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [ReceiptKind::RC, ReceiptKind::NE]);
        assert!(all.iter().all(|r| r.issued_at == "2026-03-02T10:00:00.123Z"));
    }
}
