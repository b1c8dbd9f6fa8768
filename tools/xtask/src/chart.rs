//! Benchmark results as a self-contained SVG: grouped bar charts, one panel
//! per metric, stacked vertically, built as a plain string.
//!
//! Any input renders: missing, non-finite and (on a log axis) non-positive
//! values show as "n/a", short vectors count as missing, empty panels say so.
//!
//! Why not a plotting crate (evaluated 2026-12-07, issue 13): plotters
//! 0.3.7 (crates.io, not in ../shared/docs/crates.md; `default-features =
//! false, features = ["svg_backend"]`, with its naive font metrics) would
//! replace the tick arithmetic (`linear_ticks`, `log_ticks`), the escaping
//! and the four element writers: about 100 of the ~330 lines of drawing
//! code; the tests of those go with them. Everything that carries the
//! chart's information stays hand-written on top of it, because plotters
//! has no grouped bar series: the bar positions inside each group, the
//! value label above each bar with "n/a" for a missing one, the min-max
//! error bars, the legend that wraps, the category labels wrapped to their
//! slot, the panel stacking and `compact`'s SI labels (also used for
//! ticks). Its SVG backend writes no `<title>` elements, so the hover
//! tooltip with each bar's exact value would be lost. Not much smaller and
//! not as good: kept.

use std::fmt::Write;

/// One series of a grouped bar chart (e.g. "ours", "kernel io_uring").
#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    pub(crate) name: String,
    /// One value per category; None = not measured.
    pub(crate) values: Vec<Option<f64>>,
}

/// One bar chart: a y axis, categories along x, a bar per series in each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Panel {
    /// E.g. "IOPS per job (higher is better)".
    pub(crate) title: String,
    /// Y axis label, e.g. "IOPS" or "µs".
    pub(crate) unit: String,
    /// X groups, e.g. job names.
    pub(crate) categories: Vec<String>,
    pub(crate) series: Vec<Series>,
    /// `[series][category]` min/max of repeats, drawn as error bars; may be empty.
    pub(crate) spread: Vec<Vec<Option<(f64, f64)>>>,
    /// log10 y axis (values must be > 0; non-positive drawn as missing).
    pub(crate) log_scale: bool,
}

const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];
const LEFT: f64 = 80.0; // the plot's left edge, after the unit and tick labels
const RIGHT: f64 = 30.0;
const BAR: f64 = 36.0; // wide enough for a value label like "29.6k"
const BAR_GAP: f64 = 2.0;
const GROUP_GAP: f64 = 28.0;
const PLOT_H: f64 = 240.0;
const CHAR_W: f64 = 6.5; // rough width of an 11px sans-serif character
const MAX_LINES: usize = 3; // category labels wrap to at most this many lines
const SUBTITLE: &str = r##" font-size="12" fill="#555""##;
const GRAY: &str = r##" fill="#999""##;
const TICK: &str = r#" text-anchor="end""#;
const VALUE: &str = r#" text-anchor="middle" font-size="10""#;
const NA: &str = r##" text-anchor="middle" font-size="9" fill="#999""##;

/// Renders the panels stacked vertically into one SVG document.
pub(crate) fn render(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for s in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let ncat = panels.iter().map(|p| p.categories.len()).max().unwrap_or(0);
    let nser = panels.iter().map(|p| p.series.len()).max().unwrap_or(0);
    let group_w = nser as f64 * (BAR + BAR_GAP) + GROUP_GAP;
    let width = (LEFT + RIGHT + ncat as f64 * group_w).max(800.0);

    let mut body = String::new();
    let bold = |size: u32| format!(r#" font-size="{size}" font-weight="bold""#);
    text(&mut body, LEFT, 28.0, &bold(18), title);
    text(&mut body, LEFT, 48.0, SUBTITLE, subtitle);
    // Legend entries flow left to right and wrap.
    let (mut x, mut y) = (LEFT, 70.0);
    for name in &names {
        let w = 44.0 + text_width(name);
        if x + w > width - RIGHT && x > LEFT {
            (x, y) = (LEFT, y + 20.0);
        }
        rect(
            &mut body,
            (x, y - 11.0),
            (14.0, 14.0),
            color(&names, name),
            "",
        );
        text(&mut body, x + 20.0, y, "", name);
        x += w;
    }
    y += 20.0;
    for p in panels {
        text(&mut body, LEFT, y + 20.0, &bold(14), &p.title);
        y += draw_panel(&mut body, p, y, width, &names);
    }
    let (w, h) = (num(width), num(y + 10.0));
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>{body}</svg>"#
    ) + "\n"
}

