//! An in-memory [`Collective`] for tests: `W` ranks as threads of one process. A test double,
//! never a backend users can choose: it exists so that CPU CI can run the multi-rank logic of
//! data-parallel training.
//!
//! Each operation waits until every rank has deposited its tensor, then gives all of them the
//! sum in rank order (so it is deterministic) or the root's tensor. A rank that calls
//! [`Collective::abort`] makes every pending and later operation of the others fail with its
//! error; an operation that waits longer than the timeout fails too, so a test never hangs.

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use mgsd_train::distributed::Collective;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One rank of an in-memory group.
pub struct InMemoryCollective {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<Exchange>,
    changed: Condvar,
}

#[derive(Default)]
struct Exchange {
    deposits: Vec<Option<Tensor>>,
    /// The finished operation's result and how many ranks have yet to take it.
    result: Option<(Tensor, usize)>,
    failed: Option<String>,
}

#[derive(Clone, Copy)]
enum Op {
    Sum,
    Broadcast(usize),
}

/// `world` ranks sharing one exchange.
pub fn group(world: usize) -> Vec<Arc<dyn Collective>> {
    let shared = Arc::new(Shared {
        world,
        timeout: Duration::from_secs(300),
        state: Mutex::new(Exchange { deposits: vec![None; world], ..Exchange::default() }),
        changed: Condvar::new(),
    });
    (0..world)
        .map(|rank| {
            Arc::new(InMemoryCollective { rank, shared: shared.clone() }) as Arc<dyn Collective>
        })
        .collect()
}

impl InMemoryCollective {
    fn wait<'a>(
        &self,
        mut guard: MutexGuard<'a, Exchange>,
        until: impl Fn(&Exchange) -> bool,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, Exchange>> {
        loop {
            if let Some(e) = &guard.failed {
                bail!("{e}");
            }
            if until(&guard) {
                return Ok(guard);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "rank {}: a collective operation timed out (another rank never joined)",
                    self.rank
                );
            }
            guard =
                self.shared.changed.wait_timeout(guard, left).map_err(|_| anyhow!("poisoned"))?.0;
        }
    }

    fn exchange(&self, t: &Tensor, op: Op) -> Result<Tensor> {
        let deadline = Instant::now() + self.shared.timeout;
        let guard = self.shared.state.lock().map_err(|_| anyhow!("poisoned"))?;
        // The previous operation's result must be taken by everyone before a new one starts.
        let mut g =
            self.wait(guard, |x| x.result.is_none() && x.deposits[self.rank].is_none(), deadline)?;
        g.deposits[self.rank] = Some(t.clone());
        if g.deposits.iter().all(Option::is_some) {
            let deposits: Vec<Tensor> = g.deposits.iter_mut().map(|d| d.take().unwrap()).collect();
            if deposits.iter().any(|d| d.dims() != t.dims() || d.dtype() != t.dtype()) {
                let msg = "ranks passed different shapes to one collective (they are out of step)"
                    .to_string();
                g.failed = Some(msg.clone());
                self.shared.changed.notify_all();
                bail!(msg);
            }
            let result = match op {
                Op::Sum => {
                    let mut acc = deposits[0].clone();
                    for d in &deposits[1..] {
                        acc = (acc + d)?;
                    }
                    acc
                }
                Op::Broadcast(root) => deposits[root].clone(),
            };
            g.result = Some((result, self.shared.world));
            self.shared.changed.notify_all();
        }
        let mut g = self.wait(g, |x| x.result.is_some(), deadline)?;
        let (result, left) = g.result.take().unwrap();
        if left > 1 {
            g.result = Some((result.clone(), left - 1));
        } else {
            self.shared.changed.notify_all();
        }
        Ok(result)
    }
}

impl Collective for InMemoryCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        self.exchange(t, Op::Sum)
    }
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        self.exchange(t, Op::Broadcast(root))
    }
    fn abort(&self, error: &str) {
        if let Ok(mut g) = self.shared.state.lock() {
            g.failed.get_or_insert_with(|| error.to_string());
            self.shared.changed.notify_all();
        }
    }
}
