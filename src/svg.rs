//! Hand-written SVG plots, without any plotting crate: the one writer of the SVG files lpzero
//! makes (search curves, rank scatter plots, bar charts of correlations) and the one escaper of
//! the text they show. Plain SVG 1.1: axes, "nice" ticks, labels and a legend or a subtitle.

use std::fmt::Write as _;

use crate::stats::{kendall_tau_b, ranks, sanitize, spearman};

/// The start of an SVG document of `width` × `height` pixels on a white background (close it
/// with [`close`]).
pub fn open(width: f64, height: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    s
}

/// Ends an SVG document begun with [`open`].
pub fn close(mut s: String) -> String {
    s.push_str("</svg>\n");
    s
}

/// Escapes text for SVG content and attributes (`&`, `<`, `>`, `"`, `'`).
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// About `target` evenly spaced "nice" tick values (steps 1, 2 or 5 × 10ᵏ) covering [lo, hi].
///
/// Tick `k` is computed as `k·m / 10⁻ᵉ` (or `k·m·10ᵉ`), so decimal ticks such as 0.6 are the
/// closest doubles, not accumulated sums like 0.6000000000000001.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let e = raw.log10().floor() as i32;
    let mag = 10f64.powi(e);
    let m = [1.0, 2.0, 5.0]
        .into_iter()
        .find(|m| m * mag >= raw)
        .unwrap_or(10.0);
    let tick = |k: f64| {
        if e < 0 {
            k * m / 10f64.powi(-e)
        } else {
            k * m * mag
        }
    };
    let step = tick(1.0);
    let first = (lo / step).ceil();
    let mut out = Vec::new();
    for i in 0..=100 {
        let v = tick(first + i as f64);
        if v > hi + step * 1e-9 {
            break;
        }
        out.push(if v == 0.0 { 0.0 } else { v });
    }
    out
}

/// A tick label with as few decimals as the step needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || step <= 0.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 10.0) as usize
    };
    format!("{v:.decimals$}")
}

/// A data range padded a little and never empty.
pub fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Plot frame: a canvas with margins and linear maps from data to pixels.
pub struct Frame {
    /// Canvas width in pixels.
    pub width: f64,
    /// Canvas height in pixels.
    pub height: f64,
    /// Left margin.
    pub left: f64,
    /// Right margin.
    pub right: f64,
    /// Top margin.
    pub top: f64,
    /// Bottom margin.
    pub bottom: f64,
    /// Data range shown along x.
    pub x: (f64, f64),
    /// Data range shown along y.
    pub y: (f64, f64),
}

impl Frame {
    /// The pixel column of data value `x`.
    pub fn px(&self, x: f64) -> f64 {
        let w = self.width - self.left - self.right;
        self.left + (x - self.x.0) / (self.x.1 - self.x.0) * w
    }

    /// The pixel row of data value `y`.
    pub fn py(&self, y: f64) -> f64 {
        let h = self.height - self.top - self.bottom;
        self.height - self.bottom - (y - self.y.0) / (self.y.1 - self.y.0) * h
    }

    /// SVG header, title, axes with ticks and tick labels, and axis labels.
    pub fn open(
        &self,
        title: &str,
        subtitle: Option<&str>,
        x_label: &str,
        y_label: &str,
    ) -> String {
        let (w, h) = (self.width, self.height);
        let mut s = open(w, h);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            escape(title)
        );
        if let Some(sub) = subtitle {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="37" text-anchor="middle" fill="#444">{}</text>"##,
                w / 2.0,
                escape(sub)
            );
        }
        let (x0, x1) = (self.left, w - self.right);
        let (y0, y1) = (h - self.bottom, self.top);
        let _ = writeln!(
            s,
            r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" fill="none" stroke="black"/>"#
        );
        let xt = nice_ticks(self.x.0, self.x.1, 8);
        let xstep = if xt.len() > 1 { xt[1] - xt[0] } else { 1.0 };
        for v in xt {
            let p = self.px(v);
            let _ = writeln!(
                s,
                r##"<line x1="{p:.1}" y1="{y0}" x2="{p:.1}" y2="{}" stroke="black"/><line x1="{p:.1}" y1="{y1}" x2="{p:.1}" y2="{y0}" stroke="#eee"/><text x="{p:.1}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + 5.0,
                y0 + 19.0,
                tick_label(v, xstep)
            );
        }
        let yt = nice_ticks(self.y.0, self.y.1, 6);
        let ystep = if yt.len() > 1 { yt[1] - yt[0] } else { 1.0 };
        for v in yt {
            let p = self.py(v);
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{p:.1}" x2="{x0}" y2="{p:.1}" stroke="black"/><line x1="{x0}" y1="{p:.1}" x2="{x1}" y2="{p:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 5.0,
                x0 - 8.0,
                p + 4.0,
                tick_label(v, ystep)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            h - 15.0,
            escape(x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            escape(y_label)
        );
        s
    }
}

