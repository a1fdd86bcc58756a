//! The whole MGSD objective against PyTorch (`fixtures/gen_mgsd.py`): every loss term for two
//! masks and the gradients of chosen parameters, patch 64 × 64 × 32, c = 8, token grid 2 × 2 × 1,
//! evaluation mode. Both forms of the modality level's decoder layer: the reference
//! (`mgsd_golden.json`) and `prenorm` (`mgsd_golden_prenorm.json`, `gen_mgsd.py --variant prenorm`).
//!
//! Weights and batch are not stored (a c = 8 MGSD state is ~10 MB): both sides generate them
//! from the same counter-based hash, bit for bit; the fixture holds the recipe and the results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mgsd_distill::{Batch, MgsdConfig, MgsdObjective, ModalityAttention, ModalityMask};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    patch: [usize; 3],
    channels: usize,
    params: Vec<Param>,
    batch: BatchRecipe,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Param {
    name: String,
    shape: Vec<usize>,
    scale: f64,
    offset: f64,
}

#[derive(Deserialize)]
struct BatchRecipe {
    x: String,
    labels: Vec<[i64; 4]>,
}

#[derive(Deserialize)]
struct Case {
    r: [f32; 4],
    terms: HashMap<String, f64>,
}

/// The fixtures folder; `MGSD_DISTILL_FIXTURES` overrides it for a test binary run on another
/// machine (the GPU bundle).
fn fixtures() -> PathBuf {
    std::env::var_os("MGSD_DISTILL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 24 random bits per element, as in `gen_mgsd.py::hash_bits`.
fn hash_bits(name: &str, n: usize) -> impl Iterator<Item = f64> {
    let h = fnv1a64(name);
    (0..n as u64).map(move |i| (splitmix64(h.wrapping_add(i)) >> 40) as f64)
}

fn param(p: &Param, dev: &Device) -> Tensor {
    let n = p.shape.iter().product();
    let v: Vec<f32> = hash_bits(&p.name, n)
        .map(|b| (p.offset + p.scale * (b / (1u64 << 23) as f64 - 1.0)) as f32)
        .collect();
    Tensor::from_vec(v, p.shape.as_slice(), dev).unwrap()
}

/// The fixture file of a variant: `mgsd_golden{,_prenorm}{.json,_grads.safetensors}`.
fn fixture(variant: ModalityAttention, tail: &str) -> PathBuf {
    match variant {
        ModalityAttention::Reference => fixtures().join(format!("mgsd_golden{tail}")),
        v => fixtures().join(format!("mgsd_golden_{}{tail}", v.name())),
    }
}

fn load_golden() -> Golden {
    load_golden_of(ModalityAttention::Reference)
}

fn load_golden_of(variant: ModalityAttention) -> Golden {
    let text = std::fs::read_to_string(fixture(variant, ".json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// (student+teacher state, discriminator state).
fn states(g: &Golden, dev: &Device) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
    let (mut s, mut d) = (HashMap::new(), HashMap::new());
    for p in &g.params {
        match p.name.strip_prefix("d_style.") {
            Some(k) => d.insert(k.to_string(), param(p, dev)),
            None => s.insert(p.name.clone(), param(p, dev)),
        };
    }
    (s, d)
}

fn batch(g: &Golden, dev: &Device) -> (Tensor, Tensor) {
    let [d, h, w] = g.patch;
    let n = 4 * d * h * w;
    let x: Vec<f32> = hash_bits(&g.batch.x, n).map(|b| (b / (1u64 << 24) as f64) as f32).collect();
    let x = Tensor::from_vec(x, (1, 4, d, h, w), dev).unwrap();
    let mut y = vec![0f32; 3 * d * h * w];
    for (c, &[cz, cy, cx, r]) in g.batch.labels.iter().enumerate() {
        for z in 0..d {
            for yy in 0..h {
                for xx in 0..w {
                    let q =
                        (z as i64 - cz).pow(2) + (yy as i64 - cy).pow(2) + (xx as i64 - cx).pow(2);
                    if q < r * r {
                        y[((c * d + z) * h + yy) * w + xx] = 1.0;
                    }
                }
            }
        }
    }
    (x, Tensor::from_vec(y, (1, 3, d, h, w), dev).unwrap())
}

fn objective(g: &Golden, variant: ModalityAttention, dev: &Device) -> MgsdObjective {
    let (s, d) = states(g, dev);
    let cfg =
        MgsdConfig { width: g.channels, modality_attention: variant, ..MgsdConfig::default() };
    MgsdObjective::from_state(cfg, &s, Some(&d), Path::new("<generated>"), dev).unwrap()
}

/// |got − want| ≤ rtol·|want| + atol.
fn check(name: &str, got: f64, want: f64, rtol: f64, atol: f64) {
    let err = (got - want).abs();
    assert!(
        err <= rtol * want.abs() + atol,
        "{name}: got {got:.9e}, want {want:.9e} (|Δ| = {err:.3e})"
    );
    eprintln!("{name:>10}: {got:.9e} vs {want:.9e}  rel {:.2e}", err / want.abs().max(1e-30));
}

// The expected values are float64 PyTorch; ours are f32.
/// Relative tolerance of every loss term (observed ≤ 7e-7).
const TERM_RTOL: f64 = 1e-5;
/// The modality term is a difference of nearly equal attention outputs (observed ≤ 3e-6).
const MODALITY_RTOL: f64 = 3e-5;
/// Gradient tolerance: ‖got − want‖₂ ≤ GRAD_RTOL · ‖want‖₂ per tensor (observed ≤ 1.4e-4, for
/// `unet.conv1a.weight`).
const GRAD_RTOL: f64 = 1e-3;
/// The discriminator's first layer is ill-conditioned in f32: f32 PyTorch itself is 1.61e-3 off
/// the float64 reference there. Our AVX-512 strided convolution (a different summation order
/// in the discriminator's forward) lands on the same 1.61e-3; the portable path on 1e-6. The
/// U-Net's first layer under `prenorm`, whose modality term (21, weight 150) makes its gradient
/// 100 times larger than the reference's and its f32 reduction as ill-conditioned: 1.73e-3.
const FIRST_LAYER_RTOL: f64 = 3e-3;

#[test]
fn loss_terms_and_gradients_match_pytorch() {
    match_pytorch_on(&Device::Cpu, ModalityAttention::Reference, 1.0);
}

/// The repaired modality level (`modality_attention = "prenorm"`): the same weights, the
/// feed-forward `layers.0.1` now applied, against its own PyTorch fixture.
#[test]
fn prenorm_loss_terms_and_gradients_match_pytorch() {
    match_pytorch_on(&Device::Cpu, ModalityAttention::Prenorm, 1.0);
}

/// The same check through the CUDA path (cuDNN in full f32), with the term tolerances ten
/// times looser: other summation orders, the same f64 reference.
#[cfg(feature = "cuda")]
#[test]
fn loss_terms_and_gradients_match_pytorch_on_cuda() {
    mgsd_nn::conv3d::set_cudnn_tf32(false);
    let dev = Device::new_cuda(0).expect("this test needs a CUDA device");
    match_pytorch_on(&dev, ModalityAttention::Reference, 10.0);
    match_pytorch_on(&dev, ModalityAttention::Prenorm, 10.0);
}

/// Every loss term of every mask case, and the gradients of the first, against float64
/// PyTorch; term tolerances scaled by `term_tol_scale`.
fn match_pytorch_on(dev: &Device, variant: ModalityAttention, term_tol_scale: f64) {
    let g = load_golden_of(variant);
    let obj = objective(&g, variant, dev);
    let (x, y) = batch(&g, dev);
    let grads_want =
        candle_core::safetensors::load(fixture(variant, "_grads.safetensors"), dev).unwrap();
    for (k, case) in g.cases.iter().enumerate() {
        let r = ModalityMask::new(case.r).unwrap();
        let terms = obj.step_losses(&x, &y, &r, false).unwrap();
        let v = terms.values().unwrap();
        eprintln!("case {k}, r = {:?}", case.r);
        for name in ["sup_full", "sup_miss", "image", "feature", "adv_gen", "total"] {
            check(name, v[name], case.terms[name], term_tol_scale * TERM_RTOL, 1e-7);
        }
        let modality_rtol = term_tol_scale * MODALITY_RTOL;
        check("modality", v["modality"], case.terms["modality"], modality_rtol, 1e-9);
        let total_ref = v["total"] - v["adv_gen"];
        check("total_ref", total_ref, case.terms["total_ref"], term_tol_scale * TERM_RTOL, 1e-6);
        let d_loss = obj.discriminator_loss(&terms).unwrap().unwrap();
        check(
            "disc",
            d_loss.to_scalar::<f32>().unwrap() as f64,
            case.terms["disc"],
            term_tol_scale * TERM_RTOL,
            1e-7,
        );
        if k != 0 {
            continue;
        }
        // Gradients of `total` for the student, of the discriminator loss for D.
        let grads = terms.total.backward().unwrap();
        let d_grads = d_loss.backward().unwrap();
        let student = obj.student_vars().data().lock().unwrap().clone();
        let disc = obj.discriminator_vars().unwrap().data().lock().unwrap().clone();
        for (key, want) in &grads_want {
            let (var, store) = if let Some(n) = key.strip_prefix("unet_grad.") {
                (&student[n], &grads)
            } else {
                let n = key.strip_prefix("d_grad.").unwrap();
                (&disc[n], &d_grads)
            };
            let got = store.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {key}"));
            let norm = |t: &Tensor| {
                t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64
            };
            let (scale, err) = (norm(want), norm(&(got - want).unwrap()));
            eprintln!("{key:>80}: ‖g‖ {scale:.3e}, ‖Δ‖/‖g‖ {:.2e}", err / scale);
            assert!(scale > 0.0, "{key}: the reference gradient is zero");
            let first_layer = key == "d_grad.0.weight"
                || (variant == ModalityAttention::Prenorm && key == "unet_grad.unet.conv1a.weight");
            let rtol = if first_layer { FIRST_LAYER_RTOL } else { GRAD_RTOL };
            assert!(err <= rtol * scale, "{key}: ‖Δ‖ {err:.3e} > {rtol} · ‖g‖ {scale:.3e}");
        }
    }
}

/// The `loss-terms` example's path: state and batch from files, the same numbers.
#[test]
fn loads_state_and_batch_files_and_reports_the_same_terms() {
    let dev = Device::Cpu;
    let g = load_golden();
    let (s, _) = states(&g, &dev);
    let (x, y) = batch(&g, &dev);
    let dir = tempfile::tempdir().unwrap();
    let w_path = dir.path().join("w.safetensors");
    let b_path = dir.path().join("b.safetensors");
    candle_core::safetensors::save(&s, &w_path).unwrap();
    let r = Tensor::new(&g.cases[1].r, &dev).unwrap();
    let batch_map = HashMap::from([
        ("x".to_string(), x),
        ("y".to_string(), y.to_dtype(DType::U8).unwrap()),
        ("r".to_string(), r),
    ]);
    candle_core::safetensors::save(&batch_map, &b_path).unwrap();

    let obj = MgsdObjective::load(MgsdConfig::default(), &w_path, None, &dev).unwrap();
    assert_eq!(obj.config().width, g.channels);
    let b = Batch::load(&b_path, &dev).unwrap();
    let v = obj.step_losses(&b.x, &b.y, &b.r, false).unwrap().values().unwrap();
    assert!(!v.contains_key("adv_gen"));
    let want = &g.cases[1].terms;
    check("total_ref", v["total"], want["total_ref"], TERM_RTOL, 1e-6);
    check("modality", v["modality"], want["modality"], MODALITY_RTOL, 1e-9);

    // Broken files: clear errors naming the tensor and the file, no panic.
    let mut partial = s.clone();
    partial.remove("ema_model.up1conv.bias");
    candle_core::safetensors::save(&partial, &w_path).unwrap();
    let e =
        MgsdObjective::load(MgsdConfig::default(), &w_path, None, &dev).unwrap_err().to_string();
    assert!(e.contains("ema_model.up1conv.bias") && e.contains("w.safetensors"), "{e}");
    let mut bad = s;
    bad.insert(
        "MMD.conv_down.weight".into(),
        Tensor::zeros((32, 63, 1, 1, 1), DType::F32, &dev).unwrap(),
    );
    candle_core::safetensors::save(&bad, &w_path).unwrap();
    let e =
        MgsdObjective::load(MgsdConfig::default(), &w_path, None, &dev).unwrap_err().to_string();
    assert!(e.contains("MMD.conv_down.weight") && e.contains("63"), "{e}");
    let e = MgsdObjective::load(
        MgsdConfig::default(),
        &dir.path().join("nope.safetensors"),
        None,
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");

    let mut no_r = batch_map;
    no_r.remove("r");
    candle_core::safetensors::save(&no_r, &b_path).unwrap();
    let e = Batch::load(&b_path, &dev).unwrap_err().to_string();
    assert!(e.contains("`r`") && e.contains("b.safetensors"), "{e}");
    no_r.insert("r".into(), Tensor::zeros(4, DType::F32, &dev).unwrap());
    candle_core::safetensors::save(&no_r, &b_path).unwrap();
    let e = Batch::load(&b_path, &dev).unwrap_err().to_string();
    assert!(e.contains("at least one modality"), "{e}");
}
