//! Writes to files in pieces of [`PIECE`] bytes. Linux (6.18 on the machines
//! this was measured on) gives a buffered write page-cache folios as large as
//! the write, and large ones cost far more to fill: cold backups of 26 tenants
//! (0.95 GiB) into a local repository took 1.97-2.16 s with packs written
//! 64 KiB at a time, 3.06-3.92 s with each 16 MiB pack in one write, nearly
//! all the difference system time, in `copy_folio_from_iter_atomic` (`perf`);
//! 1 MiB at a time was no better than 16 MiB.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// The most one write(2) carries.
pub const PIECE: usize = 64 * 1024;

/// `out.write_all(data)`, a piece at a time.
pub fn write_all(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    data.chunks(PIECE).try_for_each(|piece| out.write_all(piece))
}

/// `file.write_all_at(data, offset)`, a piece at a time.
pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}
