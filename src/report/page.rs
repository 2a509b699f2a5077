//! The report as a self-contained HTML page (figures inlined as data URIs) and as Markdown (the
//! figures beside it as files). Every number links to the artifact it came from, listed at the
//! end with the command that shows it.

use super::figures::Figure;
use super::{Cell, Finding, Results, Table, deviations, sources};
use base64::Engine;
use std::fmt::Write;

/// The base stage name of an instance label: `eval_lambda[lambda=0.1]` → `eval_lambda`.
pub fn base_name(instance: &str) -> &str {
    instance.split('[').next().unwrap_or(instance)
}

/// The swept parameters of an instance label: `rl[alpha=0.5]` → `[("alpha", "0.5")]`.
pub fn params(instance: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = instance.split_once('[') else {
        return Vec::new();
    };
    rest.split(']')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn anchor(id: &str) -> String {
    format!("src-{}", &id[..id.len().min(16)])
}

/// A cell's text: a proportion with its interval, a share in percent, or a count.
pub fn cell_text(c: &Cell) -> String {
    let Some(v) = c.value else {
        return "–".into();
    };
    if c.column == "items" {
        return format!("{v:.0}");
    }
    if c.column.contains("share") {
        return format!("{:.1} %", 100.0 * v);
    }
    match (c.lo, c.hi) {
        (Some(lo), Some(hi)) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
        _ => format!("{v:.3}"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;\
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th:first-child,td:first-child{text-align:left}\
thead th{background:#f3f3f3}td a{color:inherit;text-decoration:none;border-bottom:1px dotted #888}\
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555}\
.reproduced{color:#08720f;font-weight:600}.not-reproduced{color:#b00020;font-weight:600}\
.inconclusive,.not-run{color:#8a6d00;font-weight:600}code{font-size:.9em}.caption{color:#555}";

/// The HTML page.
pub fn html(r: &Results, tables: &[Table], figures: &[Figure], findings: &[Finding]) -> String {
    let mut h = String::new();
    let title = esc(&r.title);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    h.push_str("<h2>Findings</h2>\n<ul class=\"findings\">\n");
    for f in findings {
        let class = f.verdict.as_str().replace(' ', "-");
        let _ = writeln!(
            h,
            "<li><span class=\"{class}\">{}</span> — {}. <span class=\"evidence\">{}</span>{}</li>",
            f.verdict.as_str(),
            esc(f.claim),
            esc(&f.evidence),
            f.sources
                .iter()
                .map(|s| format!(
                    " <a href=\"#{}\">[{}]</a>",
                    anchor(&s.id),
                    &s.id[..8.min(s.id.len())]
                ))
                .collect::<String>()
        );
    }
    h.push_str("</ul>\n");
    let departures = deviations(r);
    if !departures.is_empty() {
        h.push_str("<h2>Where this grid departs from the paper</h2>\n<ul class=\"deviations\">\n");
        for d in &departures {
            let _ = writeln!(h, "<li>{}</li>", esc(d));
        }
        h.push_str("</ul>\n");
    }
    for t in tables {
        let (rows, cols) = t.layout();
        let _ = write!(
            h,
            "<h2 id=\"{}\">{}</h2>\n<p class=\"caption\">{}</p>\n<table data-table=\"{}\"><thead><tr><th></th>",
            t.key,
            esc(&t.title),
            esc(&t.caption),
            t.key
        );
        for c in &cols {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h.push_str("</tr></thead><tbody>\n");
        for row in &rows {
            let _ = write!(h, "<tr><th>{}</th>", esc(row));
            for col in &cols {
                match t.cell(row, col) {
                    Some(c) => {
                        let _ = write!(
                            h,
                            "<td><a href=\"#{}\" title=\"asymm show {}\">{}</a></td>",
                            anchor(&c.source.id),
                            c.source.id,
                            esc(&cell_text(c))
                        );
                    }
                    None => h.push_str("<td>–</td>"),
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody></table>\n");
    }
    if !figures.is_empty() {
        h.push_str("<h2>Figures</h2>\n");
    }
    for f in figures {
        let data = base64::engine::general_purpose::STANDARD.encode(&f.png);
        let _ = writeln!(
            h,
            "<figure><img src=\"data:image/png;base64,{data}\" alt=\"{}\" data-file=\"{}\">\
             <figcaption><b>{}.</b> {}</figcaption></figure>",
            esc(&f.title),
            f.file,
            esc(&f.title),
            esc(&f.caption)
        );
    }
    h.push_str("<h2>Sources</h2>\n<p>Every number above links here; <code>asymm show ID</code> prints the artifact and its lineage.</p>\n<ul class=\"sources\">\n");
    for (id, instance) in sources(r) {
        let _ = writeln!(
            h,
            "<li id=\"{}\"><code>{id}</code> — {}</li>",
            anchor(&id),
            esc(&instance)
        );
    }
    h.push_str("</ul>\n</body></html>\n");
    h
}

/// The Markdown version (figures referenced by file name, beside it in the artifact).
pub fn markdown(r: &Results, tables: &[Table], figures: &[Figure], findings: &[Finding]) -> String {
    let mut m = format!("# {}\n\n## Findings\n\n", r.title);
    for f in findings {
        let _ = writeln!(
            m,
            "- **{}** — {}. {}",
            f.verdict.as_str(),
            f.claim,
            f.evidence
        );
    }
    let departures = deviations(r);
    if !departures.is_empty() {
        m.push_str("\n## Where this grid departs from the paper\n\n");
        for d in &departures {
            let _ = writeln!(m, "- {d}");
        }
    }
    for t in tables {
        let (rows, cols) = t.layout();
        let _ = write!(m, "\n## {}\n\n{}\n\n| |", t.title, t.caption);
        for c in &cols {
            let _ = write!(m, " {c} |");
        }
        m.push_str("\n|---|");
        m.push_str(&"---:|".repeat(cols.len()));
        m.push('\n');
        for row in &rows {
            let _ = write!(m, "| {row} |");
            for col in &cols {
                match t.cell(row, col) {
                    Some(c) => {
                        let _ = write!(m, " [{}](#{}) |", cell_text(c), anchor(&c.source.id));
                    }
                    None => m.push_str(" – |"),
                }
            }
            m.push('\n');
        }
    }
    if !figures.is_empty() {
        m.push_str("\n## Figures\n");
    }
    for f in figures {
        let _ = write!(
            m,
            "\n![{}]({})\n\n*{}.* {}\n",
            f.title, f.file, f.title, f.caption
        );
    }
    m.push_str("\n## Sources\n\n");
    for (id, instance) in sources(r) {
        let _ = writeln!(m, "- <a id=\"{}\"></a>`{id}` — {instance}", anchor(&id));
    }
    m
}
