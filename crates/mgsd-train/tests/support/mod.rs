//! Helpers shared by mgsd-train's integration tests.

use mgsd_train::config::Config;
use std::path::Path;

/// Two synthetic 30 × 26 × 25 training cases (one test case), one epoch of one step, c = 8,
/// patches of `patch`, run directory `run_dir`: the smallest real training run.
pub fn synthetic_config(run_dir: &Path, patch: [usize; 3]) -> Config {
    let text = format!(
        r#"
[data.synthetic]
train_cases = 2
test_cases = 1
shape = [30, 26, 25]
[protocol]
patch = {patch:?}
[model]
channels = 8
[train]
epochs = 1
steps_per_epoch = 1
[run]
dir = "{}"
"#,
        run_dir.display()
    );
    Config::from_toml(&text, "test").unwrap_or_else(|e| panic!("test config: {e:#}"))
}
