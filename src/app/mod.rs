//! The reference invoicing app that Fenice protects, and the SdI simulator it
//! transmits to. One app process serves one tenant over that tenant's own
//! PostgreSQL database and documents directory (DESIGN.md, "The invoicing domain").

pub mod schema;
pub mod sdi;
