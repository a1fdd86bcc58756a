//! How the process's allocator should treat the large, short-lived buffers of 3-D training.
//!
//! Every op output and every autograd gradient is a fresh multi-megabyte allocation. By
//! default glibc's malloc returns such memory to the OS on free (mmap for blocks above a
//! threshold that adapts upwards, heap trimming for the rest), so the next allocation of the
//! same size faults in zeroed pages again: page clearing and faults were about 7% of a CPU
//! training step. [`keep_freed_memory`] tells malloc to keep what it freed for reuse instead.
//! It is for binaries to call once at start-up (a library should not change a process-wide
//! policy behind its user's back).

/// Blocks up to this size come from malloc's heap, which keeps freed memory; glibc caps the
/// setting at 32 MiB on 64-bit, so BraTS-size tensors (hundreds of MiB) still use mmap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Keeps freed memory in the process for reuse (glibc on Linux; elsewhere nothing changes).
/// Settings the user gave through glibc's `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
/// win. Returns whether the policy was applied. The cost: the resident size stays at its peak
/// after a peak, which a training or inference process reaches again anyway.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if user_set {
            return false;
        }
        // SAFETY: mallopt only changes malloc's tuning parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
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
    fn applies_on_glibc_and_allocation_still_works() {
        let applied = super::keep_freed_memory();
        assert_eq!(
            applied,
            cfg!(all(target_os = "linux", target_env = "gnu"))
                && std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
                && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none()
        );
        let v = vec![1f32; 8 << 20];
        drop(v);
        let w = vec![2f32; 8 << 20];
        assert_eq!(w[w.len() - 1], 2.0);
    }
}
