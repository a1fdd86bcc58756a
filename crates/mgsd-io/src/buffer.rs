//! Large zero-filled buffers that fault in 2 MiB pages where the kernel allows it.
//!
//! A fresh `vec![0.0f32; n]` of tens of megabytes is `mmap`ed and then faulted in one 4 KiB
//! page at a time on first write; on Linux with transparent huge pages in `madvise` mode (the
//! common default) that costs ~3 µs per page — about 110 ms for one BraTS case's four f32
//! volumes, more than the preprocessing itself. numpy avoids this by advising
//! `MADV_HUGEPAGE` on large arrays; [`zeroed`] does the same. Elsewhere it is a plain
//! `vec![T::default(); n]`.

/// Buffers smaller than this are allocated normally (numpy uses the same 4 MiB threshold).
const HUGE_MIN_BYTES: usize = 4 << 20;

/// `n` default (zero) values, in memory advised for transparent huge pages when large.
pub fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes < HUGE_MIN_BYTES {
        return vec![T::default(); n];
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge_pages(v.as_mut_ptr() as usize, v.capacity() * std::mem::size_of::<T>());
    v.resize(n, T::default());
    v
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
fn advise_huge_pages(addr: usize, len: usize) {
    use std::ffi::{c_int, c_void};
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    }
    /// `MADV_HUGEPAGE` on x86-64 and AArch64 Linux (asm-generic/mman-common.h).
    const MADV_HUGEPAGE: c_int = 14;
    const PAGE: usize = 4096;
    let start = addr.next_multiple_of(PAGE);
    let end = (addr + len) & !(PAGE - 1);
    if end > start {
        // SAFETY: `[start, end)` lies inside an allocation this process owns and has not yet
        // initialised; MADV_HUGEPAGE is only a hint about how to back it and changes neither
        // its contents nor its validity. A failure (e.g. THP disabled) is harmless: ignored.
        unsafe {
            madvise(start as *mut c_void, end - start, MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn advise_huge_pages(_addr: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_zero_at_every_size() {
        for n in [0usize, 1, 1000, 3 << 20] {
            let v: Vec<f32> = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
        let b: Vec<bool> = zeroed(5 << 20);
        assert!(b.iter().all(|&x| !x));
    }
}
