//! The two build paths: without `cuda` no nvcc runs and no PTX is embedded (what CPU CI
//! builds); with `cuda` the embedded PTX holds every entry point with the argument list of
//! `launch`. The PTX carried for the GPU check (`gpu/ptx/attention.ptx`) is checked the same way.

use mgsd_kernels::launch::{kernel_name, Dtype, Op, CAST_F32_BF16, CAST_SIGNATURE, HEAD_DIMS};

/// Parameter types of `.entry name(...)` in a PTX text.
fn entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start..];
    let body = &rest[rest.find('(')? + 1..rest.find(')')?];
    Some(body.split(',').filter_map(|p| p.split_whitespace().nth(1).map(str::to_owned)).collect())
}

fn assert_ptx_complete(ptx: &str, what: &str) {
    assert!(ptx.contains(".target sm_"), "{what}: no .target");
    let ptx_type = |c: char| match c {
        'p' => ".u64",
        'i' => ".u32",
        _ => ".f32",
    };
    let mut entries = vec![(CAST_F32_BF16.to_owned(), CAST_SIGNATURE)];
    for op in Op::ALL {
        for dt in Dtype::ALL {
            for dh in HEAD_DIMS {
                entries.push((kernel_name(op, dt, dh).unwrap(), op.signature()));
            }
        }
    }
    for (name, sig) in entries {
        let want: Vec<String> = sig.chars().map(|c| ptx_type(c).to_owned()).collect();
        assert_eq!(entry_params(ptx, &name), Some(want), "{what}: entry {name}");
    }
}

#[test]
fn build_script_path_matches_the_feature() {
    let cuda = cfg!(feature = "cuda");
    assert_eq!(mgsd_kernels::PTX_EMBEDDED, cuda);
    // Without `cuda`, build.rs returns before looking for nvcc and says so.
    assert_eq!(mgsd_kernels::BUILT_WITH_NVCC == "none", !cuda);
}

#[cfg(feature = "cuda")]
#[test]
fn embedded_ptx_has_every_entry() {
    assert_ptx_complete(mgsd_kernels::ATTENTION_PTX, "ATTENTION_PTX");
}

#[test]
fn carried_ptx_has_every_entry() {
    assert_ptx_complete(include_str!("../gpu/ptx/attention.ptx"), "gpu/ptx/attention.ptx");
}

/// The argument lists `candle_ops::resample`, `candle_ops::conv_epilogue` and
/// `candle_ops::conv_bf16` push, as PTX
/// parameter types (`p`ointer and `l`ong long: .u64, `i`nt: .u32, `f`loat: .f32).
#[cfg(feature = "cuda")]
#[test]
fn grid_stride_kernels_ptx_match_the_launches() {
    let ptx_type = |c: char| match c {
        'p' | 'l' => ".u64",
        'i' => ".u32",
        _ => ".f32",
    };
    for (name, sig) in [
        ("mgsd_maxpool2x_fwd", "pppliii"),
        ("mgsd_maxpool2x_bwd", "pppliii"),
        ("mgsd_upsample2x_fwd", "pppliii"),
        ("mgsd_upsample2x_bwd", "ppliii"),
        ("mgsd_leaky_relu_fwd", "pplf"),
        ("mgsd_leaky_relu_bwd", "ppplf"),
        ("mgsd_apool_w", "pplii"),
        ("mgsd_apool_h", "ppliii"),
        ("mgsd_apool_d", "ppliiiiii"),
        ("mgsd_apool_bwd_d", "ppliiiiii"),
        ("mgsd_apool_bwd_h", "ppliii"),
        ("mgsd_apool_bwd_w", "pplii"),
    ] {
        let want: Vec<String> = sig.chars().map(|c| ptx_type(c).to_owned()).collect();
        assert_eq!(entry_params(mgsd_kernels::RESAMPLE_PTX, name), Some(want), "{name}");
    }
    for (name, sig) in [
        ("mgsd_conv_bias_add", "pplli"),
        ("mgsd_conv_bias_residual_add", "ppplli"),
        ("mgsd_conv_residual_add", "ppl"),
    ] {
        let want: Vec<String> = sig.chars().map(|c| ptx_type(c).to_owned()).collect();
        assert_eq!(entry_params(mgsd_kernels::CONV_EPILOGUE_PTX, name), Some(want), "{name}");
    }
    for (name, sig) in [("mgsd_f32_to_bf16", "pplli"), ("mgsd_bf16_to_f32", "pppplli")] {
        let want: Vec<String> = sig.chars().map(|c| ptx_type(c).to_owned()).collect();
        assert_eq!(entry_params(mgsd_kernels::CONV_BF16_PTX, name), Some(want), "{name}");
    }
}
