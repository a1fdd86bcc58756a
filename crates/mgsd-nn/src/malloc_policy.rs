//! How the process's allocator should treat the large, short-lived buffers of 3-D networks.
//!
//! Every op output and every autograd gradient is a fresh buffer of megabytes to hundreds of
//! megabytes. By default glibc's malloc serves blocks above 128 KiB–32 MiB with `mmap` and
//! unmaps them on free, and trims its heap, so every such allocation faults in freshly zeroed
//! pages: at the BraTS crop size that was about a fifth of a `UNet3D` forward, and a third of
//! a forward + backward at 64³. [`keep_freed_memory`] turns both off, so freed memory is reused
//! (the HPC setting `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1`). It is for binaries to
//! call once at start-up: a library should not change a process-wide policy on its own.
//! Measurements: docs/BENCHMARKS.md.

/// Whether the user configured glibc's malloc through its environment variables.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn user_settings_present() -> bool {
    ["MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Keeps freed memory in the process for reuse (glibc on Linux; elsewhere nothing changes):
/// no `mmap` for large blocks, no heap trimming. glibc settings the user gave through
/// `MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` win. Returns whether
/// the policy was applied.
///
/// The cost: the resident size stays near its peak after a peak (a training or inference
/// process reaches it again every step anyway), plus some fragmentation: the `UNet3D` forward
/// at 160×192×128 peaked at 1.29 GB instead of 0.94 GB, still half of PyTorch's.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if user_settings_present() {
            return false;
        }
        // SAFETY: mallopt only changes malloc's tuning parameters; both values are in range.
        // Without mmap, glibc still falls back to it when the heap cannot grow.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn applies_on_glibc_and_large_allocations_still_work() {
        let user_set = super::user_settings_present();
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(super::keep_freed_memory(), glibc && !user_set);
        // Blocks far above the old mmap threshold, freed and allocated again.
        for len in [8 << 20, 80 << 20, 8 << 20] {
            let v = vec![1f32; len];
            assert_eq!(v[len - 1], 1.0);
        }
    }
}