/// A Pareto plot: every point at (cost, score) in grey, the points of `front` (indices into
/// `points`) in colour and joined in cost order, and a dashed vertical line at the cost
/// `budget` when given. Non-finite points are left out.
pub fn pareto(
    points: &[(f64, f64)],
    front: &[usize],
    budget: Option<f64>,
    title: &str,
    subtitle: &str,
    (x_label, y_label): (&str, &str),
) -> String {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let frame = Frame {
        width: 640.0,
        height: 480.0,
        left: 80.0,
        right: 25.0,
        top: 55.0,
        bottom: 55.0,
        x: padded_range(
            points
                .iter()
                .filter(finite)
                .map(|p| p.0)
                .chain(budget.filter(|b| b.is_finite())),
        ),
        y: padded_range(points.iter().filter(finite).map(|p| p.1)),
    };
    let mut s = frame.open(title, Some(subtitle), x_label, y_label);
    if let Some(b) = budget.filter(|b| b.is_finite()) {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="4 4"/>"##,
            frame.py(frame.y.0),
            frame.py(frame.y.1),
            x = frame.px(b)
        );
    }
    for p in points.iter().filter(finite) {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#999" fill-opacity="0.6"/>"##,
            frame.px(p.0),
            frame.py(p.1)
        );
    }
    let mut on_front: Vec<(f64, f64)> = front
        .iter()
        .filter_map(|&i| points.get(i).copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    on_front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    if on_front.len() > 1 {
        let path: Vec<String> = on_front
            .iter()
            .map(|p| format!("{:.1},{:.1}", frame.px(p.0), frame.py(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#d62728" stroke-width="1.5"/>"##,
            path.join(" ")
        );
    }
    for p in &on_front {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##,
            frame.px(p.0),
            frame.py(p.1)
        );
    }
    close(s)
}

/// A rank scatter plot of proxy scores against ground truth: one point per architecture at
/// (rank of its truth, rank of its score), ranks 1 = lowest, ties averaged; non-finite scores
/// rank last. The subtitle gives Spearman ρ, Kendall τ and n; a dashed diagonal marks perfect
/// agreement.
///
/// # Panics
/// If `truth` and `scores` have different lengths.
pub fn scatter(truth: &[f64], scores: &[f64], title: &str) -> String {
    assert_eq!(truth.len(), scores.len(), "svg::scatter: lengths differ");
    let n = truth.len();
    let (clean, _) = sanitize(scores);
    let (rt, rs) = (ranks(truth), ranks(&clean));
    let subtitle = format!(
        "Spearman ρ = {:.3}, Kendall τ = {:.3}, n = {n}",
        spearman(truth, &clean),
        kendall_tau_b(truth, &clean)
    );
    let hi = (n.max(1)) as f64 + 0.5;
    let frame = Frame {
        width: 520.0,
        height: 520.0,
        left: 70.0,
        right: 25.0,
        top: 55.0,
        bottom: 55.0,
        x: (0.5, hi),
        y: (0.5, hi),
    };
    let mut s = frame.open(
        title,
        Some(&subtitle),
        "ground-truth rank (higher = better)",
        "proxy score rank",
    );
    let _ = writeln!(
        s,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
        frame.px(0.5),
        frame.py(0.5),
        frame.px(hi),
        frame.py(hi)
    );
    for (x, y) in rt.iter().zip(&rs) {
        if x.is_finite() && y.is_finite() {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#1f77b4" fill-opacity="0.7"/>"##,
                frame.px(*x),
                frame.py(*y)
            );
        }
    }
    close(s)
}

/// A horizontal bar chart of values in [−1, 1], one bar per label (NaN: no bar, marked).
pub fn bar_chart(title: &str, bars: &[(String, f64)]) -> String {
    let (left, width, row, top) = (200.0, 400.0, 22.0, 40.0);
    let height = top + row * bars.len() as f64 + 40.0;
    let zero = left + width / 2.0;
    let mut svg = open(left + width + 80.0, height);
    svg.push_str(&format!(
        "<text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    ));
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + 14.0,
            escape(label)
        ));
        if v.is_finite() {
            let v = v.clamp(-1.0, 1.0);
            let len = v.abs() * width / 2.0;
            let x = if v >= 0.0 { zero } else { zero - len };
            let colour = if v >= 0.0 { "#3b7dd8" } else { "#d8703b" };
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{len:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\">{v:.3}</text>\n",
                y + 3.0,
                row - 6.0,
                left + width + 6.0,
                y + 14.0
            ));
        } else {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\">NaN</text>\n",
                left + width + 6.0,
                y + 14.0
            ));
        }
    }
    let axis_bottom = top + row * bars.len() as f64;
    svg.push_str(&format!(
        "<line x1=\"{zero}\" y1=\"{top}\" x2=\"{zero}\" y2=\"{axis_bottom}\" stroke=\"black\"/>\n"
    ));
    for (tick, label) in [
        (-1.0, "−1"),
        (-0.5, "−0.5"),
        (0.0, "0"),
        (0.5, "0.5"),
        (1.0, "1"),
    ] {
        let x = zero + tick * width / 2.0;
        svg.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            axis_bottom + 16.0
        ));
    }
    close(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        let t = nice_ticks(-0.13, 0.92, 6);
        assert_eq!(t, vec![0.0, 0.2, 0.4, 0.6, 0.8]);
        assert!(t.iter().all(|v| (-0.13..=0.92).contains(v)), "{t:?}");
        assert_eq!(tick_label(0.6000000001, 0.2), "0.6");
        assert_eq!(tick_label(400.0, 100.0), "400");
        assert_eq!(nice_ticks(3.0, 3.0, 5), vec![3.0]);
    }

    #[test]
    fn scatter_is_well_formed_and_escaped() {
        let truth = [1.0, 2.0, 3.0, 4.0];
        let svg = scatter(&truth, &[0.1, f64::NAN, 0.3, 0.4], "a <b> & \"c\"");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(svg.contains("Spearman ρ = "));
        scatter(&[], &[], "empty");
    }

    #[test]
    fn bar_chart_marks_nan_and_escapes() {
        let svg = bar_chart("a<b \"q\"", &[("x".into(), 0.5), ("y".into(), f64::NAN)]);
        assert!(svg.contains("a&lt;b &quot;q&quot;"));
        assert!(svg.contains("NaN"));
        assert!(svg.contains("0.500"));
        // The background and one bar.
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
