//! Adam (L2 weight decay) against `torch.optim.Adam` on the fixture of `fixtures/gen_optim.py`.

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use mgsd_train::optim::{Adam, AdamConfig};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &Tensor, want: &Value, what: &str) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want = floats(want);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 2e-6 + 2e-5 * b.abs(), "{what}[{i}]: {a} vs {b}");
    }
}

#[test]
fn adam_matches_torch() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/optim.json");
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for run in fx["runs"].as_array().unwrap() {
        let dev = Device::Cpu;
        let shapes: Vec<Vec<usize>> = run["shapes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect())
            .collect();
        let vars: Vec<Var> = (0..2)
            .map(|i| {
                Var::from_tensor(
                    &Tensor::from_vec(floats(&run["init"][i]), shapes[i].clone(), &dev).unwrap(),
                )
                .unwrap()
            })
            .collect();
        let betas = run["betas"].as_array().unwrap();
        let cfg = AdamConfig {
            lr: run["lr"].as_f64().unwrap(),
            betas: (betas[0].as_f64().unwrap(), betas[1].as_f64().unwrap()),
            eps: run["eps"].as_f64().unwrap(),
            weight_decay: run["weight_decay"].as_f64().unwrap(),
        };
        let mut opt = Adam::new(
            [("a".to_string(), vars[0].clone()), ("b".to_string(), vars[1].clone())],
            cfg,
        )
        .unwrap();
        for (s, step) in run["steps"].as_array().unwrap().iter().enumerate() {
            let mut grads = GradStore::default();
            for (i, var) in vars.iter().enumerate() {
                let g =
                    Tensor::from_vec(floats(&step["grads"][i]), shapes[i].clone(), &dev).unwrap();
                grads.insert(var.as_tensor(), g);
            }
            opt.step(&grads).unwrap();
            for (i, var) in vars.iter().enumerate() {
                assert_close(var.as_tensor(), &step["params"][i], &format!("step {s} param {i}"));
            }
            let state = opt.state_tensors("optim.");
            assert_close(&state[0].1, &step["m"][0], "m a");
            assert_close(&state[1].1, &step["v"][0], "v a");
            assert_close(&state[2].1, &step["m"][1], "m b");
            // The moments must not record autograd history (it would chain every step: a leak).
            assert!(
                state.iter().all(|(_, t)| !t.track_op()),
                "optimiser state is tracked by autograd"
            );
        }
        assert_eq!(opt.step_count(), 5);
    }
}
