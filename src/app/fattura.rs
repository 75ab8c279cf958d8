//! FatturaPA 1.2.3 documents: writing the XML of one invoice, and reading one
//! back (the restore side rebuilds an invoice row from a file SdI holds).
//!
//! The app writes one document type (TD01, a plain invoice) with one line, in
//! EUR. `render` and `parse` are inverses for every [`Fattura`] that passes
//! [`Fattura::check`]; a test holds them to it.

use std::collections::HashMap;
use std::fmt::Write as _;

use jiff::civil::Date;
use quick_xml::events::Event;

use super::numbering;

/// The FatturaPA namespace (schema 1.2.x).
pub const NAMESPACE: &str = "http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2";
/// Longest Denominazione (String80LatinType).
pub const NAME_MAX: usize = 80;
/// Longest Descrizione (String1000LatinType).
pub const DESCRIPTION_MAX: usize = 1000;
/// Longest Numero (String20Type): `<series>/<number>`.
pub const NUMERO_MAX: usize = 20;
/// The VAT rates (AliquotaIVA) the app issues with. 0 carries Natura N2.2.
pub const VAT_RATES: [i64; 5] = [0, 4, 5, 10, 22];
/// Natura for a 0% line: "non soggette – altri casi".
const NATURA_ZERO_RATE: &str = "N2.2";
/// Largest amount a FatturaPA amount field holds (Amount2DecimalType, 11 integer digits), in cents.
pub const AMOUNT_MAX_CENTS: i64 = 9_999_999_999_999;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a document could not be read as one of the app's invoices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not well-formed XML near byte {position}")]
    Xml {
        position: u64,
        #[source]
        source: quick_xml::Error,
    },

    #[error("not a FatturaPA document: {why}")]
    NotFatturaPa { why: String },

    #[error("FatturaPA document lacks {field}")]
    Missing { field: &'static str },

    #[error("FatturaPA document has more than one {field}; the app writes one invoice with one line")]
    Repeated { field: &'static str },

    #[error("FatturaPA document: {field} {value:?}: {why}")]
    Invalid { field: &'static str, value: String, why: &'static str },
}

/// The transmission format: FPR12 to businesses, FPA12 to public bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Format {
    #[serde(rename = "FPR12")]
    Fpr12,
    #[serde(rename = "FPA12")]
    Fpa12,
}

impl Format {
    /// The format a recipient code calls for: 7 characters for a business
    /// (codice destinatario), 6 for a public body (codice univoco ufficio).
    pub fn for_recipient_code(code: &str) -> Option<Format> {
        if !code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return None;
        }
        match code.len() {
            7 => Some(Format::Fpr12),
            6 => Some(Format::Fpa12),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Fpr12 => "FPR12",
            Format::Fpa12 => "FPA12",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "FPR12" => Some(Format::Fpr12),
            "FPA12" => Some(Format::Fpa12),
            _ => None,
        }
    }

    /// Whether the recipient is a public body (an NE or DT receipt ends the exchange).
    pub fn is_public_body(self) -> bool {
        self == Format::Fpa12
    }
}

/// One invoice as its FatturaPA document says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fattura {
    pub format: Format,
    /// ProgressivoInvio, also in the file name.
    pub progressive: u64,
    /// The issuer's partita IVA (CedentePrestatore, and IdTrasmittente: the
    /// tenant transmits its own files).
    pub supplier_vat: String,
    pub supplier_name: String,
    /// CodiceDestinatario.
    pub recipient_code: String,
    pub customer_vat: String,
    pub customer_name: String,
    pub series: String,
    pub number: i64,
    pub issue_date: Date,
    pub description: String,
    pub taxable_cents: i64,
    pub vat_rate_percent: i64,
    pub vat_cents: i64,
}

/// What [`parse`] returns: everything the document says about the invoice.
pub type ParsedInvoice = Fattura;

impl Fattura {
    /// The Numero of the document: `<series>/<number>`.
    pub fn numero(&self) -> String {
        format!("{}/{}", self.series, self.number)
    }

    pub fn total_cents(&self) -> i64 {
        self.taxable_cents + self.vat_cents
    }

