//! Which samples and which random draws each micro-batch of a step takes.
//!
//! A step of a run with world size `W`, `A` micro-batches per rank and `batch` cases per
//! micro-batch consumes `M = W·A` micro-batches. They are numbered `m = rank·A + a`, and
//! micro-batch `m` of step `s` is exactly what step `s·M + m` of a single-process run without
//! accumulation would compute: the same `batch` samples of the epoch (positions
//! `(s·M + m)·batch …`), the same modality mask and the same dropout seeds (both derived from
//! [`micro_index`]). So `W` ranks see, each step, the samples one process sees in `W`
//! consecutive steps, and `W` ranks and one process accumulating `W` micro-batches compute the
//! same average gradient.

/// How the micro-batches of one optimiser step are spread over ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Micro-batches each rank computes per step.
    pub accumulate: usize,
}

impl Sharding {
    /// One process, one micro-batch per step.
    pub const SINGLE: Sharding = Sharding { rank: 0, world: 1, accumulate: 1 };

    /// Micro-batches per optimiser step, over all ranks (`M`).
    pub fn micro_batches(&self) -> usize {
        self.world * self.accumulate
    }

    /// Optimiser steps per epoch when one process without accumulation takes `single` steps:
    /// an epoch is the same samples, grouped `M` micro-batches a step (the last step of an
    /// epoch is completed with samples of the next pass over the cases).
    pub fn steps_per_epoch(&self, single: u64) -> u64 {
        single.div_ceil(self.micro_batches() as u64).max(1)
    }

    /// The global number of micro-batch `a` (0-based, `< accumulate`) of this rank at global
    /// optimiser step `step`: the step a single-process run would compute it at. Masks and
    /// dropout seeds derive from it.
    pub fn micro_index(&self, step: u64, a: usize) -> u64 {
        step * self.micro_batches() as u64 + (self.rank * self.accumulate + a) as u64
    }

    /// This rank's sample positions in the epoch for steps `first..end` of the epoch (steps
    /// counted within the epoch), in the order it consumes them.
    pub fn sample_positions(&self, first: u64, end: u64, batch: usize) -> Vec<usize> {
        let m = self.micro_batches();
        let mut out =
            Vec::with_capacity((end.saturating_sub(first)) as usize * self.accumulate * batch);
        for s in first..end {
            for a in 0..self.accumulate {
                let micro = s as usize * m + self.rank * self.accumulate + a;
                out.extend(micro * batch..(micro + 1) * batch);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_single_process_is_unchanged() {
        let s = Sharding::SINGLE;
        assert_eq!(s.sample_positions(3, 6, 2), vec![6, 7, 8, 9, 10, 11]);
        assert_eq!(s.micro_index(7, 0), 7);
        assert_eq!(s.steps_per_epoch(16), 16);
    }

    proptest! {
        /// Over all ranks, a step's positions are the consecutive positions of `M` steps of one
        /// process, each exactly once, and accumulation on one process gives the same list.
        #[test]
        fn ranks_partition_consecutive_single_process_steps(
            world in 1usize..5, accumulate in 1usize..4, batch in 1usize..3, first in 0u64..4, len in 1u64..4,
        ) {
            let end = first + len;
            let mut all: Vec<usize> = (0..world)
                .flat_map(|rank| Sharding { rank, world, accumulate }.sample_positions(first, end, batch))
                .collect();
            all.sort_unstable();
            let m = world * accumulate;
            let expected: Vec<usize> = (first as usize * m * batch..end as usize * m * batch).collect();
            prop_assert_eq!(&all, &expected);
            let one = Sharding { rank: 0, world: 1, accumulate: m }.sample_positions(first, end, batch);
            prop_assert_eq!(one, expected);
            // Micro-batch indices: rank-major within a step, equal to the one-process numbering.
            for rank in 0..world {
                let s = Sharding { rank, world, accumulate };
                for a in 0..accumulate {
                    let single = Sharding { rank: 0, world: 1, accumulate: m };
                    prop_assert_eq!(s.micro_index(first, a), single.micro_index(first, rank * accumulate + a));
                }
            }
        }
    }
}
