//! Small self-contained SVG charts for the benchmark reports: no fonts or scripts to fetch, so
//! they render the same in a browser, an editor's preview and a Git host.

use std::fmt::Write as _;

/// Series colours, in order (colour-blind safe).
pub(crate) const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One series of a bar chart: its name and a value per group (`None`: not measured).
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) values: Vec<Option<f64>>,
}

/// The start of a `w` by `h` chart: the `<svg>` element, a white background and the title.
/// The caller closes it with `</svg>`.
pub(crate) fn open(w: f64, h: f64, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#fff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"##,
        w / 2.0,
        esc(title)
    );
    s
}

/// XML text with `&`, `<` and `>` escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart: one group of bars per entry of `groups`, one bar per series, each bar
/// labelled with its value (`digits` decimals) and a missing value marked "not measured".
pub(crate) fn bars(
    title: &str,
    unit: &str,
    groups: &[String],
    series: &[Series<'_>],
    digits: usize,
) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 60.0, 50.0);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Five gridlines at round steps, with room above the tallest bar for its label.
    let step = nice_step(max * 1.1 / 5.0);
    let max = step * 5.0;
    let plot_w = w - left - right;
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    let y = |v: f64| h - bottom - v / max * (h - top - bottom);
    let mut s = open(w, h, title);
    for i in 0..=5 {
        let v = step * f64::from(i);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            w - right,
            left - 6.0,
            y(v) + 4.0,
            axis_label(v, max)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#000"/><line x1="{left}" y1="{top}" x2="{left}" y2="{0}" stroke="#000"/>"##,
        h - bottom,
        w - right
    );
    let _ = writeln!(
        s,
        r##"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"##,
        h / 2.0,
        esc(unit)
    );
    for (g, name) in groups.iter().enumerate() {
        let x0 = left + group_w * g as f64 + group_w * 0.1;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            left + group_w * (g as f64 + 0.5),
            h - bottom + 18.0,
            esc(name)
        );
        for (i, serie) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let x = x0 + bar_w * i as f64;
            let cx = x + bar_w / 2.0;
            match serie.values.get(g).copied().flatten() {
                Some(v) if v.is_finite() => {
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="11">{v:.digits$}</text>"##,
                        y(v),
                        bar_w * 0.92,
                        h - bottom - y(v),
                        y(v) - 4.0
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{cx:.1}" y="{:.1}" font-size="11" fill="#888" transform="rotate(-90 {cx:.1} {:.1})">not measured</text>"##,
                        h - bottom - 8.0,
                        h - bottom - 8.0
                    );
                }
            }
        }
    }
    // The legend, when there is more than one series.
    if series.len() > 1 {
        let mut x = left;
        for (i, serie) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="34" width="12" height="12" fill="{color}"/><text x="{:.1}" y="44">{}</text>"##,
                x + 16.0,
                esc(serie.name)
            );
            x += 28.0 + 7.0 * serie.name.len() as f64;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// The round step (1, 2 or 5 times a power of ten) at or above `raw`; 1 for nothing to show.
fn nice_step(raw: f64) -> f64 {
    if !(raw > 0.0 && raw.is_finite()) {
        return 0.2;
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

/// A tick label: whole numbers once the axis reaches 10, else one or two decimals.
fn axis_label(v: f64, max: f64) -> String {
    if max >= 10.0 {
        format!("{v:.0}")
    } else if max >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(28.6), 50.0);
        assert_eq!(nice_step(17.0), 20.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(100.0), 100.0);
        assert_eq!(nice_step(0.0), 0.2);
    }

    #[test]
    fn bars_draw_every_value_and_mark_the_missing_ones() {
        let svg = bars(
            "Speed <tok/s>",
            "tokens/s",
            &["GGUF".into(), "APR".into()],
            &[
                Series {
                    name: "decode",
                    values: vec![Some(36.5), None],
                },
                Series {
                    name: "prefill",
                    values: vec![Some(137.26), Some(20.0)],
                },
            ],
            1,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("Speed &lt;tok/s&gt;"));
        // Three bars with their values, one missing value, and a legend of two.
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 2);
        for label in [
            ">36.5<",
            ">137.3<",
            ">20.0<",
            ">not measured<",
            ">decode<",
            ">prefill<",
        ] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
    }
}
