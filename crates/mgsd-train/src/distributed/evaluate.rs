//! Evaluation split across ranks: each rank scores every `W`-th case, the per-case results are
//! gathered, and every rank builds the same table as one process would.

use super::collective::{all_gather_bytes, Collective};
use crate::data::CaseStore;
use crate::eval::{evaluate, CaseResult, EvalReport, EvalSettings, WindowLoss};
use anyhow::{Context, Result};
use candle_core::Device;
use mgsd_io::CaseFiles;
use mgsd_nn::unet3d::UNet3D;

/// [`evaluate`] with the cases split over the ranks of `comm` (case `i` on rank `i mod W`);
/// every rank returns the whole table, identical to a single process's (the per-case results
/// are put back in the single-process order before averaging).
///
/// # Errors
/// As [`evaluate`] on any rank's cases; communication errors.
pub fn evaluate_across_ranks(
    comm: &dyn Collective,
    unet: &UNet3D,
    cases: &[CaseFiles],
    store: &CaseStore,
    settings: &EvalSettings,
    device: &Device,
) -> Result<EvalReport> {
    let (rank, world) = (comm.rank(), comm.world_size());
    if world == 1 {
        return evaluate(unet, cases, store, settings, device);
    }
    let mine: Vec<CaseFiles> = cases.iter().skip(rank).step_by(world).cloned().collect();
    let part = evaluate(unet, &mine, store, settings, device);
    // A failing rank must not leave the others waiting in the gather.
    let part = part.inspect_err(|e| comm.abort(&format!("rank {rank}: {e:#}")))?;
    let bytes = serde_json::to_vec(&(&part.per_case, &part.outside_window))?;
    let gathered = all_gather_bytes(comm, &bytes, device)?;
    let mut per_case: Vec<CaseResult> = Vec::with_capacity(cases.len() * settings.subsets.len());
    let mut window: Option<WindowLoss> = None;
    for (r, b) in gathered.iter().enumerate() {
        let (results, loss): (Vec<CaseResult>, Option<WindowLoss>) = serde_json::from_slice(b)
            .with_context(|| format!("reading rank {r}'s evaluation results"))?;
        per_case.extend(results);
        if let Some(l) = loss {
            let w = window.get_or_insert_with(WindowLoss::default);
            w.cases += l.cases;
            w.voxels += l.voxels;
            w.max_fraction = w.max_fraction.max(l.max_fraction);
        }
    }
    // The single-process order: cases in `cases` order, subsets in `settings` order.
    let case_pos = |id: &str| cases.iter().position(|c| c.id == id).unwrap_or(usize::MAX);
    let subset_pos =
        |s: &str| settings.subsets.iter().position(|x| x.to_string() == s).unwrap_or(usize::MAX);
    per_case.sort_by_key(|c| (case_pos(&c.case), subset_pos(&c.subset)));
    let mut report = EvalReport::from_cases(
        per_case,
        &settings.subsets,
        settings.min_et,
        settings.description.clone(),
    );
    report.outside_window = window;
    Ok(report)
}
