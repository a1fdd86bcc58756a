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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::CaseResult;
    use mgsd_io::ModalitySet;
    use mgsd_metrics::{lesionwise, RegionScore};

    #[test]
    fn official_tables_and_heatmap_of_a_report() {
        let shape = [6, 6, 6];
        let mut truth = vec![0u8; 216];
        truth[50..54].fill(4);
        let official = lesionwise::score_case(&truth, &truth, shape, [1.0; 3]).ok();
        let subsets = ModalitySet::all_nonempty();
        let per_case = subsets
            .iter()
            .map(|s| CaseResult {
                case: "c1".into(),
                subset: s.to_string(),
                scores: [RegionScore { dice: 1.0, hd95: 0.0 }; 3],
                et_post: RegionScore { dice: 1.0, hd95: 0.0 },
                official,
            })
            .collect();
        let report = EvalReport::from_cases(per_case, &subsets, None, "test".into());
        let (md, csv) = official_tables(&report).unwrap();
        assert_eq!(csv.lines().count(), 1 + 45);
        assert!(md.contains("| FLAIR | ET | 1.0000 | 0.00 | 1.0000 | 0.00 | 1 | 0 | 0 |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        report.write(dir.path(), "eval").unwrap();
        for f in ["eval.png", "eval-brats2023.md", "eval-brats2023.csv", "eval.json"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert_eq!(dice_heatmap(&report).height, 64 + 26 * 15 + 20);
    }
}
