//! The pages of drill and failover reports: one self-contained HTML file an
//! auditor can open anywhere, with a timeline picture in inline SVG (a lane per
//! tenant, each step a bar on a shared time axis).

use std::fmt::Write;

/// One lane of the picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Lane {
    pub label: String,
    pub bars: Vec<Bar>,
}

/// One bar: from `start` to `end`, in seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub start: f64,
    pub end: f64,
    /// A CSS colour.
    pub colour: &'static str,
    /// What a pointer over the bar shows.
    pub title: String,
}

/// A colour and what it means, shown under the lanes.
pub type Legend<'a> = &'a [(&'static str, &'static str)];

const WIDTH: f64 = 900.0;
const LABEL: f64 = 220.0;
const LANE: f64 = 24.0;

/// The picture; `name` is its accessible label.
pub fn svg(name: &str, lanes: &[Lane], legend: Legend<'_>) -> String {
    let bars = || lanes.iter().flat_map(|l| &l.bars);
    let origin = bars().map(|b| b.start).fold(f64::INFINITY, f64::min);
    let end = bars().map(|b| b.end).fold(f64::NEG_INFINITY, f64::max);
    let span = if origin.is_finite() { (end - origin).max(1.0) } else { 1.0 };
    let scale = (WIDTH - LABEL - 20.0) / span;
    let axis = 10.0 + LANE * lanes.len() as f64 + 16.0;
    let height = axis + if legend.is_empty() { 10.0 } else { 28.0 };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" \
         aria-label=\"{}\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>",
        escape(name)
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = 10.0 + LANE * i as f64;
        let _ = write!(svg, "<text x=\"4\" y=\"{:.1}\" font-size=\"12\">{}</text>", y + 14.0, escape(&lane.label));
        for bar in &lane.bars {
            let x = LABEL + (bar.start - origin) * scale;
            let w = ((bar.end - bar.start) * scale).max(2.0);
            let _ = write!(
                svg,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{}: {:.1} s</title></rect>",
                LANE - 6.0,
                bar.colour,
                escape(&bar.title),
                bar.end - bar.start,
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{LABEL}\" y=\"{axis:.1}\" font-size=\"11\">0 s</text><text x=\"{:.1}\" y=\"{axis:.1}\" \
         font-size=\"11\" text-anchor=\"end\">{span:.1} s</text>",
        WIDTH - 20.0
    );
    let mut x = LABEL;
    for (colour, meaning) in legend {
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{:.1}\" \
             y=\"{:.1}\" font-size=\"11\">{}</text>",
            axis + 8.0,
            x + 16.0,
            axis + 18.0,
            escape(meaning)
        );
        x += 16.0 + 7.0 * meaning.len() as f64 + 14.0;
    }
    svg.push_str("</svg>");
    svg
}

/// What a report page shows. Everything but `summary_html` and `rows_html` is
/// plain text.
pub struct Page<'a> {
    /// `Drill`, `Failover`.
    pub kind: &'a str,
    pub name: &'a str,
    pub verdict: &'a str,
    /// Whether the verdict is good news (green) or not (red).
    pub good: bool,
    /// The paragraph under the heading, as HTML.
    pub summary_html: String,
    pub timeline_svg: String,
    /// What the table's figures mean, if they need saying.
    pub note: Option<&'a str>,
    pub headers: &'a [&'a str],
    /// `<tr>` rows, one per tenant, with class `passed` or `failed`.
    pub rows_html: String,
}

/// The page.
pub fn html(page: &Page<'_>) -> String {
    let headers: String = page.headers.iter().map(|h| format!("<th>{}</th>", escape(h))).collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{kind} {name}: {verdict}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:4px 8px}}tr.failed td{{background:#fdd}}.good{{color:#060}}.bad{{color:#b00}}\
         </style></head><body>\n<h1>{kind} {name}: <span class=\"{class}\">{verdict}</span></h1>\n<p>{summary}</p>\n\
         <h2>Timeline</h2>\n{svg}\n<h2>Tenants</h2>\n{note}<table><tr>{headers}</tr>\n{rows}</table>\n</body></html>\n",
        kind = escape(page.kind),
        name = escape(page.name),
        verdict = escape(page.verdict),
        class = if page.good { "good" } else { "bad" },
        summary = page.summary_html,
        svg = page.timeline_svg,
        note = page.note.map(|n| format!("<p>{}</p>\n", escape(n))).unwrap_or_default(),
        rows = page.rows_html,
    )
}

/// `text` safe inside HTML and SVG text and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_share_one_axis_and_text_is_escaped() {
        let bar = |start, end, title: &str| Bar { start, end, colour: "#2a2", title: title.into() };
        let lanes = [
            Lane { label: "a<b>".into(), bars: vec![bar(100.0, 110.0, "restore"), bar(110.0, 120.0, "start")] },
            Lane { label: "c".into(), bars: vec![bar(105.0, 140.0, "restore")] },
        ];
        let picture = svg("failover timeline", &lanes, &[("#2a2", "restore")]);
        assert_eq!(picture.matches("class=\"bar\"").count(), 3);
        assert!(picture.contains("a&lt;b&gt;") && !picture.contains("a<b>"), "{picture}");
        // 40 s over 660 px: the first bar starts at the label's edge, the last ends at the right.
        assert!(picture.contains("x=\"220.0\" y=\"10.0\" width=\"165.0\""), "{picture}");
        assert!(picture.contains(">40.0 s</text>"), "{picture}");
        assert!(svg("empty", &[], &[]).ends_with("</svg>"));
    }
}