    /// The FatturaPA XML of this invoice, UTF-8, with a trailing newline.
    pub fn render(&self) -> Vec<u8> {
        let mut x = XmlWriter::default();
        x.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x.out,
            "<p:FatturaElettronica versione=\"{}\" xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\" \
             xmlns:p=\"{NAMESPACE}\">",
            self.format.as_str()
        );
        x.depth = 1;
        x.open("FatturaElettronicaHeader");
        {
            x.open("DatiTrasmissione");
            x.open("IdTrasmittente");
            x.leaf("IdPaese", "IT");
            x.leaf("IdCodice", &self.supplier_vat);
            x.close("IdTrasmittente");
            x.leaf("ProgressivoInvio", &progressive_text(self.progressive));
            x.leaf("FormatoTrasmissione", self.format.as_str());
            x.leaf("CodiceDestinatario", &self.recipient_code);
            x.close("DatiTrasmissione");

            x.open("CedentePrestatore");
            x.party(&self.supplier_vat, &self.supplier_name, Some("RF01"));
            x.placeholder_sede();
            x.close("CedentePrestatore");

            x.open("CessionarioCommittente");
            x.party(&self.customer_vat, &self.customer_name, None);
            x.placeholder_sede();
            x.close("CessionarioCommittente");
        }
        x.close("FatturaElettronicaHeader");

        let rate = amount(self.vat_rate_percent * 100);
        let taxable = amount(self.taxable_cents);
        x.open("FatturaElettronicaBody");
        {
            x.open("DatiGenerali");
            x.open("DatiGeneraliDocumento");
            x.leaf("TipoDocumento", "TD01");
            x.leaf("Divisa", "EUR");
            x.leaf("Data", &self.issue_date.to_string());
            x.leaf("Numero", &self.numero());
            x.leaf("ImportoTotaleDocumento", &amount(self.total_cents()));
            x.close("DatiGeneraliDocumento");
            x.close("DatiGenerali");

            x.open("DatiBeniServizi");
            x.open("DettaglioLinee");
            x.leaf("NumeroLinea", "1");
            x.leaf("Descrizione", &self.description);
            x.leaf("Quantita", "1.00");
            x.leaf("PrezzoUnitario", &taxable);
            x.leaf("PrezzoTotale", &taxable);
            x.leaf("AliquotaIVA", &rate);
            if self.vat_rate_percent == 0 {
                x.leaf("Natura", NATURA_ZERO_RATE);
            }
            x.close("DettaglioLinee");
            x.open("DatiRiepilogo");
            x.leaf("AliquotaIVA", &rate);
            if self.vat_rate_percent == 0 {
                x.leaf("Natura", NATURA_ZERO_RATE);
            }
            x.leaf("ImponibileImporto", &taxable);
            x.leaf("Imposta", &amount(self.vat_cents));
            // Esigibilità immediata; split payment (S) does not concern the simulator.
            x.leaf("EsigibilitaIVA", "I");
            x.close("DatiRiepilogo");
            x.close("DatiBeniServizi");
        }
        x.close("FatturaElettronicaBody");
        x.depth = 0;
        x.raw("</p:FatturaElettronica>\n");
        x.out.into_bytes()
    }
}

/// The VAT on `taxable_cents` at `rate_percent`, rounded half up to the cent.
pub fn vat_cents(taxable_cents: i64, rate_percent: i64) -> i64 {
    let exact = i128::from(taxable_cents) * i128::from(rate_percent);
    // Round half away from zero, as the tax agency's rounding rule says.
    let rounded = if exact >= 0 { (exact + 50) / 100 } else { (exact - 50) / 100 };
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// Checks that `text` fits a FatturaPA Latin text field of at most `max`
/// characters: Basic Latin and Latin-1 Supplement, no control characters, not
/// blank. Returns why not.
pub fn check_latin_text(text: &str, max: usize) -> std::result::Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let len = text.chars().count();
    if len > max {
        return Err(format!("is {len} characters long, at most {max} fit"));
    }
    if let Some(c) = text.chars().find(|&c| !matches!(c, ' '..='~' | '\u{A0}'..='\u{FF}')) {
        return Err(format!(
            "contains {c:?} (U+{:04X}); FatturaPA text allows Basic Latin and Latin-1 characters only",
            u32::from(c)
        ));
    }
    Ok(())
}

