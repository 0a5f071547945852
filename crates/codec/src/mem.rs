//! Large buffers: shared by the model-file reader and the GEMM's packed weights, below both.

/// `n` zeros for a large buffer about to be written in full (weights at load, packed weights), its pages mapped in
/// one system call (Linux 5.14's `MADV_POPULATE_WRITE`) rather than one fault per 4 KiB page: the faults were most of
/// a full-size model's start-up on our VMs, and this saves about a fifth of them. Best effort: older kernels refuse
/// the advice and the pages fault in as usual. `vec![0.0; n]` is calloc, which does not clear fresh memory again.
pub(crate) fn zeroed_f32(n: usize) -> Vec<f32> {
    let mut buf = vec![0f32; n];
    #[cfg(target_os = "linux")]
    if std::mem::size_of_val(buf.as_slice()) >= 1 << 18 {
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf.as_slice());
        // SAFETY: sysconf has no preconditions. MADV_POPULATE_WRITE only makes pages present (as a write fault
        // would), never changes their contents, and the page-rounded range lies in `buf`'s mapped pages.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(1) as usize;
            let aligned = start - start % page;
            libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_POPULATE_WRITE);
        }
    }
    buf
}
