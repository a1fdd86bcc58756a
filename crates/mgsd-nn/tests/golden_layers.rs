//! Golden tests of the layer ops against PyTorch (fixtures from `fixtures/gen_layers.py`,
//! computed in float64 and stored as float32). Each case checks the output and the gradients
//! of `sum(y · r)` for every input and parameter.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mgsd_nn::{
    adaptive_avg_pool3d, cross_attention, group_norm, leaky_relu, max_pool3d_2x, upsample2x,
    upsample2x_add, AttentionVariant, CrossAttention, CrossAttentionConfig, GROUP_NORM_EPS,
};

/// Absolute + relative tolerance of the forward outputs.
const TOL_FWD: f32 = 1e-5;
/// Tolerance of the gradients (reductions over up to ~10³ terms in f32).
const TOL_BWD: f32 = 1e-4;

fn load(name: &str) -> Result<HashMap<String, Tensor>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("layers_{name}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu)
}

fn get(f: &HashMap<String, Tensor>, key: &str) -> Tensor {
    match f.get(key) {
        Some(t) => t.clone(),
        None => panic!("fixture key {key} missing"),
    }
}

/// `|a − b| ≤ tol·(1 + |b|)` element-wise, with a message naming the worst element.
fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let av = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap();
    let bv = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap();
    let (mut worst, mut at) = (0f32, 0);
    for (i, (&x, &y)) in av.iter().zip(&bv).enumerate() {
        let e = (x - y).abs() / (1.0 + y.abs());
        if e > worst || e.is_nan() {
            worst = e;
            at = i;
        }
    }
    assert!(worst <= tol, "{what}: error {worst:e} at {at}: {} vs {}", av[at], bv[at]);
}

/// Runs `f` on fresh variables for `inputs`, checks `y` and `d(sum(y·r))/d input`.
fn check(
    fx: &HashMap<String, Tensor>,
    case: &str,
    inputs: &[&str],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|n| Var::from_tensor(&get(fx, &format!("{case}.{n}"))).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    assert_close(&y, &get(fx, &format!("{case}.y")), TOL_FWD, &format!("{case}.y"));
    let loss = (&y * get(fx, &format!("{case}.r"))).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    for (n, v) in inputs.iter().zip(&vars) {
        let d = g.get(v).unwrap_or_else(|| panic!("{case}: no gradient for {n}"));
        assert_close(d, &get(fx, &format!("{case}.d{n}")), TOL_BWD, &format!("{case}.d{n}"));
    }
}

#[test]
fn group_norm_matches_pytorch() -> Result<()> {
    let fx = load("group_norm")?;
    for (case, groups, relu) in
        [("g8_relu", 8, true), ("g8", 8, false), ("g4_relu_odd", 4, true), ("g4_mmd", 4, true)]
    {
        check(&fx, case, &["x", "weight", "bias"], |t| {
            group_norm(&t[0], &t[1], &t[2], groups, GROUP_NORM_EPS, relu)
        });
    }
    Ok(())
}

#[test]
fn max_pool_matches_pytorch() -> Result<()> {
    let fx = load("max_pool")?;
    for case in ["even", "odd", "ties"] {
        check(&fx, case, &["x"], |t| max_pool3d_2x(&t[0]));
    }
    Ok(())
}

#[test]
fn upsample_matches_pytorch() -> Result<()> {
    let fx = load("upsample")?;
    check(&fx, "up", &["x"], |t| upsample2x(&t[0]));
    check(&fx, "up_add", &["x", "skip"], |t| upsample2x_add(&t[0], &t[1]));
    Ok(())
}

#[test]
fn adaptive_pool_matches_pytorch() -> Result<()> {
    let fx = load("adaptive_pool")?;
    for g in [[2, 3, 1], [3, 5, 4], [10, 1, 1], [1, 12, 1], [1, 1, 7], [4, 4, 4], [12, 13, 9]] {
        let case = format!("g{}x{}x{}", g[0], g[1], g[2]);
        check(&fx, &case, &["x"], |t| adaptive_avg_pool3d(&t[0], g));
    }
    Ok(())
}

#[test]
fn attention_core_matches_pytorch() -> Result<()> {
    let fx = load("attention")?;
    for (case, variant) in
        [("nosoftmax", AttentionVariant::NoSoftmax), ("softmax", AttentionVariant::Softmax)]
    {
        check(&fx, case, &["q", "k", "v"], |t| cross_attention(&t[0], &t[1], &t[2], 0.3, variant));
    }
    Ok(())
}

#[test]
fn cross_attention_module_matches_pytorch() -> Result<()> {
    let fx = load("cross_attention")?;
    let params = ["to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"];
    for (case, heads, head_dim, variant) in [
        ("mgsd", 16, 32, AttentionVariant::NoSoftmax),
        ("softmax", 4, 8, AttentionVariant::Softmax),
    ] {
        let cfg = CrossAttentionConfig { heads, head_dim, variant, ..CrossAttentionConfig::mgsd() };
        let mut names = vec!["x", "m"];
        names.extend(params);
        check(&fx, case, &names, |t| {
            // Parameters as variables of a VarMap-free builder over the given tensors.
            let map: HashMap<String, Tensor> =
                params.iter().zip(&t[2..]).map(|(n, t)| (n.to_string(), t.clone())).collect();
            let vb = VarBuilder::from_tensors(map, candle_core::DType::F32, &Device::Cpu);
            CrossAttention::new(cfg, vb)?.forward(&t[0], &t[1])
        });
    }
    Ok(())
}

#[test]
fn cross_attention_module_loads_reference_names() -> Result<()> {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, candle_core::DType::F32, &Device::Cpu);
    let _ = CrossAttention::new(CrossAttentionConfig::mgsd(), vb.pp("layers.0.0"))?;
    let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "layers.0.0.to_k.weight",
            "layers.0.0.to_out.0.bias",
            "layers.0.0.to_out.0.weight",
            "layers.0.0.to_q.weight",
            "layers.0.0.to_v.weight"
        ]
    );
    Ok(())
}

#[test]
fn leaky_relu_matches_pytorch() -> Result<()> {
    let fx = load("leaky_relu")?;
    check(&fx, "slope02", &["x"], |t| leaky_relu(&t[0], 0.2));
    Ok(())
}