/// Cents as a FatturaPA amount: `1234.50`.
fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// ProgressivoInvio as written: the file name's base-36 progressive. Values
/// beyond the five-character range only arise from a bad [`Fattura`]; they are
/// written in full rather than hidden.
fn progressive_text(progressive: u64) -> String {
    numbering::progressive_code(progressive).unwrap_or_else(|_| progressive.to_string())
}

/// Reads an amount with at most two significant decimals into cents.
fn parse_amount(field: &'static str, text: &str) -> Result<i64> {
    let invalid = |why| Error::Invalid { field, value: text.to_string(), why };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (units, decimals) = digits.split_once('.').unwrap_or((digits, ""));
    if units.is_empty() || units.len() > 11 || !units.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("not an amount like 1234.50"));
    }
    if decimals.len() > 8 || !decimals.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("not an amount like 1234.50"));
    }
    if decimals.bytes().skip(2).any(|b| b != b'0') {
        return Err(invalid("has fractions of a cent"));
    }
    let cents_text: String = decimals.chars().chain("00".chars()).take(2).collect();
    let units: i64 = units.parse().map_err(|_| invalid("too large"))?;
    let cents: i64 = cents_text.parse().map_err(|_| invalid("not an amount like 1234.50"))?;
    let value = units * 100 + cents;
    Ok(if negative { -value } else { value })
}

/// Reads a FatturaPA invoice document written by this app (or shaped like one).
pub fn parse(xml: &[u8]) -> Result<ParsedInvoice> {
    let fields = Fields::read(xml)?;

    let format_text = fields.required("FormatoTrasmissione")?;
    let format = Format::parse(format_text).ok_or_else(|| Error::Invalid {
        field: "FormatoTrasmissione",
        value: format_text.to_string(),
        why: "neither FPR12 nor FPA12",
    })?;
    if fields.version.as_deref() != Some(format_text) {
        return Err(Error::NotFatturaPa {
            why: format!("versione {:?} differs from FormatoTrasmissione {format_text}", fields.version),
        });
    }
    let progressive_text = fields.required("ProgressivoInvio")?;
    let progressive = numbering::progressive_from_code(progressive_text).ok_or_else(|| Error::Invalid {
        field: "ProgressivoInvio",
        value: progressive_text.to_string(),
        why: "not a base-36 progressive of 1 to 5 characters",
    })?;
    let tipo = fields.required("TipoDocumento")?;
    if tipo != "TD01" {
        return Err(Error::Invalid { field: "TipoDocumento", value: tipo.into(), why: "the app reads TD01 only" });
    }
    let divisa = fields.required("Divisa")?;
    if divisa != "EUR" {
        return Err(Error::Invalid { field: "Divisa", value: divisa.into(), why: "the app reads EUR only" });
    }
    let data = fields.required("Data")?;
    let issue_date: Date =
        data.parse().map_err(|_| Error::Invalid { field: "Data", value: data.into(), why: "not a YYYY-MM-DD date" })?;
    let numero = fields.required("Numero")?;
    let invalid_numero = || Error::Invalid { field: "Numero", value: numero.into(), why: "not <series>/<number>" };
    let (series, number) = numero.rsplit_once('/').ok_or_else(invalid_numero)?;
    if series.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid_numero());
    }
    let number: i64 = number.parse().map_err(|_| invalid_numero())?;
    if number < 1 {
        return Err(invalid_numero());
    }

    let rate_text = fields.required("AliquotaIVA")?;
    if fields.required("AliquotaIVA (riepilogo)")? != rate_text {
        return Err(Error::Invalid {
            field: "DatiRiepilogo/AliquotaIVA",
            value: fields.required("AliquotaIVA (riepilogo)")?.into(),
            why: "differs from the line's AliquotaIVA",
        });
    }
    let rate_hundredths = parse_amount("AliquotaIVA", rate_text)?;
    if rate_hundredths % 100 != 0 {
        return Err(Error::Invalid { field: "AliquotaIVA", value: rate_text.into(), why: "not a whole percentage" });
    }
    let taxable_cents = parse_amount("ImponibileImporto", fields.required("ImponibileImporto")?)?;
    let vat_cents = parse_amount("Imposta", fields.required("Imposta")?)?;
    let total_text = fields.required("ImportoTotaleDocumento")?;
    if parse_amount("ImportoTotaleDocumento", total_text)? != taxable_cents + vat_cents {
        return Err(Error::Invalid {
            field: "ImportoTotaleDocumento",
            value: total_text.into(),
            why: "is not ImponibileImporto + Imposta",
        });
    }
    let supplier_vat = fields.required("CedentePrestatore IdCodice")?.to_string();
    let transmitter = fields.required("IdTrasmittente IdCodice")?;
    if transmitter != supplier_vat {
        return Err(Error::Invalid {
            field: "IdTrasmittente/IdCodice",
            value: transmitter.into(),
            why: "differs from the CedentePrestatore; the app transmits its own files",
        });
    }

    Ok(Fattura {
        format,
        progressive,
        supplier_vat,
        supplier_name: fields.required("CedentePrestatore Denominazione")?.to_string(),
        recipient_code: fields.required("CodiceDestinatario")?.to_string(),
        customer_vat: fields.required("CessionarioCommittente IdCodice")?.to_string(),
        customer_name: fields.required("CessionarioCommittente Denominazione")?.to_string(),
        series: series.to_string(),
        number,
        issue_date,
        description: fields.required("Descrizione")?.to_string(),
        taxable_cents,
        vat_rate_percent: rate_hundredths / 100,
        vat_cents,
    })
}

