//! Large buffers: shared by the model-file reader and the GEMM's packed weights, below both; and the allocator
//! setting every front end makes for the activations ([`keep_freed_memory`]).

/// Tells glibc to keep freed blocks on the heap for the next allocation instead of handing them back to the kernel.
/// A model pass allocates and frees tens of megabytes per layer, and by default glibc serves such blocks with mmap
/// (or trims them off the heap) and returns them on free, so every layer pays page faults and page zeroing again:
/// full-size Mimi through the C API, warm 10 s calls (Zen 3, 2 threads), encode 515–533 → 416–449 ms and decode
/// 569–594 → 389–404 ms with it. A process-wide setting: the `codec` CLI makes it at start-up, the Python package at
/// import, the C API at the first `codec_load`; `CODEC_RS_KEEP_FREED_MEMORY=0` leaves the allocator as it is.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var("CODEC_RS_KEEP_FREED_MEMORY").as_deref() != Ok("0") {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only sets the allocator's parameters, under the allocator's own lock.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        });
    }
}

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

/// A vector of `n` floats that `fill` writes in full, given the buffer's start, with no zero fill first: for a
/// layer's output that a product writes element by element ([`crate::nn::gemm::Output::from_raw`]). Zeroing it
/// first was a pass over memory as long as the product's own writes (463 MB a 10 s Mimi encode, 20–25 ms at our
/// VMs' 20 GB/s).
///
/// # Safety
/// `fill` writes each of the `n` floats (from any threads) before it returns, and reads none it has not written.
pub(crate) unsafe fn written_in_full(n: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    let mut buf = Vec::with_capacity(n);
    fill(buf.as_mut_ptr());
    // SAFETY: all n floats are written (the caller's promise), within the capacity reserved above.
    unsafe { buf.set_len(n) };
    buf
}

/// A vector of `n` floats made in parallel chunks of `chunk` floats, chunk `i` from `values(i)` (zeros where it
/// yields fewer): an element-wise pass writes its output once instead of over a zero fill ([`written_in_full`]).
/// `values` runs inside [`crate::nn::wide_simd`], so its inlined arithmetic is vectorised for the CPU.
pub(crate) fn collect_par<I: Iterator<Item = f32>>(
    n: usize,
    chunk: usize,
    values: impl Fn(usize) -> I + Sync,
) -> Vec<f32> {
    use rayon::prelude::*;
    let fill = |ptr: *mut f32| {
        let base = SharedFloats(ptr);
        (0..n.div_ceil(chunk.max(1))).into_par_iter().for_each(|i| {
            let (from, len) = (i * chunk, chunk.min(n - i * chunk));
            // SAFETY: chunk i's floats lie inside the n reserved and belong to this task alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.at(from) as *mut std::mem::MaybeUninit<f32>, len) };
            crate::nn::wide_simd(
                #[inline(always)]
                || {
                    let mut written = 0;
                    for (d, v) in dst.iter_mut().zip(values(i)) {
                        d.write(v);
                        written += 1;
                    }
                    dst[written..].iter_mut().for_each(|d| {
                        d.write(0.0);
                    });
                },
            );
        });
    };
    // SAFETY: every chunk writes all its floats (the values, then zeros).
    unsafe { written_in_full(n, fill) }
}

/// A buffer's start, shared by threads that each write their own elements of it (`collect_par`'s chunks, the LSTM
/// recurrence's units between barriers).
#[derive(Clone, Copy)]
pub(crate) struct SharedFloats(pub(crate) *mut f32);
// SAFETY: its users write disjoint elements through it, and read an element only after the write is synchronised
// (a parallel loop's end, a barrier).
unsafe impl Send for SharedFloats {}
unsafe impl Sync for SharedFloats {}

impl SharedFloats {
    /// The float `offset` on (a method, so closures capture the whole struct, not its raw pointer).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Rows of `width` f32 values kept in an anonymous temporary file (in `$TMPDIR`, gone when dropped), for a
/// sequence too long to hold whose pieces are written once and read back, possibly many times: WavTokenizer's
/// decoder spans the whole clip (`nn::vocos`), and 1 h of its activations is 0.8 GB a tensor. Read and written
/// with plain file I/O, not mapped: the pages then sit in the page cache, which the kernel may write out, rather
/// than in the process.
pub(crate) struct SpillRows {
    file: std::fs::File,
    width: usize,
}

impl SpillRows {
    pub fn new(width: usize) -> candle_core::Result<Self> {
        let file = tempfile::tempfile().map_err(|e| spill_error("create", e))?;
        Ok(Self { file, width })
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Writes `values` (whole rows) from row `row` on.
    pub fn write(&self, row: usize, values: &[f32]) -> candle_core::Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        debug_assert_eq!(values.len() % self.width.max(1), 0);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.offset(row)))
            .and_then(|_| file.write_all(bytemuck::cast_slice(values)))
            .map_err(|e| spill_error("write", e))
    }

    /// Rows `rows`, as written.
    pub fn read(&self, rows: std::ops::Range<usize>) -> candle_core::Result<Vec<f32>> {
        let mut values = Vec::new();
        self.read_into(rows, &mut values)?;
        Ok(values)
    }

    /// Rows `rows` into `values` (resized to them): for a loop that reads many tiles into one buffer.
    pub fn read_into(&self, rows: std::ops::Range<usize>, values: &mut Vec<f32>) -> candle_core::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        values.resize(rows.len() * self.width, 0.0);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.offset(rows.start)))
            .and_then(|_| file.read_exact(bytemuck::cast_slice_mut(values)))
            .map_err(|e| spill_error("read", e))
    }

    fn offset(&self, row: usize) -> u64 {
        (row as u64) * (self.width as u64) * 4
    }
}

fn spill_error(what: &str, e: std::io::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("temporary file ({}): cannot {what}: {e}", std::env::temp_dir().display()))
}
