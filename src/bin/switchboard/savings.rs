//! `switchboard savings`: the savings report from the Admin service, as tables, JSON, or a
//! self-contained HTML page with SVG bars for people who would rather look than read.
use std::fmt::Write as _;
use std::path::Path;

use switchboard::proto::v1 as pb;

use crate::classifier::{authed, connect};

pub async fn run(
    addr: &str,
    token: &str,
    hours: u64,
    json: bool,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=24 * 366).contains(&hours),
        "--hours must be in 1..=8784, found {hours}"
    );
    let to = switchboard::records::now_ms() + 1;
    let req = pb::GetSavingsRequest {
        from_ms: to.saturating_sub(hours * 3_600_000),
        to_ms: to,
    };
    let r = connect(addr)
        .await?
        .get_savings(authed(req, token)?)
        .await?
        .into_inner();
    if let Some(path) = html {
        std::fs::write(path, page(&r, hours))?;
        println!("wrote {}", path.display());
    } else if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&r))?);
    } else {
        print!("{}", tables(&r, hours));
    }
    Ok(())
}

fn group_json(g: &pb::SavingsGroup) -> serde_json::Value {
    serde_json::json!({
        "name": g.name, "requests": g.requests, "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens, "cost_usd": g.cost_usd,
        "strongest_cost_usd": g.strongest_cost_usd, "default_cost_usd": g.default_cost_usd,
        "savings_vs_strongest_usd": g.savings_vs_strongest_usd,
        "savings_vs_strongest_percent": g.savings_vs_strongest_percent,
        "savings_vs_default_usd": g.savings_vs_default_usd,
        "savings_vs_default_percent": g.savings_vs_default_percent,
        "quality": g.quality, "strongest_quality": g.strongest_quality,
        "default_quality": g.default_quality,
    })
}

fn sections(r: &pb::SavingsReport) -> [(&'static str, &[pb::SavingsGroup]); 5] {
    [
        ("tenant", &r.by_tenant),
        ("key", &r.by_key),
        ("backend", &r.by_backend),
        ("intent", &r.by_intent),
        ("domain", &r.by_domain),
    ]
}

fn to_json(r: &pb::SavingsReport) -> serde_json::Value {
    let mut v = serde_json::json!({
        "from_ms": r.from_ms, "to_ms": r.to_ms, "fleet_wide": r.fleet_wide,
        "total": r.total.as_ref().map(group_json),
    });
    for (name, groups) in sections(r) {
        v[format!("by_{name}")] = groups.iter().map(group_json).collect();
    }
    v
}

fn tables(r: &pb::SavingsReport, hours: u64) -> String {
    let mut out = String::new();
    let scope = if r.fleet_wide {
        "the fleet"
    } else {
        "this replica"
    };
    let _ = writeln!(out, "savings over the last {hours} h ({scope})");
    let row = |out: &mut String, g: &pb::SavingsGroup| {
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>12} {:>12} {:>12} {:>8.1}% {:>12} {:>8.1}% {:>5.2}/{:.2}",
            g.name,
            g.requests,
            format!("{:.4}", g.cost_usd),
            format!("{:.4}", g.strongest_cost_usd),
            format!("{:.4}", g.savings_vs_strongest_usd),
            g.savings_vs_strongest_percent,
            format!("{:.4}", g.savings_vs_default_usd),
            g.savings_vs_default_percent,
            g.quality,
            g.strongest_quality,
        );
    };
    let head = format!(
        "{:<24} {:>8} {:>12} {:>12} {:>12} {:>9} {:>12} {:>9} {:>11}\n",
        "", "requests", "spent USD", "strongest", "saved", "saved %", "vs default", "%", "quality"
    );
    out.push_str(&head);
    if let Some(t) = &r.total {
        row(&mut out, t);
    }
    for (name, groups) in sections(r) {
        let _ = writeln!(out, "\nby {name}");
        for g in groups {
            row(&mut out, g);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars: what each group spent beside what the strongest backend would have cost.
fn bars(groups: &[pb::SavingsGroup]) -> String {
    let max = groups
        .iter()
        .map(|g| g.strongest_cost_usd.max(g.cost_usd))
        .fold(0.0, f64::max)
        .max(1e-12);
    let (row_h, w) = (34.0, 420.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{}" role="img">"#,
        row_h * groups.len() as f64 + 10.0
    );
    for (i, g) in groups.iter().enumerate() {
        let y = i as f64 * row_h + 5.0;
        let _ = write!(
            svg,
            r##"<text x="0" y="{ty}" font-size="12">{name}</text><rect x="170" y="{y}" width="{sw:.1}" height="12" fill="#c9ced6"/><rect x="170" y="{y2}" width="{cw:.1}" height="12" fill="#2f7d4f"/><text x="{tx:.1}" y="{ty}" font-size="12">{spent:.4} of {strong:.4} USD ({pct:.1}% saved)</text>"##,
            ty = y + 16.0,
            name = escape(if g.name.is_empty() { "(none)" } else { &g.name }),
            sw = g.strongest_cost_usd / max * w,
            y2 = y + 13.0,
            cw = g.cost_usd / max * w,
            tx = 180.0 + w,
            spent = g.cost_usd,
            strong = g.strongest_cost_usd,
            pct = g.savings_vs_strongest_percent,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn page(r: &pb::SavingsReport, hours: u64) -> String {
    let total = r.total.clone().unwrap_or_default();
    let mut body = format!(
        "<h1>What routing saved</h1><p>Last {hours} h, {scope}: {n} completions cost \
         <b>{spent:.4} USD</b>; on the strongest backend for each prompt they would have cost \
         {strong:.4} USD (<b>{pct:.1}% saved</b>, mean quality estimate {q:.2} vs {sq:.2}); on \
         the policy's default backend {def:.4} USD ({dpct:.1}% saved).</p>",
        scope = if r.fleet_wide {
            "whole fleet"
        } else {
            "this replica"
        },
        n = total.requests,
        spent = total.cost_usd,
        strong = total.strongest_cost_usd,
        pct = total.savings_vs_strongest_percent,
        q = total.quality,
        sq = total.strongest_quality,
        def = total.default_cost_usd,
        dpct = total.savings_vs_default_percent,
    );
    for (name, groups) in sections(r) {
        let _ = write!(body, "<h2>By {name}</h2>{}", bars(groups));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>switchboard savings</title>\
         <style>body{{font-family:sans-serif;max-width:800px;margin:2em auto}}</style></head>\
         <body>{body}<p><small>Grey: the strongest backend's cost; green: what was spent.\
         </small></p></body></html>\n"
    )
}