/// The elements [`parse`] reads: path below the root → the name it goes by.
const READ: &[(&str, &str)] = &[
    ("FatturaElettronicaHeader/DatiTrasmissione/IdTrasmittente/IdCodice", "IdTrasmittente IdCodice"),
    ("FatturaElettronicaHeader/DatiTrasmissione/ProgressivoInvio", "ProgressivoInvio"),
    ("FatturaElettronicaHeader/DatiTrasmissione/FormatoTrasmissione", "FormatoTrasmissione"),
    ("FatturaElettronicaHeader/DatiTrasmissione/CodiceDestinatario", "CodiceDestinatario"),
    ("FatturaElettronicaHeader/CedentePrestatore/DatiAnagrafici/IdFiscaleIVA/IdCodice", "CedentePrestatore IdCodice"),
    (
        "FatturaElettronicaHeader/CedentePrestatore/DatiAnagrafici/Anagrafica/Denominazione",
        "CedentePrestatore Denominazione",
    ),
    (
        "FatturaElettronicaHeader/CessionarioCommittente/DatiAnagrafici/IdFiscaleIVA/IdCodice",
        "CessionarioCommittente IdCodice",
    ),
    (
        "FatturaElettronicaHeader/CessionarioCommittente/DatiAnagrafici/Anagrafica/Denominazione",
        "CessionarioCommittente Denominazione",
    ),
    ("FatturaElettronicaBody/DatiGenerali/DatiGeneraliDocumento/TipoDocumento", "TipoDocumento"),
    ("FatturaElettronicaBody/DatiGenerali/DatiGeneraliDocumento/Divisa", "Divisa"),
    ("FatturaElettronicaBody/DatiGenerali/DatiGeneraliDocumento/Data", "Data"),
    ("FatturaElettronicaBody/DatiGenerali/DatiGeneraliDocumento/Numero", "Numero"),
    ("FatturaElettronicaBody/DatiGenerali/DatiGeneraliDocumento/ImportoTotaleDocumento", "ImportoTotaleDocumento"),
    ("FatturaElettronicaBody/DatiBeniServizi/DettaglioLinee/Descrizione", "Descrizione"),
    ("FatturaElettronicaBody/DatiBeniServizi/DettaglioLinee/AliquotaIVA", "AliquotaIVA"),
    ("FatturaElettronicaBody/DatiBeniServizi/DatiRiepilogo/AliquotaIVA", "AliquotaIVA (riepilogo)"),
    ("FatturaElettronicaBody/DatiBeniServizi/DatiRiepilogo/ImponibileImporto", "ImponibileImporto"),
    ("FatturaElettronicaBody/DatiBeniServizi/DatiRiepilogo/Imposta", "Imposta"),
];

