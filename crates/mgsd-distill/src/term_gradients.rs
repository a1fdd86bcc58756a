//! Per-term gradient norms: how hard each loss term of [`MgsdObjective::step_losses`] pulls on
//! each group of parameters — the measurement behind "is this term doing anything?".
//!
//! Each term is back-propagated on its own (one forward, one backward per term), and the L2 norm
//! of its gradient is taken per parameter group ([`param_group`]): the U-Net, the modality
//! level's token extractor, `conv_down`, attention and feed-forward, the feature level's
//! `Mutiaxis_fuse*` heads, and the discriminator (which only its own loss reaches). The norms
//! are of the *unweighted* terms; multiply by [`TermGradients::weights`] for their share in the
//! step. Norms are accumulated in f64, so gradients far below f32's normal range still show.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor};

use crate::objective::{MgsdObjective, Terms};

/// Parameter groups, in report order.
pub const PARAM_GROUPS: [&str; 7] = [
    "unet",
    "mmd_extractor",
    "mmd_conv_down",
    "mmd_attention",
    "mmd_feed_forward",
    "mutiaxis",
    "discriminator",
];

/// The group of a student parameter (checkpoint name); discriminator parameters are grouped by
/// [`term_gradients`] itself.
pub fn param_group(name: &str) -> &'static str {
    if name.starts_with("unet.") {
        "unet"
    } else if name.starts_with("MMD.extra_fea.") {
        "mmd_extractor"
    } else if name.starts_with("MMD.conv_down.") {
        "mmd_conv_down"
    } else if name.contains(".layers.0.0.") {
        "mmd_attention"
    } else if name.contains(".layers.0.1.") {
        "mmd_feed_forward"
    } else if name.starts_with("Mutiaxis_fuse") {
        "mutiaxis"
    } else {
        "other"
    }
}

/// One step's terms, their weights and their gradient norms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TermGradients {
    /// The terms' values (as [`Terms::values`], plus `disc` with a discriminator).
    pub values: BTreeMap<String, f64>,
    /// The weight of each term in `total` (`disc`: 1, its own optimiser).
    pub weights: BTreeMap<String, f64>,
    /// `norms[term][group]`: L2 norm of `∂term/∂(group's parameters)`; groups the term does not
    /// reach are 0.
    pub norms: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Sum of squares of a gradient, in f64.
fn sum_sq(g: &Tensor) -> Result<f64> {
    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// Back-propagates every term of `terms` (computed by `obj.step_losses`) separately, plus the
/// discriminator's loss when `obj` has a discriminator, and returns the gradient norms by
/// parameter group. Leaves no gradient behind: nothing is applied.
pub fn term_gradients(obj: &MgsdObjective, terms: &Terms) -> Result<TermGradients> {
    let w = obj.config().weights;
    let mut list: Vec<(&str, Tensor, f64)> = vec![
        ("sup_full", terms.sup_full.clone(), w.sup_full),
        ("sup_miss", terms.sup_miss.clone(), w.sup_miss),
        ("image", terms.image.clone(), w.image),
        ("feature", terms.feature.clone(), w.feature),
        ("modality", terms.modality.clone(), w.modality),
    ];
    if let Some(a) = &terms.adv_gen {
        list.push(("adv_gen", a.clone(), w.adversarial));
    }
    list.push(("total", terms.total.clone(), 1.0));
    if let Some(d) = obj.discriminator_loss(terms)? {
        list.push(("disc", d, 1.0));
    }

    let student: Vec<(String, Tensor)> = {
        let data = obj
            .student_vars()
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("student VarMap lock poisoned".into()))?;
        data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
    };
    let disc: Vec<Tensor> = match obj.discriminator_vars() {
        Some(vm) => vm.all_vars().iter().map(|v| v.as_tensor().clone()).collect(),
        None => Vec::new(),
    };

    let mut out = TermGradients::default();
    for (name, t, weight) in list {
        out.values.insert(name.to_string(), t.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        out.weights.insert(name.to_string(), weight);
        let grads = t.backward()?;
        let mut sq: BTreeMap<String, f64> =
            PARAM_GROUPS.iter().map(|g| (g.to_string(), 0.0)).collect();
        for (k, v) in &student {
            if let Some(g) = grads.get(v) {
                *sq.entry(param_group(k).to_string()).or_default() += sum_sq(g)?;
            }
        }
        for v in &disc {
            if let Some(g) = grads.get(v) {
                *sq.entry("discriminator".to_string()).or_default() += sum_sq(g)?;
            }
        }
        out.norms.insert(name.to_string(), sq.into_iter().map(|(k, s)| (k, s.sqrt())).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_the_reference_names() {
        assert_eq!(param_group("unet.conv1a.weight"), "unet");
        assert_eq!(param_group("MMD.extra_fea.gn3.bias"), "mmd_extractor");
        assert_eq!(param_group("MMD.conv_down.weight"), "mmd_conv_down");
        assert_eq!(
            param_group("MMD.miss_encode.transformer_decoder.layers.0.0.to_q.weight"),
            "mmd_attention"
        );
        assert_eq!(
            param_group("MMD.get_modality_tokens.transformer_decoder.layers.0.1.fn.net.0.weight"),
            "mmd_feed_forward"
        );
        assert_eq!(param_group("Mutiaxis_fuse3.cat_conv.net.weight"), "mutiaxis");
    }
}
