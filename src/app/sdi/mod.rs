//! The SdI exchange as Fenice sees it: the HTTP protocol between a sender (the
//! app's sender loop, `reconcile-sdi`) and the SdI simulator, a client for it, and
//! the simulator itself.
//!
//! The protocol, all JSON but the invoice files:
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/tenants/{tenant}/transmissions?file_name=NAME`, header `Fenice-Epoch: N`, body the XML | 201 [`Transmission`]; 409 [`Refusal`] `duplicate_file_name` (with the earlier transmission) or `stale_epoch` (with the highest epoch seen); 400 [`Refusal`] `bad_request` |
//! | `GET /v1/tenants/{tenant}/transmissions` | 200 `[Record]`, oldest first |
//! | `GET /v1/tenants/{tenant}/transmissions/{sdi_id}` | 200 [`Record`]; 404 [`Refusal`] `not_found` |
//! | `GET /v1/tenants/{tenant}/transmissions/{sdi_id}/file` | 200 the XML as received |
//! | `GET /healthz` | 200 |
//!
//! NB: a duplicate file name is refused whoever sends it, as SdI does. The
//! refusal carries the earlier transmission so that a sender that crashed after
//! SdI accepted its file, but before it recorded the identifier, can tell its
//! own earlier send (same SHA-256) from a real clash and record it as sent,
//! exactly once.

pub mod client;
pub mod sim;

use serde::{Deserialize, Serialize};

/// The header that carries the sender's fencing epoch.
pub const EPOCH_HEADER: &str = "Fenice-Epoch";

/// A file SdI accepted for processing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transmission {
    /// The SdI identifier (IdentificativoSdI): decimal digits.
    pub sdi_id: String,
    pub tenant: String,
    pub file_name: String,
    /// Hex SHA-256 of the file as received.
    pub sha256: String,
    /// The sender's fencing epoch.
    pub epoch: u64,
    /// RFC 3339.
    pub received_at: String,
}

/// A receipt SdI issued for a transmission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub kind: ReceiptKind,
    /// RFC 3339.
    pub issued_at: String,
    /// Why, for NS, MC, NE and AT; empty otherwise.
    #[serde(default)]
    pub detail: String,
}

/// The receipts of SdI (DESIGN.md, "The invoicing domain").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// Ricevuta di consegna: delivered to the recipient.
    RC,
    /// Notifica di scarto: rejected; resend within 5 days, same number and date.
    NS,
    /// Mancata consegna: could not be delivered, available to the recipient online.
    MC,
    /// Notifica di esito: a public body accepted or refused the invoice.
    NE,
    /// Decorrenza termini: a public body did not answer in time.
    DT,
    /// Attestazione di trasmissione: could not be delivered to a public body.
    AT,
}

impl ReceiptKind {
    /// Whether no further receipt follows this one.
    pub fn is_final(self, public_body: bool) -> bool {
        match self {
            ReceiptKind::NS | ReceiptKind::NE | ReceiptKind::DT | ReceiptKind::AT => true,
            ReceiptKind::RC | ReceiptKind::MC => !public_body,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::RC => "RC",
            ReceiptKind::NS => "NS",
            ReceiptKind::MC => "MC",
            ReceiptKind::NE => "NE",
            ReceiptKind::DT => "DT",
            ReceiptKind::AT => "AT",
        }
    }
}

/// A transmission with the receipts issued for it so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub transmission: Transmission,
    pub receipts: Vec<Receipt>,
}

/// Why the simulator refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub error: RefusalKind,
    /// Human-readable, names the file or tenant.
    pub message: String,
    /// For `duplicate_file_name`: the transmission that already has this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier: Option<Transmission>,
    /// For `stale_epoch`: the highest epoch seen for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_epoch: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    DuplicateFileName,
    StaleEpoch,
    BadRequest,
    NotFound,
}