/// The text of the elements in [`READ`], and the root's `versione`.
struct Fields {
    version: Option<String>,
    values: HashMap<&'static str, String>,
}

impl Fields {
    fn read(xml: &[u8]) -> Result<Self> {
        let mut reader = quick_xml::Reader::from_reader(xml);
        let xml_error = |reader: &quick_xml::Reader<&[u8]>, source: quick_xml::Error| Error::Xml {
            position: reader.buffer_position(),
            source,
        };
        let mut path: Vec<String> = Vec::new();
        let mut text = String::new();
        let mut fields = Fields { version: None, values: HashMap::new() };
        let mut seen_root = false;
        loop {
            let event = reader.read_event().map_err(|e| xml_error(&reader, e))?;
            match event {
                Event::Start(ref start) | Event::Empty(ref start) if path.is_empty() => {
                    if seen_root {
                        return Err(Error::NotFatturaPa { why: "more than one root element".into() });
                    }
                    seen_root = true;
                    fields.version = check_root(start).map_err(|e| match e {
                        RootError::Xml(source) => xml_error(&reader, source),
                        RootError::Not(why) => Error::NotFatturaPa { why },
                    })?;
                    if matches!(event, Event::Start(_)) {
                        path.push("FatturaElettronica".into());
                    }
                    text.clear();
                }
                Event::Start(start) => {
                    path.push(String::from_utf8_lossy(start.local_name().as_ref()).into_owned());
                    text.clear();
                }
                Event::Empty(start) => {
                    path.push(String::from_utf8_lossy(start.local_name().as_ref()).into_owned());
                    fields.store(&path, String::new())?;
                    path.pop();
                    text.clear();
                }
                Event::End(_) => {
                    fields.store(&path, std::mem::take(&mut text))?;
                    path.pop();
                }
                Event::Text(t) => text.push_str(&t.xml10_content().map_err(|e| xml_error(&reader, e.into()))?),
                Event::CData(c) => text.push_str(&c.decode().map_err(|e| xml_error(&reader, e.into()))?),
                Event::GeneralRef(r) => {
                    if let Some(c) = r.resolve_char_ref().map_err(|e| xml_error(&reader, e))? {
                        text.push(c);
                    } else {
                        let name = r.decode().map_err(|e| xml_error(&reader, e.into()))?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(value) => text.push_str(value),
                            None => {
                                return Err(Error::NotFatturaPa { why: format!("undefined entity &{name};") });
                            }
                        }
                    }
                }
                Event::Eof => break,
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
        if !seen_root {
            return Err(Error::NotFatturaPa { why: "no root element".into() });
        }
        Ok(fields)
    }

    fn store(&mut self, path: &[String], text: String) -> Result<()> {
        // path[0] is the root; READ lists paths below it.
        let Some(below_root) = path.get(1..) else { return Ok(()) };
        let Some(&(_, name)) = READ.iter().find(|(p, _)| p.split('/').eq(below_root.iter().map(String::as_str))) else {
            return Ok(());
        };
        if self.values.insert(name, text).is_some() {
            return Err(Error::Repeated { field: name });
        }
        Ok(())
    }

    fn required(&self, name: &'static str) -> Result<&str> {
        self.values.get(name).map(String::as_str).ok_or(Error::Missing { field: name })
    }
}

enum RootError {
    Xml(quick_xml::Error),
    Not(String),
}

/// Checks the root element (FatturaElettronica in the FatturaPA namespace) and
/// returns its `versione`.
fn check_root(start: &quick_xml::events::BytesStart<'_>) -> std::result::Result<Option<String>, RootError> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let (prefix, local) = match name.split_once(':') {
        Some((prefix, local)) => (Some(prefix), local),
        None => (None, name.as_str()),
    };
    if local != "FatturaElettronica" {
        return Err(RootError::Not(format!("root element is {name}")));
    }
    let xmlns = match prefix {
        Some(prefix) => format!("xmlns:{prefix}"),
        None => "xmlns".to_string(),
    };
    let mut namespace = None;
    let mut version = None;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| RootError::Xml(e.into()))?;
        let key = attribute.key.as_ref();
        if key == xmlns.as_bytes() {
            namespace = Some(
                attribute.normalized_value(quick_xml::XmlVersion::Explicit1_0).map_err(RootError::Xml)?.into_owned(),
            );
        } else if key == b"versione" {
            version = Some(
                attribute.normalized_value(quick_xml::XmlVersion::Explicit1_0).map_err(RootError::Xml)?.into_owned(),
            );
        }
    }
    if namespace.as_deref() != Some(NAMESPACE) {
        return Err(RootError::Not(format!("{name} is in namespace {namespace:?}, not {NAMESPACE}")));
    }
    Ok(version)
}

