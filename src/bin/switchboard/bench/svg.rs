//! A line chart as a standalone SVG, for the soak run's resident memory and p99 over time.
//! Hand-written: two polylines, axes and labels are all the chart needs.
use std::fmt::Write;

/// One series: its title, unit, and (x, y) points.
pub struct Series<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 720.0;
const PANEL_H: f64 = 200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const GAP: f64 = 60.0;

/// Stacked panels, one per series, sharing the x axis (`x_label`).
pub fn chart(title: &str, x_label: &str, series: &[Series<'_>]) -> String {
    let height = TOP + series.len() as f64 * (PANEL_H + GAP);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    let x_max = series
        .iter()
        .flat_map(|p| p.points.iter().map(|q| q.0))
        .fold(1.0_f64, f64::max);
    for (i, ser) in series.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP);
        panel(&mut s, ser, top, x_max, x_label);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, ser: &Series<'_>, top: f64, x_max: f64, x_label: &str) {
    let y_max = ser.points.iter().map(|p| p.1).fold(0.0_f64, f64::max) * 1.15;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let (plot_w, bottom) = (W - LEFT - RIGHT, top + PANEL_H);
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| bottom - v / y_max * PANEL_H;
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#999"/>"##
    );
    for k in 0..=4 {
        let v = y_max * k as f64 / 4.0;
        let (right, at, label_x) = (LEFT + plot_w, y(v), LEFT - 6.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{right}" y1="{at:.1}" y2="{at:.1}" stroke="#eee"/><text x="{label_x}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            at + 4.0
        );
    }
    for k in 0..=6 {
        let v = x_max * k as f64 / 6.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.0}</text>"#,
            x(v),
            bottom + 16.0
        );
    }
    let pts: Vec<String> = (ser.points.iter())
        .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>"##,
        pts.join(" ")
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}">{} ({})</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        top - 6.0,
        escape(ser.title),
        escape(ser.unit),
        LEFT + plot_w / 2.0,
        bottom + 32.0,
        escape(x_label)
    );
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
