//! Extra views of an [`EvalReport`]: the Dice heatmap (`eval.png`) and, when `eval --metrics`
//! asked for them, the official BraTS 2023+ metrics per subset (`eval-brats2023.md`/`.csv`).

use crate::eval::EvalReport;
use crate::heatmap::{heatmap, sort_by_modalities, HeatRow, Scale};
use crate::plot::Canvas;
use mgsd_metrics::stats::Summary;
use std::fmt::Write as _;

/// The 15 × 3 Dice table (%) as a heatmap, subsets sorted by number of modalities.
pub fn dice_heatmap(report: &EvalReport) -> Canvas {
    let mut rows: Vec<HeatRow> = report
        .rows
        .iter()
        .map(|r| HeatRow {
            label: r.subset.clone(),
            values: r.dice.map(|d| 100.0 * d),
            text: r.dice.map(|d| format!("{:.1}", 100.0 * d)),
        })
        .collect();
    sort_by_modalities(&mut rows);
    heatmap("DICE (%)", &rows, Scale::Sequential { min: 0.0, max: 100.0 })
}

/// Per subset and region, the case means of the official metrics (NaN skipped, as the official
/// parser's `mean` row): lesion-wise Dice and HD95, global Dice and HD95, TP, FP, FN.
/// `None` if no case carries them.
pub fn official_tables(report: &EvalReport) -> Option<(String, String)> {
    if report.per_case.iter().all(|c| c.official.is_none()) {
        return None;
    }
    let mut md = String::from(
        "| Modalities | Region | Lesion-wise Dice | Lesion-wise HD95 | Global Dice | Global HD95 | TP | FP | FN |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut csv = String::from(
        "subset,region,lesionwise_dsc_mean,lesionwise_hd95_mean,global_dsc,global_hd95,tp,fp,fn\n",
    );
    for row in &report.rows {
        let cases: Vec<_> = report
            .per_case
            .iter()
            .filter(|c| c.subset == row.subset)
            .filter_map(|c| c.official)
            .collect();
        for (r, region) in ["WT", "TC", "ET"].into_iter().enumerate() {
            let mean = |f: &dyn Fn(&mgsd_metrics::LesionwiseScore) -> f64| {
                Summary::of(&cases.iter().map(|c| f(&c[r])).collect::<Vec<_>>()).mean
            };
            let official =
                |s: &mgsd_metrics::LesionwiseScore| mgsd_metrics::lesionwise::official_columns(s);
            let v = [
                mean(&|s| s.lesion_dsc_mean),
                mean(&|s| s.lesion_hd95_mean),
                mean(&|s| s.global_dsc),
                mean(&|s| official(s)[8]),
            ];
            let total = |f: &dyn Fn(&mgsd_metrics::LesionwiseScore) -> usize| {
                cases.iter().map(|c| f(&c[r])).sum::<usize>()
            };
            let (tp, fp, fn_) = (total(&|s| s.tp), total(&|s| s.fp), total(&|s| s.fn_));
            let _ = writeln!(
                md,
                "| {} | {region} | {:.4} | {:.2} | {:.4} | {:.2} | {tp} | {fp} | {fn_} |",
                row.subset, v[0], v[1], v[2], v[3]
            );
            let _ = writeln!(
                csv,
                "{},{region},{},{},{},{},{tp},{fp},{fn_}",
                row.subset, v[0], v[1], v[2], v[3]
            );
        }
    }
    Some((md, csv))
}
