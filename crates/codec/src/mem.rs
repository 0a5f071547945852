//! Large buffers: shared by the model-file reader and the GEMM's packed weights, below both.

/// `n` zeros for a large buffer about to be written in full (weights at load, packed weights), its pages mapped in
/// one system call (Linux 5.14's `MADV_POPULATE_WRITE`) rather than one fault per 4 KiB page: the faults were most of
/// a full-size model's start-up on our VMs, and this saves about a fifth of them. Best effort: older kernels refuse
/// the advice and the pages fault in as usual. `vec![0.0; n]` is calloc, which does not clear fresh memory again.
pub(crate) fn zeroed_f32(n: usize) -> Vec<f32> {
    let mut buf = vec![0f32; n];
    #[cfg(target_os = "linux")]
    if std::mem::size_of_val(buf.as_slice()) >= 1 << 18 {
        use rayon::prelude::*;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf.as_slice());
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let first = start - start % page;
        // In pieces across the threads: the kernel clears each page it maps, and one thread doing all of a layer's
        // pages (a weight packed on its first product) kept the others waiting.
        const PIECE: usize = 4 << 20;
        (0..(end - first).div_ceil(PIECE)).into_par_iter().map(|i| first + i * PIECE).for_each(|from| {
            // SAFETY: MADV_POPULATE_WRITE only makes pages present (as a write fault would), never changes their
            // contents, and the page-rounded range lies in `buf`'s mapped pages.
            unsafe { libc::madvise(from as *mut libc::c_void, PIECE.min(end - from), libc::MADV_POPULATE_WRITE) };
        });
    }
    buf
}

/// `n` zeros for a layer's output that the threads are about to write, cleared across the rayon pool when large. A
/// plain `vec![0.0; n]` cleared it on the calling thread while the others waited: glibc hands a freed large block
/// back and calloc must clear it again, and those serial clears were 5–8 % of a 2-thread DAC run.
pub(crate) fn zeros_par(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if n < 1 << 15 {
        return vec![0.0; n];
    }
    let mut buf = Vec::with_capacity(n);
    buf.par_extend(rayon::iter::repeat_n(0.0f32, n));
    buf
}