/// Writes indented XML, escaping text.
#[derive(Default)]
struct XmlWriter {
    out: String,
    depth: usize,
}

impl XmlWriter {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push_str("  ");
        }
    }

    fn open(&mut self, name: &str) {
        self.indent();
        let _ = writeln!(self.out, "<{name}>");
        self.depth += 1;
    }

    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.indent();
        let _ = writeln!(self.out, "</{name}>");
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.indent();
        let _ = writeln!(self.out, "<{name}>{}</{name}>", quick_xml::escape::escape(text));
    }

    /// DatiAnagrafici of an Italian company.
    fn party(&mut self, vat: &str, name: &str, regime: Option<&str>) {
        self.open("DatiAnagrafici");
        self.open("IdFiscaleIVA");
        self.leaf("IdPaese", "IT");
        self.leaf("IdCodice", vat);
        self.close("IdFiscaleIVA");
        self.open("Anagrafica");
        self.leaf("Denominazione", name);
        self.close("Anagrafica");
        if let Some(regime) = regime {
            self.leaf("RegimeFiscale", regime);
        }
        self.close("DatiAnagrafici");
    }

    /// NB: the schema requires a Sede (address) for both parties and the app
    /// keeps no addresses, so every document carries the same placeholder.
    fn placeholder_sede(&mut self) {
        self.open("Sede");
        self.leaf("Indirizzo", "Indirizzo non indicato");
        self.leaf("CAP", "00100");
        self.leaf("Comune", "Roma");
        self.leaf("Provincia", "RM");
        self.leaf("Nazione", "IT");
        self.close("Sede");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fattura() -> Fattura {
        Fattura {
            format: Format::Fpr12,
            progressive: 37,
            supplier_vat: "01234567890".into(),
            supplier_name: "Fenice S.p.A.".into(),
            recipient_code: "ABC1234".into(),
            customer_vat: "09876543210".into(),
            customer_name: "Bar & Ristorante \"L'Òca\" <Srl>".into(),
            series: "2026".into(),
            number: 17,
            issue_date: jiff::civil::date(2026, 11, 23),
            description: "Consulenza  sistemistica: 3 giornate & trasferta".into(),
            taxable_cents: 123_456,
            vat_rate_percent: 22,
            vat_cents: vat_cents(123_456, 22),
        }
    }

    #[test]
    fn render_then_parse_gives_the_same_invoice() {
        let cases = [
            fattura(),
            Fattura {
                format: Format::Fpa12,
                recipient_code: "UFX9Z1".into(),
                progressive: numbering::PROGRESSIVE_MAX,
                series: "A-2026".into(),
                number: 1,
                vat_rate_percent: 0,
                vat_cents: 0,
                taxable_cents: 1,
                ..fattura()
            },
            Fattura { vat_rate_percent: 4, taxable_cents: AMOUNT_MAX_CENTS / 2, ..fattura() },
            Fattura { description: " spazi ai lati ".into(), vat_rate_percent: 10, ..fattura() },
        ];
        for f in cases {
            let xml = f.render();
            assert_eq!(parse(&xml).unwrap(), f, "{}", String::from_utf8_lossy(&xml));
        }
    }

    #[test]
    fn the_document_is_fatturapa_with_escaped_text() {
        let xml = String::from_utf8(fattura().render()).unwrap();
        assert!(
            xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<p:FatturaElettronica versione=\"FPR12\"")
        );
        assert!(xml.contains(&format!("xmlns:p=\"{NAMESPACE}\"")));
        for expected in [
            "<ProgressivoInvio>00011</ProgressivoInvio>",
            "<FormatoTrasmissione>FPR12</FormatoTrasmissione>",
            "<CodiceDestinatario>ABC1234</CodiceDestinatario>",
            "<Denominazione>Bar &amp; Ristorante &quot;L&apos;Òca&quot; &lt;Srl&gt;</Denominazione>",
            "<TipoDocumento>TD01</TipoDocumento>",
            "<Numero>2026/17</Numero>",
            "<Data>2026-11-23</Data>",
            "<ImportoTotaleDocumento>1506.16</ImportoTotaleDocumento>",
            "<AliquotaIVA>22.00</AliquotaIVA>",
            "<Imposta>271.60</Imposta>",
        ] {
            assert!(xml.contains(expected), "lacks {expected}:\n{xml}");
        }
    }

    #[test]
    fn vat_rounds_half_up_to_the_cent() {
        assert_eq!(vat_cents(10_000, 22), 2_200);
        assert_eq!(vat_cents(1, 22), 0);
        assert_eq!(vat_cents(3, 22), 1); // 0.66 cents
        assert_eq!(vat_cents(25, 10), 3); // 2.5 cents
        assert_eq!(vat_cents(123_456, 22), 27_160); // 271.6032
    }

    #[test]
    fn recipient_codes_pick_the_format() {
        assert_eq!(Format::for_recipient_code("ABC1234"), Some(Format::Fpr12));
        assert_eq!(Format::for_recipient_code("0000000"), Some(Format::Fpr12));
        assert_eq!(Format::for_recipient_code("UFXXXX"), Some(Format::Fpa12));
        assert_eq!(Format::for_recipient_code("abc1234"), None);
        assert_eq!(Format::for_recipient_code("ABC12"), None);
        assert_eq!(Format::for_recipient_code("ABC-234"), None);
    }

    #[test]
    fn latin_text_rules() {
        assert!(check_latin_text("Caffè & Co.", 80).is_ok());
        assert!(check_latin_text("  ", 80).unwrap_err().contains("empty"));
        assert!(check_latin_text("€ 10", 80).unwrap_err().contains("U+20AC"));
        assert!(check_latin_text("a\nb", 80).unwrap_err().contains("U+000A"));
        assert!(check_latin_text(&"x".repeat(81), 80).unwrap_err().contains("81"));
    }

    #[test]
    fn amounts_read_back_to_cents() {
        assert_eq!(parse_amount("x", "1234.50").unwrap(), 123_450);
        assert_eq!(parse_amount("x", "0.5").unwrap(), 50);
        assert_eq!(parse_amount("x", "7").unwrap(), 700);
        assert_eq!(parse_amount("x", "1.23000000").unwrap(), 123);
        assert_eq!(parse_amount("x", "-2.00").unwrap(), -200);
        for bad in ["", "1.234", "1,00", "abc", ".5", "1.2.3", "123456789012.00"] {
            assert!(parse_amount("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn foreign_or_broken_documents_are_refused_with_a_reason() {
        let good = String::from_utf8(fattura().render()).unwrap();
        let cases = [
            ("<a/>".to_string(), "root element is a"),
            (good.replace(NAMESPACE, "urn:other"), "namespace"),
            (good.replace("<Numero>2026/17</Numero>", ""), "lacks Numero"),
            (good.replace("</Descrizione>", "</Descrizione><Descrizione>x</Descrizione>"), "more than one"),
            (good.replace("<Imposta>271.60</Imposta>", "<Imposta>271.61</Imposta>"), "ImponibileImporto + Imposta"),
            (good.replace("</FatturaElettronicaBody>", ""), "well-formed"),
            (good.replace("&amp;", "&nbsp;"), "undefined entity"),
            (good.replace("versione=\"FPR12\"", "versione=\"FPA12\""), "differs from FormatoTrasmissione"),
        ];
        for (xml, expected) in cases {
            let e = parse(xml.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(expected), "expected {expected:?}, got {e}");
        }
    }
}
