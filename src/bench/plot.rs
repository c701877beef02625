//! The plot of a run (or several): an SVG with two panels against concurrent calls — CPU
//! (cores busy: Asterisk's container, and this generator dashed) and audio loss in percent, with
//! the 1 % line of the criteria. Plain SVG text, no fonts or system libraries needed.

use std::fmt::Write;

use super::BenchReport;

const WIDTH: f64 = 760.0;
const PANEL_H: f64 = 240.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 70.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A "nice" upper bound and tick step for values up to `max`.
fn scale(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

struct Panel<'a> {
    top: f64,
    title: &'a str,
    y_max: f64,
    y_step: f64,
    x_max: f64,
    x_step: f64,
}

impl Panel<'_> {
    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL_H - v.min(self.y_max) / self.y_max * PANEL_H
    }

    fn axes(&self, svg: &mut String) {
        let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, self.top, self.top + PANEL_H);
        let _ = writeln!(svg, r#"<text x="{x0}" y="{}" font-size="14">{}</text>"#, y0 - 10.0, escape(self.title));
        let mut v = 0.0;
        while v <= self.y_max + 1e-9 {
            let y = self.y(v);
            let _ = writeln!(svg, r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
                x0 - 6.0,
                y + 4.0,
                trim(v)
            );
            v += self.y_step;
        }
        let mut v = 0.0;
        while v <= self.x_max + 1e-9 {
            let x = self.x(v);
            let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="#000"/>"##, y1 + 4.0);
            let _ = writeln!(
                svg,
                r#"<text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
                y1 + 17.0,
                trim(v)
            );
            v += self.x_step;
        }
        let _ = writeln!(svg, r##"<polyline points="{x0},{y0} {x0},{y1} {x1},{y1}" fill="none" stroke="#000"/>"##);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">concurrent calls</text>"#,
            (x0 + x1) / 2.0,
            y1 + 33.0
        );
    }

    fn series(&self, svg: &mut String, points: &[(f64, f64)], colour: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let line: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y))).collect();
        let dash = if dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            line.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#, self.x(*x), self.y(*y));
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The SVG text for `reports` (one colour per run, e.g. one per kind).
pub fn svg(reports: &[BenchReport]) -> String {
    let x_max_raw = reports.iter().flat_map(|r| r.levels.iter().map(|l| f64::from(l.calls))).fold(0.0, f64::max);
    let cpu_max = reports
        .iter()
        .flat_map(|r| r.levels.iter())
        .flat_map(|l| [l.asterisk_cpu.map(|c| c.cores), l.generator_cpu.map(|c| c.cores)])
        .flatten()
        .fold(0.0, f64::max);
    let loss_max = reports.iter().flat_map(|r| r.levels.iter().map(|l| l.loss_percent)).fold(2.0, f64::max);
    let (x_max, x_step) = scale(x_max_raw);
    let (cpu_top, cpu_step) = scale(cpu_max);
    let (loss_top, loss_step) = scale(loss_max);
    let cpu = Panel {
        top: TOP,
        title: "CPU, cores busy (solid: Asterisk; dashed: astrtc bench)",
        y_max: cpu_top,
        y_step: cpu_step,
        x_max,
        x_step,
    };
    let loss =
        Panel { top: TOP + PANEL_H + GAP, title: "audio lost, %", y_max: loss_top, y_step: loss_step, x_max, x_step };
    let height = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    cpu.axes(&mut s);
    loss.axes(&mut s);
    let limit = loss.y(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{limit:.1}" x2="{}" y2="{limit:.1}" stroke="#888" stroke-dasharray="2,3"/>"##,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{:.1}" font-size="10" fill="#888">1 % limit</text>"##,
        WIDTH - RIGHT + 4.0,
        limit + 3.0
    );
    for (i, r) in reports.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = |f: &dyn Fn(&super::LevelReport) -> Option<f64>| -> Vec<(f64, f64)> {
            r.levels.iter().filter_map(|l| f(l).map(|v| (f64::from(l.calls), v))).collect()
        };
        cpu.series(&mut s, &pts(&|l| l.asterisk_cpu.map(|c| c.cores)), colour, false);
        cpu.series(&mut s, &pts(&|l| l.generator_cpu.map(|c| c.cores)), colour, true);
        loss.series(&mut s, &pts(&|l| Some(l.loss_percent)), colour, false);
        let cap = r.capacity.map(|c| format!(", capacity {c}")).unwrap_or_else(|| ", no level carried".into());
        let y = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{colour}"/>"#,
            WIDTH - RIGHT + 10.0,
            y - 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{y}" font-size="11">{}{}</text>"#,
            WIDTH - RIGHT + 26.0,
            r.kind.name(),
            escape(&cap)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{figures, CpuFigures, Criteria, Kind};

    #[test]
    fn scales_are_round() {
        assert_eq!(scale(0.83), (1.0, 0.2));
        assert_eq!(scale(430.0), (500.0, 100.0));
        assert_eq!(scale(0.0), (1.0, 0.2));
    }

    #[test]
    fn the_plot_is_one_svg_with_a_series_per_run() {
        let mut level = figures(&[], 50, false);
        let window = std::time::Duration::from_secs(10);
        level.asterisk_cpu = CpuFigures::new(std::time::Duration::from_secs(3), window, 50, 0.01);
        level.generator_cpu = CpuFigures::new(std::time::Duration::from_secs(1), window, 50, 0.0);
        let report = BenchReport {
            kind: Kind::WebrtcEcho,
            hold_s: 10.0,
            rate: 20.0,
            criteria: Criteria::default(),
            host_cpus: 2,
            webrtc_ports: 2,
            asterisk_cpu_source: "test".into(),
            asterisk_idle_cores: Some(0.01),
            services: Vec::new(),
            levels: vec![level.clone(), super::super::LevelReport { calls: 100, ..level }],
            capacity: Some(100),
        };
        let svg = svg(&[report]);
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2 + 3, "two axes frames, Asterisk CPU, generator CPU, loss");
        assert!(svg.contains("webrtc-echo, capacity 100"));
    }
}
