//! The report's figures, drawn with plotters into memory and encoded as PNG. Text is set in
//! DejaVu Sans, embedded in the binary (no system font is looked up), so a figure's bytes depend
//! only on its data.

use super::{Metric, ReportError, Result, Results, SftRole};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

const FONT: &str = "sans-serif";
const W: u32 = 1000;
const H: u32 = 440;

/// A figure: its file name, a one-line caption and the PNG bytes.
#[derive(Debug, Clone)]
pub struct Figure {
    pub file: String,
    pub title: String,
    pub caption: String,
    pub png: Vec<u8>,
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only on bytes that are not a font; the embedded font is one.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// What drawing a figure can fail with: plotters' errors, whatever the backend.
type DrawError = Box<dyn std::error::Error + Send + Sync>;

fn err<E: Into<DrawError>>(figure: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Figure {
        figure: figure.into(),
        source: e.into(),
    }
}

/// Draws with `draw` on a white `W`×`H` canvas and encodes the result as PNG.
fn render(
    file: &str,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> std::result::Result<(), DrawError>,
) -> Result<Vec<u8>> {
    register_font();
    let mut rgb = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err(file))?;
        draw(&root).map_err(err(file))?;
        root.present().map_err(err(file))?;
    }
    let mut pm = tiny_skia::Pixmap::new(W, H).ok_or_else(|| err(file)("empty canvas"))?;
    for (px, c) in pm.data_mut().chunks_exact_mut(4).zip(rgb.chunks_exact(3)) {
        px.copy_from_slice(&[c[0], c[1], c[2], 255]);
    }
    pm.encode_png().map_err(err(file))
}

fn color(i: usize) -> RGBColor {
    // Colour-blind-safe qualitative palette (Okabe–Ito).
    const C: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(120, 120, 120),
        RGBColor(0, 0, 0),
    ];
    C[i % C.len()]
}

type Series = (String, Vec<(f64, f64)>);

/// The series legend, in a light box.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawError>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(position)
        .draw()
        .map_err(DrawError::from)
}

