//! Preprocessing throughput on one BraTS-size (240 × 240 × 155) synthetic case in memory:
//! brain mask, normalisation statistics, the ACN and RFNet pipelines, and putting a
//! three-channel prediction back on the original grid.
//!
//! `cargo bench -p mgsd-io --bench preprocess`. File decoding is measured against nibabel by
//! `bench/load_preprocess_vs_nibabel.sh`.

use criterion::{criterion_group, criterion_main, Criterion};
use mgsd_io::preprocess::{
    min_max_params, nonzero_mask, z_score_params, CaseView, Pipeline, Protocol,
};
use mgsd_io::synth::{SynthConfig, Synthesizer, BRATS_SHAPE};
use mgsd_io::ACN_CHANNEL_ORDER;
use rand::SeedableRng;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let case = match Synthesizer::new(SynthConfig::new(1, BRATS_SHAPE))
        .and_then(|s| s.generate("bench"))
    {
        Ok(c) => c,
        Err(e) => panic!("cannot build the benchmark case: {e}"),
    };
    let view = match CaseView::from_case(&case, &ACN_CHANNEL_ORDER) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    let channels: Vec<&[f32]> = view.images.iter().flatten().copied().collect();
    let acn = Pipeline::new(Protocol::Acn, [160, 192, 128]);
    let rfnet = Pipeline::new(Protocol::Rfnet, [128, 128, 128]);

    let mut g = c.benchmark_group("brats_240x240x155");
    g.sample_size(10);
    g.bench_function("nonzero_mask", |b| {
        b.iter(|| nonzero_mask(black_box(&channels), BRATS_SHAPE))
    });
    g.bench_function("min_max_params_x4", |b| {
        b.iter(|| channels.iter().map(|x| min_max_params(x)).collect::<Vec<_>>())
    });
    let mask = nonzero_mask(&channels, BRATS_SHAPE).unwrap_or_default();
    g.bench_function("z_score_params_x4", |b| {
        b.iter(|| channels.iter().map(|x| z_score_params(x, &mask)).collect::<Vec<_>>())
    });
    g.bench_function("acn_eval", |b| b.iter(|| acn.eval(black_box(&view))));
    g.bench_function("rfnet_eval", |b| b.iter(|| rfnet.eval(black_box(&view))));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    g.bench_function("acn_train", |b| b.iter(|| acn.train(black_box(&view), &mut rng)));
    if let Ok(sample) = acn.eval(&view) {
        let pred = vec![0.5f32; 3 * sample.image.voxels()];
        g.bench_function("uncrop_3ch_prediction", |b| {
            b.iter(|| sample.record.uncrop(black_box(&pred), 3))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
