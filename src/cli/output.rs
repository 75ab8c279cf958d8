//! Human output: aligned tables and sizes. Machine output is `--json`.

use std::io::{IsTerminal, Write};

/// Prints rows under a header, columns aligned to their widest cell.
pub fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub use crate::error_chain::error_chain;

/// How a report (a drill's, a failover's) is printed.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReportFormat {
    Md,
    Json,
    Html,
}

impl ReportFormat {
    /// `report` in this format, with its own Markdown and HTML renderers.
    pub fn render<R: serde::Serialize>(
        self,
        report: &R,
        markdown: fn(&R) -> String,
        html: fn(&R) -> String,
    ) -> serde_json::Result<String> {
        Ok(match self {
            Self::Md => markdown(report),
            Self::Json => serde_json::to_string_pretty(report)? + "\n",
            Self::Html => html(report),
        })
    }
}

/// `1.5 MiB`-style sizes.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// `[#####-----]  50%  1.0 MiB of 2.0 MiB`: how much of `total` is `done`.
pub fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
    let percent = (done * 100).checked_div(total).unwrap_or(0);
    let bar: String = (0..WIDTH).map(|i| if i < filled { '#' } else { '-' }).collect();
    format!("[{bar}] {percent:>3}%  {} of {}", size(done), size(total))
}

/// A one-line progress display on stderr, shown only on a terminal.
pub struct ProgressLine {
    enabled: bool,
}

impl ProgressLine {
    pub fn new(quiet: bool) -> Self {
        Self { enabled: !quiet && std::io::stderr().is_terminal() }
    }

    pub fn show(&self, text: &str) {
        if self.enabled {
            eprint!("\r\x1b[2K{text}");
        }
    }

    /// Leaves `last` on its own line.
    pub fn finish(&self, last: &str) {
        if self.enabled {
            eprintln!("\r\x1b[2K{last}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn a_bar_fills_with_what_is_done() {
        assert_eq!(bar(0, 0), format!("[{}]   0%  0 B of 0 B", "-".repeat(30)));
        let half = bar(1024 * 1024, 2 * 1024 * 1024);
        assert_eq!(half, format!("[{}{}]  50%  1.0 MiB of 2.0 MiB", "#".repeat(15), "-".repeat(15)));
        assert!(bar(5, 4).contains("100%"), "never past the end");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = Vec::new();
        table(&mut out, &["ID", "Host"], &[vec!["a1".into(), "rome".into()], vec!["b".into(), "x".into()]]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ID  Host\na1  rome\nb   x\n");
    }
}