/// Line charts side by side, one per panel (title, y label, series).
fn panels(file: &str, x_desc: &str, panels: &[(String, Vec<Series>)]) -> Result<Vec<u8>> {
    render(file, |root| {
        let areas = root.split_evenly((1, panels.len().max(1)));
        for ((title, series), area) in panels.iter().zip(&areas) {
            let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
            let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
            let (x0, x1) = if x0.is_finite() && x1 > x0 {
                (x0, x1)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(x0..x1, 0f64..1f64)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_desc("held-out accuracy")
                .label_style((FONT, 14))
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()?;
            for (i, (label, pts)) in series.iter().enumerate() {
                let c = color(i);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                    .label(label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            }
            legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        }
        Ok(())
    })
}

/// Two panels, a_p and a_r against `x`, one line per labelled run.
fn curve_panels(
    file: &str,
    x_desc: &str,
    runs: &[(String, Vec<(f64, super::CurvePoint)>)],
) -> Result<Vec<u8>> {
    let series = |f: fn(&super::CurvePoint) -> f64| -> Vec<Series> {
        runs.iter()
            .map(|(label, pts)| (label.clone(), pts.iter().map(|(x, p)| (*x, f(p))).collect()))
            .collect()
    };
    panels(
        file,
        x_desc,
        &[
            ("Perception a_p".into(), series(|p| p.a_p)),
            ("Reasoning a_r (p* forced)".into(), series(|p| p.a_r)),
        ],
    )
}

/// a_p against a_r, one labelled point per run (end-to-end a in the label).
fn frontier(file: &str, title: &str, points: &[(String, f64, f64, f64)]) -> Result<Vec<u8>> {
    render(file, |root| {
        let range = |v: &mut dyn Iterator<Item = f64>| {
            let (lo, hi) = v.fold((1.0f64, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            ((lo - 0.1).max(0.0), (hi + 0.1).min(1.0).max(lo + 0.2))
        };
        let (x0, x1) = range(&mut points.iter().map(|p| p.1));
        let (y0, y1) = range(&mut points.iter().map(|p| p.2));
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("a_p (perception)")
            .y_desc("a_r (reasoning, p* forced)")
            .label_style((FONT, 14))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let mut labels = Vec::new();
        for (i, (label, ap, ar, a)) in points.iter().enumerate() {
            let c = color(i);
            chart.draw_series(std::iter::once(Circle::new((*ap, *ar), 6, c.filled())))?;
            labels.push((
                chart.backend_coord(&(*ap, *ar)),
                format!("{label} (a = {a:.2})"),
                c,
            ));
        }
        place_labels(root, &labels)
    })
}

/// Draws each label beside its point, at the one of eight places around it whose box overlaps
/// the fewest points and labels placed before (text width estimated).
fn place_labels(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    labels: &[((i32, i32), String, RGBColor)],
) -> std::result::Result<(), DrawError> {
    const TH: i32 = 15;
    type Box4 = (i32, i32, i32, i32);
    let marks: Vec<Box4> = labels
        .iter()
        .map(|((x, y), _, _)| (x - 7, y - 7, x + 7, y + 7))
        .collect();
    let mut placed: Vec<Box4> = Vec::new();
    for ((x, y), text, c) in labels {
        let (x, y) = (*x, *y);
        let w = text.chars().count() as i32 * 7 + 4;
        let places = [
            (x + 9, y - TH / 2),
            (x + 9, y - TH - 3),
            (x + 9, y + 3),
            (x - w - 9, y - TH / 2),
            (x - w - 9, y - TH - 3),
            (x - w - 9, y + 3),
            (x - w / 2, y - TH - 9),
            (x - w / 2, y + 9),
        ];
        // The place overlapping the fewest points and labels (the first of equals).
        let clashes = |&(lx, ly): &(i32, i32)| -> usize {
            let b = (lx, ly, lx + w, ly + TH);
            let outside = usize::from(lx < 0 || lx + w > W as i32) * 100;
            outside
                + placed
                    .iter()
                    .chain(&marks)
                    .filter(|p| b.0 < p.2 && p.0 < b.2 && b.1 < p.3 && p.1 < b.3)
                    .count()
        };
        let (lx, ly) = places
            .iter()
            .copied()
            .min_by_key(|p| clashes(p))
            .unwrap_or(places[0]);
        placed.push((lx, ly, lx + w, ly + TH));
        root.draw(&Text::new(
            text.clone(),
            (lx, ly),
            (FONT, 13).into_font().color(c),
        ))?;
    }
    Ok(())
}

/// Grouped bars of r with a_p and with ã_r per reward, with 95 % interval whiskers.
type Bar = (String, [Option<(f64, Option<f64>, Option<f64>)>; 2]);

fn bars(file: &str, title: &str, rows: &[Bar]) -> Result<Vec<u8>> {
    render(file, |root| {
        let n = rows.len().max(1);
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(54)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), -0.2f64..1f64)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("Pearson r")
            .label_style((FONT, 14))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let labels = ["with a_p (perception)", "with ã_r (reasoning)"];
        for (k, label) in labels.iter().enumerate() {
            let c = color(k);
            let off = if k == 0 { -0.2 } else { 0.2 };
            let rects = rows.iter().enumerate().filter_map(|(i, r)| {
                r.1[k].map(|(v, _, _)| {
                    let x = i as f64 + off;
                    Rectangle::new([(x - 0.18, 0.0), (x + 0.18, v)], c.filled())
                })
            });
            chart
                .draw_series(rects)?
                .label(*label)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
            let whiskers = rows.iter().enumerate().filter_map(|(i, r)| match r.1[k] {
                Some((_, Some(lo), Some(hi))) => {
                    let x = i as f64 + off;
                    Some(PathElement::new(
                        vec![(x, lo), (x, hi)],
                        BLACK.stroke_width(1),
                    ))
                }
                _ => None,
            });
            chart.draw_series(whiskers)?;
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// Δa_p against r(R, a_p), one labelled point per run, with the least-squares line.
fn coupling(file: &str, points: &[(String, f64, f64)]) -> Result<Vec<u8>> {
    render(file, |root| {
        let ys = points.iter().map(|p| p.2);
        let (y0, y1) = ys.fold((0.0f64, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((y1 - y0) * 0.15).max(0.05);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Coupling of the reward to perception vs perception gain",
                (FONT, 20),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..1.05f64, (y0 - pad)..(y1 + pad))?;
        chart
            .configure_mesh()
            .x_desc("r(R, a_p) over the run's rollouts")
            .y_desc("Δa_p (held-out, end − start)")
            .label_style((FONT, 14))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()?;
        let fit: Vec<(f64, f64)> = points.iter().map(|p| (p.1, p.2)).collect();
        if let Some((b, intercept, _)) = crate::analysis::fit_line(&fit) {
            let line = [0.0, 1.05].map(|x| (x, intercept + b * x));
            chart
                .draw_series(LineSeries::new(line, color(6).stroke_width(1)))?
                .label(format!("least squares: slope {b:.3}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color(6)));
        }
        let mut labels = Vec::new();
        for (i, (label, x, y)) in points.iter().enumerate() {
            let c = color(i);
            chart.draw_series(std::iter::once(Circle::new((*x, *y), 6, c.filled())))?;
            labels.push((chart.backend_coord(&(*x, *y)), label.clone(), c));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        place_labels(root, &labels)?;
        Ok(())
    })
}

/// Every figure the data supports.
pub fn figures(r: &Results) -> Result<Vec<Figure>> {
    let all = [
        sft_curves_figure(r)?,
        rl_curves_figure(r)?,
        sft_frontier_figure(r)?,
        rl_frontier_figure(r)?,
        correlations_figure(r)?,
        coupling_figure(r)?,
    ];
    Ok(all.into_iter().flatten().collect())
}

fn figure(file: &str, title: &str, caption: &str, png: Vec<u8>) -> Figure {
    Figure {
        file: file.into(),
        title: title.into(),
        caption: caption.into(),
        png,
    }
}

/// SFT optimization curves: standard, NGDiff and the best λ, a_p and a_r against step.
fn sft_curves_figure(r: &Results) -> Result<Option<Figure>> {
    let mut keep: Vec<String> = r
        .sft
        .iter()
        .filter(|s| matches!(s.role, SftRole::Standard | SftRole::Ngdiff))
        .map(|s| s.role.label())
        .collect();
    keep.extend(r.best_lambda().map(|s| s.role.label()));
    let shown: Vec<&super::Curve> = r
        .sft_curves
        .iter()
        .filter(|c| {
            // A replicated run's curves are labelled `label (seed k)`, one per seed.
            let kept = keep
                .iter()
                .any(|k| c.label == *k || c.label.starts_with(&format!("{k} (seed ")));
            c.points.len() > 1 && (kept || r.sft.is_empty())
        })
        .collect();
    if !shown.is_empty() {
        let runs: Vec<(String, Vec<(f64, super::CurvePoint)>)> = shown
            .iter()
            .map(|c| {
                let pts = c.points.iter().map(|p| (p.step as f64, *p)).collect();
                (c.label.clone(), pts)
            })
            .collect();
        let png = curve_panels("sft_curves.png", "SFT step", &runs)?;
        return Ok(Some(figure(
            "sft_curves.png",
            "SFT optimization curves",
            "Held-out a_p and a_r during SFT for the standard objective, NGDiff and the best λ.",
            png,
        )));
    }
    Ok(None)
}

/// RL curves: each run, against the steps done (0 = the starting checkpoint).
fn rl_curves_figure(r: &Results) -> Result<Option<Figure>> {
    let runs: Vec<(String, Vec<(f64, super::CurvePoint)>)> =
        r.rl.iter()
            .filter(|x| x.curve.len() > 1)
            .map(|x| {
                let pts = x.curve.iter().map(|p| ((p.step + 1) as f64, *p)).collect();
                (x.role.label(), pts)
            })
            .collect();
    if !runs.is_empty() {
        let png = curve_panels("rl_curves.png", "RL steps done", &runs)?;
        return Ok(Some(figure(
            "rl_curves.png",
            "RL optimization curves",
            "Held-out a_p and a_r against RL steps (0 = the starting checkpoint) for each reward.",
            png,
        )));
    }
    Ok(None)
}

/// The SFT variants' trade-off frontier.
fn sft_frontier_figure(r: &Results) -> Result<Option<Figure>> {
    let sft_points: Vec<(String, f64, f64, f64)> = r
        .sft
        .iter()
        .map(|s| (s.role.label(), s.acc.a_p.mean, s.acc.a_r.mean, s.acc.a.mean))
        .collect();
    if sft_points.len() > 1 {
        let png = frontier(
            "sft_frontier.png",
            "SFT variants: perception vs reasoning",
            &sft_points,
        )?;
        return Ok(Some(figure(
            "sft_frontier.png",
            "The λ trade-off frontier",
            "Each SFT variant's held-out a_p against a_r; the label gives its end-to-end a.",
            png,
        )));
    }
    Ok(None)
}

/// The RL runs' trade-off frontier.
fn rl_frontier_figure(r: &Results) -> Result<Option<Figure>> {
    let mut rl_points: Vec<(String, f64, f64, f64)> = Vec::new();
    if let Some(start) = r.rl_start_arm() {
        let a = start.acc;
        rl_points.push(("start".into(), a.a_p.mean, a.a_r.mean, a.a.mean));
    }
    rl_points.extend(r.alpha_runs().into_iter().map(|(_, x)| {
        let a = x.arm().acc;
        (x.role.label(), a.a_p.mean, a.a_r.mean, a.a.mean)
    }));
    if rl_points.len() > 2 {
        let png = frontier(
            "rl_frontier.png",
            "RL runs: perception vs reasoning",
            &rl_points,
        )?;
        return Ok(Some(figure(
            "rl_frontier.png",
            "The α trade-off frontier",
            "The starting checkpoint and each α run after its last step: a_p against a_r, \
             end-to-end a in the label.",
            png,
        )));
    }
    Ok(None)
}

/// Correlation bars.
fn correlations_figure(r: &Results) -> Result<Option<Figure>> {
    let mut rows: Vec<Bar> = Vec::new();
    for p in &r.pool {
        let k = usize::from(p.against != "a_p");
        let entry = match rows.iter_mut().find(|x| x.0 == p.reward) {
            Some(e) => e,
            None => {
                rows.push((p.reward.clone(), [None, None]));
                let last = rows.len() - 1;
                &mut rows[last]
            }
        };
        entry.1[k] = p.r.map(|v| (v, p.lo, p.hi));
    }
    if !rows.is_empty() {
        let png = bars(
            "correlations.png",
            "How each reward couples to perception and to reasoning",
            &rows,
        )?;
        return Ok(Some(figure(
            "correlations.png",
            "Reward correlations",
            "Pearson r of each reward with a_p and with ã_r over one pool of rollouts, with 95 % \
             bootstrap intervals over items.",
            png,
        )));
    }
    Ok(None)
}

/// Coupling against perception gain: each run's coupling measured on the starting policy where
/// the pool has it, else over the run's own rollouts.
fn coupling_figure(r: &Results) -> Result<Option<Figure>> {
    let before: Vec<(String, f64, f64)> =
        r.rl.iter()
            .filter_map(|x| {
                let c = r.start_coupling(x)?.r?;
                Some((x.role.label(), c, r.rl_gain(x, Metric::AP)))
            })
            .collect();
    let (pts, how) = if before.len() >= 2 {
        (
            before,
            "the pool of the starting policy's rollouts, before training",
        )
    } else {
        let after =
            r.rl.iter()
                .filter_map(|x| {
                    x.r_a_p
                        .map(|c| (x.role.label(), c, r.rl_gain(x, Metric::AP)))
                })
                .collect();
        (after, "all of the run's own rollouts")
    };
    if pts.len() >= 2 {
        let png = coupling("coupling.png", &pts)?;
        return Ok(Some(figure(
            "coupling.png",
            "Coupling vs perception gain",
            &format!(
                "Each RL run's r(R, a_p) over {how}, against its held-out Δa_p, with the \
                 least-squares line."
            ),
            png,
        )));
    }
    Ok(None)
}