/// Draws a panel's plot below its title at `top`; returns the panel's height.
fn draw_panel(out: &mut String, p: &Panel, top: f64, width: f64, names: &[&str]) -> f64 {
    let (y0, y1) = (top + 44.0, top + 44.0 + PLOT_H); // plot area, top and bottom
    let ncat = p.categories.len();
    if ncat == 0 || p.series.is_empty() {
        text(out, width / 2.0, top + 50.0, GRAY, "no data");
        return 70.0;
    }
    let value = |s: usize, c: usize| -> Option<f64> {
        let v = p.series.get(s)?.values.get(c).copied().flatten()?;
        (v.is_finite() && (!p.log_scale || v > 0.0)).then_some(v)
    };
    let spread = |s: usize, c: usize| -> Option<(f64, f64)> {
        let (a, b) = p.spread.get(s)?.get(c).copied().flatten()?;
        let ok = |v: f64| v.is_finite() && (!p.log_scale || v > 0.0);
        (ok(a) && ok(b)).then_some((a.min(b), a.max(b)))
    };
    let cells = (0..p.series.len()).flat_map(|s| (0..ncat).map(move |c| (s, c)));
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (s, c) in cells {
        let (a, b) = spread(s, c).unzip();
        for v in [value(s, c), a, b].into_iter().flatten() {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
    }
    let ticks = if p.log_scale {
        log_ticks(lo, hi)
    } else {
        linear_ticks(lo, hi)
    };
    let tr = |v: f64| if p.log_scale { v.log10() } else { v };
    let (t0, t1) = match (ticks.first(), ticks.last()) {
        (Some(&a), Some(&b)) => (tr(a), tr(b)),
        _ => (0.0, 1.0),
    };
    let ypos = |v: f64| {
        let t = (tr(v) - t0) / (t1 - t0);
        let t = if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        };
        y1 - PLOT_H * t
    };
    for &t in &ticks {
        line(out, (LEFT, ypos(t)), (width - RIGHT, ypos(t)), "#ddd");
        text(out, LEFT - 6.0, ypos(t) + 4.0, TICK, &compact(t));
    }
    let mid = num((y0 + y1) / 2.0);
    let rot = format!(r#" transform="rotate(-90 18 {mid})" text-anchor="middle" font-size="12""#);
    text(out, 18.0, (y0 + y1) / 2.0, &rot, &p.unit);
    line(out, (LEFT, y0), (LEFT, y1), "#333");

    let slot = (width - LEFT - RIGHT) / ncat as f64;
    let bars_w = p.series.len() as f64 * (BAR + BAR_GAP) - BAR_GAP;
    let base = if p.log_scale { y1 } else { ypos(0.0) };
    for c in 0..ncat {
        let gx = LEFT + slot * c as f64 + (slot - bars_w) / 2.0;
        for (s, ser) in p.series.iter().enumerate() {
            let x = gx + s as f64 * (BAR + BAR_GAP);
            let cx = x + BAR / 2.0;
            let mut label_y = base;
            if let Some(v) = value(s, c) {
                let yv = ypos(v);
                let tip = format!("{}: {v}", ser.name);
                let fill = color(names, &ser.name);
                rect(out, (x, yv.min(base)), (BAR, (yv - base).abs()), fill, &tip);
                label_y = label_y.min(yv);
            }
            if let Some((a, b)) = spread(s, c) {
                let (ya, yb) = (ypos(a), ypos(b));
                line(out, (cx, ya), (cx, yb), "#222");
                line(out, (cx - 5.0, ya), (cx + 5.0, ya), "#222");
                line(out, (cx - 5.0, yb), (cx + 5.0, yb), "#222");
                label_y = label_y.min(yb);
            }
            match value(s, c) {
                Some(v) => text(out, cx, label_y - 4.0, VALUE, &compact(v)),
                None => text(out, cx, label_y - 4.0, NA, "n/a"),
            }
        }
    }
    line(out, (LEFT, base), (width - RIGHT, base), "#333");

    // Category labels, wrapped to their slot's width.
    let mut lines = 1;
    for (c, label) in p.categories.iter().enumerate() {
        let wrapped = wrap(label, ((slot - 6.0) / CHAR_W) as usize);
        for (i, l) in wrapped.iter().enumerate() {
            let cx = LEFT + slot * (c as f64 + 0.5);
            text(
                out,
                cx,
                y1 + 16.0 + 13.0 * i as f64,
                r#" text-anchor="middle""#,
                l,
            );
        }
        lines = lines.max(wrapped.len());
    }
    y1 - top + 13.0 * lines as f64 + 20.0
}

/// The color of series `name`: the index of its first appearance, so the same in every panel.
fn color(names: &[&str], name: &str) -> &'static str {
    let i = names.iter().position(|n| *n == name).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// Appends a text element; `attrs` is empty or starts with a space.
fn text(out: &mut String, x: f64, y: f64, attrs: &str, s: &str) {
    let (x, y, s) = (num(x), num(y), esc(s));
    let _ = write!(out, r#"<text x="{x}" y="{y}"{attrs}>{s}</text>"#);
}

fn line(out: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) {
    let (x1, y1, x2, y2) = (num(x1), num(y1), num(x2), num(y2));
    let _ = write!(
        out,
        r#"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{stroke}"/>"#
    );
}

/// Appends a rectangle, with a hover tooltip unless `tip` is empty.
fn rect(out: &mut String, (x, y): (f64, f64), (w, h): (f64, f64), fill: &str, tip: &str) {
    let (x, y, w, h) = (num(x), num(y), num(w), num(h));
    let _ = write!(
        out,
        r#"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}""#
    );
    match tip {
        "" => out.push_str("/>"),
        _ => _ = write!(out, "><title>{}</title></rect>", esc(tip)),
    }
}

/// Ticks in 1-2-5 steps, about 5 intervals, covering `lo`, `hi` and zero (0..1 if none).
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo < hi {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let raw = hi / 5.0 - lo / 5.0; // not (hi - lo) / 5, which may overflow
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = [1.0, 2.0, 5.0].into_iter().find(|&m| norm <= m * 1.000_001);
    let step = mag * m.unwrap_or(10.0);
    if !step.is_finite() || step <= 0.0 {
        return vec![0.0, 1.0];
    }
    let first = (lo / step).floor();
    let n = ((hi / step).ceil() - first).clamp(1.0, 20.0) as usize;
    (0..=n).map(|i| (first + i as f64) * step).collect()
}

/// Decades from at or below `lo` to at or above `hi` (both > 0), at most 11 ticks.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) {
        return vec![1.0, 10.0];
    }
    // Clamped so that even a step past `b` stays a normal, finite f64.
    // The bottom decade is below `lo`, so that no bar has zero height.
    let a = ((lo.log10() - 1e-9).floor() as i32).clamp(-250, 249);
    let b = (hi.log10().ceil() as i32).clamp(a + 1, 250);
    let step = (b - a + 9) / 10; // at most 10 intervals
    let mut out = vec![10f64.powi(a)];
    let mut k = a;
    while k < b {
        k += step;
        out.push(10f64.powi(k));
    }
    out
}

/// Three significant digits with an SI suffix: 29.6k, 1.48G, 51.2, 0.0123.
fn compact(v: f64) -> String {
    let a = v.abs();
    let sign = if v < 0.0 { "-" } else { "" };
    if !v.is_finite() {
        return "n/a".into();
    } else if v == 0.0 {
        return "0".into();
    } else if !(1e-3..1e15).contains(&a) {
        let s = format!("{a:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{sign}{}e{e}", trim(m));
    }
    let suffixes = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    // 999.96 rounds to 1000 with three digits, so it is 1k.
    let found = suffixes.into_iter().find(|(d, _)| a >= d * 0.9995);
    let (div, suffix) = found.unwrap_or((1.0, ""));
    let x = a / div;
    let decimals = (2 - x.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{sign}{}{suffix}", trim(&format!("{x:.decimals$}")))
}

/// Trailing zeros after a decimal point removed, and the point if nothing follows it.
fn trim(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Escapes text for XML content and attributes; drops characters XML 1.0 forbids.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` in lines of at most `max` characters, broken after "-_/ ,:" where possible,
/// and cut with an ellipsis after `MAX_LINES` lines.
fn wrap(s: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let (mut lines, mut cur, mut brk) = (Vec::new(), Vec::<char>::new(), 0);
    for ch in s.chars() {
        if cur.len() >= max {
            let at = if brk > 0 { brk } else { cur.len() };
            lines.push(cur.drain(..at).collect::<String>());
            brk = 0;
        }
        cur.push(ch);
        if "-_/ ,:".contains(ch) {
            brk = cur.len();
        }
    }
    lines.push(cur.into_iter().collect());
    if lines.len() > MAX_LINES {
        lines.truncate(MAX_LINES);
        if let Some(last) = lines.last_mut() {
            last.pop();
            last.push('…');
        }
    }
    lines
}

fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * CHAR_W
}

/// A coordinate: one decimal at most, and 0 instead of NaN or infinity.
fn num(v: f64) -> String {
    let s = format!("{:.1}", if v.is_finite() { v } else { 0.0 });
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Balanced tags, quoted attributes, no markup characters in text, known entities only.
    fn assert_well_formed(svg: &str) {
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        let (mut stack, mut rest) = (Vec::new(), svg);
        while let Some(i) = rest.find('<') {
            assert!(!rest[..i].contains('>'), "stray > in {rest}");
            let end = rest[i..].find('>').expect("unclosed tag") + i;
            let tag = &rest[i + 1..end];
            assert!(
                !tag.contains('<') && tag.matches('"').count() % 2 == 0,
                "{tag}"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
            } else if !tag.ends_with('/') {
                stack.push(tag.split_whitespace().next().unwrap_or(""));
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        for (i, _) in svg.match_indices('&') {
            let entities = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
            assert!(
                entities.iter().any(|e| svg[i..].starts_with(e)),
                "bare & at {i}"
            );
        }
    }

    fn panel(series: &[(&str, Vec<Option<f64>>)], categories: &[&str], log_scale: bool) -> Panel {
        Panel {
            title: "IOPS per job (higher is better)".into(),
            unit: if log_scale { "µs" } else { "IOPS" }.into(),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            series: series
                .iter()
                .map(|(n, v)| Series {
                    name: n.to_string(),
                    values: v.clone(),
                })
                .collect(),
            spread: Vec::new(),
            log_scale,
        }
    }

    #[test]
    fn linear_ticks_step_1_2_5() {
        assert_eq!(linear_ticks(0.0, 29600.0), [0.0, 10000.0, 20000.0, 30000.0]);
        assert_eq!(linear_ticks(3.0, 9.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            linear_ticks(0.0, 100.0),
            [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(
            linear_ticks(-20.0, 5.0),
            [-20.0, -15.0, -10.0, -5.0, 0.0, 5.0]
        );
        assert_eq!(linear_ticks(0.0, 0.0).len(), 6); // 0..1 by 0.2
        assert_eq!(linear_ticks(f64::NAN, f64::INFINITY).len(), 6);
        assert!((2..=21).contains(&linear_ticks(-f64::MAX, f64::MAX).len()));
    }

    #[test]
    fn log_ticks_decades() {
        assert_eq!(log_ticks(3.0, 2000.0), [1.0, 10.0, 100.0, 1000.0, 10000.0]);
        assert_eq!(log_ticks(10.0, 10.0), [1.0, 10.0]);
        assert_eq!(log_ticks(0.05, 0.5), [0.01, 0.1, 1.0]);
        assert_eq!(log_ticks(-1.0, 5.0), [1.0, 10.0]);
        let wide = log_ticks(f64::MIN_POSITIVE / 1e10, f64::MAX);
        assert!(
            wide.len() <= 11 && wide.iter().all(|t| t.is_finite() && *t > 0.0),
            "{wide:?}"
        );
    }

    #[test]
    fn compact_numbers() {
        let v = [
            29_600.0, 1.48e9, 51.2, 0.0, 100.0, 1234.0, 2000.0, 999.96, -3.5e6, 0.0123,
        ];
        let got: Vec<String> = v
            .into_iter()
            .chain([2.5e12, 1e-5, 1e15, f64::NAN])
            .map(compact)
            .collect();
        assert_eq!(
            got.join(" "),
            "29.6k 1.48G 51.2 0 100 1.23k 2k 1k -3.5M 0.0123 2.5T 1e-5 1e15 n/a"
        );
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(
            esc(r#"a&b<c>"d"'e'"#),
            "a&amp;b&lt;c&gt;&quot;d&quot;&apos;e&apos;"
        );
        assert_eq!(esc("x\u{1}y\tz µs"), "xy z µs");
    }

    #[test]
    fn wrapping() {
        assert_eq!(
            wrap("randwrite-4k-qd32-numjobs4", 12),
            ["randwrite-", "4k-qd32-", "numjobs4"]
        );
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("abcdefghij", 3), ["abc", "def", "gh…"]);
        assert_eq!(wrap("", 0), [""]);
        assert_eq!(wrap("ab", 0), ["a", "b"]);
    }

    #[test]
    fn degenerate_inputs_render() {
        let mut uneven = panel(
            &[("short", vec![Some(1.0)]), ("long", vec![Some(2.0); 7])],
            &["p", "q"],
            false,
        );
        uneven.spread = vec![
            vec![Some((f64::NAN, 1.0)), Some((5.0, -5.0))],
            vec![],
            vec![None; 9],
        ];
        let panels = [
            Panel::default(),
            panel(&[("ours", vec![])], &[], false),
            panel(&[("zero", vec![Some(0.0), Some(0.0)])], &["a", "b"], false),
            panel(
                &[("<k> & \"co\"", vec![None, None, None])],
                &["a", "b", "c"],
                true,
            ),
            panel(
                &[("nan", vec![Some(f64::NAN), Some(f64::INFINITY), Some(-1.0)])],
                &["x", "y", "z"],
                true,
            ),
            uneven,
        ];
        for panels in [&panels[..], &[], &panels[2..3], &panels[4..5]] {
            assert_well_formed(&render("t & <t>", "", panels));
        }
        let svg = render("t", "s", &panels);
        for name in [
            "ours",
            "zero",
            "&lt;k&gt; &amp; &quot;co&quot;",
            "nan",
            "short",
            "long",
            "n/a",
            "no data",
        ] {
            assert!(svg.contains(&format!(">{name}<")), "{name} missing");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    /// Also leaves target/bench/chart-example.svg to look at.
    #[test]
    fn example_chart() {
        let jobs = [
            "randread-4k-qd1",
            "randread-4k-qd32",
            "seqread-128k-qd8",
            "randwrite-4k-qd32-numjobs4-with-a-long-name",
        ];
        let base = [29_600.0, 410_000.0, 21_000.0, 150_000.0];
        let names = ["ours", "kernel io_uring", "kernel libaio", "kernel psync"];
        let mk = |log_scale: bool, f: &dyn Fn(f64, usize) -> f64| {
            let vals = |s: usize, k: f64| base.iter().map(move |&b| (s < 3).then(|| f(b, s) * k));
            let series: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(s, n)| (*n, vals(s, 1.0).collect()))
                .collect();
            let mut p = panel(&series, &jobs, log_scale);
            p.spread = (0..4)
                .map(|s| {
                    vals(s, 0.9)
                        .zip(vals(s, 1.05))
                        .map(|(a, b)| a.zip(b))
                        .collect()
                })
                .collect();
            p
        };
        let mut panels = [
            mk(false, &|b, s| b / (s + 1) as f64),
            mk(true, &|b, s| 3e7 * (s + 1) as f64 / b),
        ];
        panels[1].title = "p99 latency (lower is better)".into();
        let svg = render(
            "NVMe: userspace driver vs kernel",
            "QEMU emulated device, 3 repeats",
            &panels,
        );
        assert_well_formed(&svg);
        assert!(svg.contains(">29.6k<") && svg.contains(">kernel io_uring<"));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("chart-example.svg"), &svg);
        }
    }
}
