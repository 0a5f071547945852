//! NumPy `.npy` arrays: codes in and out, plus float arrays for fixtures.
//!
//! Reads format versions 1.0, 2.0 and 3.0 (they differ only in the header length field and text encoding) with
//! numeric dtypes in either byte order; writes version 1.0, little-endian, C order — what `np.save` writes. The
//! format: magic `\x93NUMPY`, major and minor version bytes, the header length (u16 LE for 1.0, u32 LE after), a
//! Python dict literal `{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces to a
//! 64-byte boundary and ending in `\n`, then the raw data.
//!
//! Hand-written because no maintained crate reads untrusted files safely or writes what `np.save` writes (checked
//! 2026 with npyz 0.8.4 and ndarray-npy 0.9.1, both parsing headers with py_literal 0.4.0 on pest 2.9.6):
//! - both: py_literal backtracks exponentially on nested brackets; a 128-byte file whose shape is 20 nested lists
//!   takes 3 s to reject (release), each 2 more levels ×4 (`deeply_nested_header_fails_fast`);
//! - both: the declared header length (up to 4 GiB in a v2 file) is allocated before reading it;
//! - npyz: the shape's product is multiplied unchecked (`attempt to multiply with overflow` panic with overflow
//!   checks, as fuzz builds have; silently 0 elements for `(2^32, 2^32, 2)` in release), so header lies pass;
//! - ndarray-npy: allocates the declared shape before reading, so `(8, 2^40)` int32 in a 24-byte file aborts on a
//!   32 TiB allocation (our `shape of 2^43 values` case);
//! - writers: npyz writes `'shape': (2, 3, ), }`, ndarray-npy `'shape': (2, 3)}`, not `np.save`'s `(2, 3), }`
//!   (`roundtrip_i32` checks it byte for byte).

use std::path::Path;

use crate::{Codes, Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The elements of an array, by dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4` / `>f4`.
    F32(Vec<f32>),
    /// `<f8` / `>f8`.
    F64(Vec<f64>),
    /// `|i1`.
    I8(Vec<i8>),
    /// `<i2` / `>i2`.
    I16(Vec<i16>),
    /// `<i4` / `>i4` (what `codec encode` writes).
    I32(Vec<i32>),
    /// `<i8` / `>i8` (NumPy's default integer).
    I64(Vec<i64>),
    /// `|u1`.
    U8(Vec<u8>),
    /// `<u2` / `>u2`.
    U16(Vec<u16>),
    /// `<u4` / `>u4`.
    U32(Vec<u32>),
    /// `<u8` / `>u8`.
    U64(Vec<u64>),
}

/// An n-dimensional array in C (row-major) order; `shape` is empty for a 0-d (scalar) array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Length of each axis.
    pub shape: Vec<usize>,
    /// The elements, `shape`'s product of them.
    pub data: NpyData,
}

impl NpyData {
    /// The NumPy name of the dtype ("int32", "float32", ...), for messages.
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
            NpyData::I8(_) => "int8",
            NpyData::I16(_) => "int16",
            NpyData::I32(_) => "int32",
            NpyData::I64(_) => "int64",
            NpyData::U8(_) => "uint8",
            NpyData::U16(_) => "uint16",
            NpyData::U32(_) => "uint32",
            NpyData::U64(_) => "uint64",
        }
    }
}

impl NpyArray {
    /// The elements as `f32`, converting from any dtype (64-bit values are rounded to the nearest `f32`).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U32(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The elements as `i64`, for integer dtypes only: a float array (codes saved from a float tensor) is an
    /// [`Error::InvalidArgument`] naming the dtype, as is a `uint64` value above `i64::MAX`.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        Ok(match &self.data {
            NpyData::I8(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::I16(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::I64(v) => v.clone(),
            NpyData::U8(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::U32(v) => v.iter().map(|&x| x as i64).collect(),
            NpyData::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::InvalidArgument("uint64 array holds a value above i64::MAX".into()))?,
            NpyData::F32(_) | NpyData::F64(_) => {
                return Err(Error::InvalidArgument(format!("expected an integer array, got {}", self.data.dtype())))
            }
        })
    }
}

/// Reads a `.npy` file. OS errors are [`Error::Io`]; a bad magic, an unreadable header, Fortran order, an
/// unsupported dtype, or data shorter or longer than the shape says are [`Error::Codes`].
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes).map_err(|msg| Error::codes(path, msg))
}

/// Reads codes per DESIGN.md: int32 or int64, shape `(n_q, frames)` or `(1, n_q, frames)`, at most `max_n_q`
/// codebooks, every value in `[0, codebook_size)`. Anything else is an [`Error::Codes`] naming the file.
pub fn read_codes(path: &Path, max_n_q: usize, codebook_size: usize) -> Result<Codes> {
    let arr = read(path)?;
    let values: Vec<i64> = match &arr.data {
        NpyData::I32(v) => v.iter().map(|&x| x as i64).collect(),
        NpyData::I64(v) => v.clone(),
        _ => return Err(Error::codes(path, format!("codes must be int32 or int64, got {}", arr.data.dtype()))),
    };
    let (n_q, n_frames) = match arr.shape.as_slice() {
        [q, f] => (*q, *f),
        [1, q, f] => (*q, *f),
        s => {
            return Err(Error::codes(
                path,
                format!("codes must have shape (n_q, frames) or (1, n_q, frames), got {s:?}"),
            ))
        }
    };
    if n_q == 0 || n_frames == 0 {
        return Err(Error::codes(path, format!("codes are empty (shape {:?})", arr.shape)));
    }
    if n_q > max_n_q {
        return Err(Error::codes(path, format!("{n_q} codebooks, the model has at most {max_n_q}")));
    }
    let size = i64::try_from(codebook_size).unwrap_or(i64::MAX);
    if let Some(pos) = values.iter().position(|&c| c < 0 || c >= size) {
        return Err(Error::codes(
            path,
            format!(
                "code {} at codebook {}, frame {} is out of range [0, {size})",
                values[pos],
                pos / n_frames,
                pos % n_frames
            ),
        ));
    }
    Ok(Codes { n_q, n_frames, data: values.into_iter().map(|c| c as u32).collect() })
}

/// Writes an `int32` array (the codes layout) as `.npy` v1.0.
pub fn write_i32(path: &Path, shape: &[usize], data: &[i32]) -> Result<()> {
    write(path, shape, data)
}

/// Writes a `float32` array as `.npy` v1.0.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, shape, data)
}

/// A fixed-size numeric element as stored in `.npy` data.
trait Element: Sized {
    /// The dtype descriptor `np.save` writes for this type on a little-endian machine.
    const DESCR: &'static str;
    fn write_le(&self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $descr:literal),*) => {$(
        impl Element for $t {
            const DESCR: &'static str = $descr;
            fn write_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
element!(i32 => "<i4", f32 => "<f4");

fn write<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(data.len()) {
        return Err(Error::InvalidArgument(format!(
            "{}: shape {shape:?} does not hold {} values",
            path.display(),
            data.len()
        )));
    }
    let mut bytes = header(T::DESCR, shape);
    bytes.reserve(std::mem::size_of_val(data));
    for v in data {
        v.write_le(&mut bytes);
    }
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Magic, version and header dict, padded like NumPy does so the data starts on a 64-byte boundary (which lets
/// readers memory-map it aligned). Version 2.0 only when the dict outgrows the u16 length field.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.as_slice() {
        [d] => format!("({d},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let (major, preamble) = if dict.len() + 1 + 63 <= u16::MAX as usize { (1u8, 10) } else { (2, 12) };
    let pad = (64 - (preamble + dict.len() + 1) % 64) % 64;
    let header_len = dict.len() + pad + 1;

    let mut out = Vec::with_capacity(preamble + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// Parses a whole `.npy` file; the error is the message, the caller adds the path.
fn parse(bytes: &[u8]) -> std::result::Result<NpyArray, String> {
    if bytes.len() < 8 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len_field = match major {
        1 => 2,
        2 | 3 => 4,
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let start = 8 + len_field;
    let len_bytes = bytes.get(8..start).ok_or("truncated header")?;
    let header_len = len_bytes.iter().rev().fold(0usize, |acc, &b| acc << 8 | b as usize);
    let data_start = start.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or("truncated header")?;
    // Versions 1 and 2 are latin-1, 3 is UTF-8; the keys and values NumPy writes are ASCII either way.
    let header = std::str::from_utf8(&bytes[start..data_start]).map_err(|_| "header is not text")?;
    let Header { descr, fortran_order, shape } = parse_header(header)?;
    if fortran_order {
        return Err("Fortran-order (column-major) arrays are not supported; save a C-order array \
                    (np.ascontiguousarray)"
            .into());
    }
    let dtype = Dtype::parse(&descr).ok_or_else(|| format!("unsupported dtype '{descr}'"))?;

    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape is too large")?;
    let nbytes = count.checked_mul(dtype.size).ok_or("shape is too large")?;
    let data = &bytes[data_start..];
    if data.len() < nbytes {
        return Err(format!(
            "truncated: shape {shape:?} of '{descr}' needs {nbytes} bytes of data, the file has {}",
            data.len()
        ));
    }
    if data.len() > nbytes {
        return Err(format!(
            "{} bytes after the {nbytes} bytes of data that shape {shape:?} of '{descr}' describes",
            data.len() - nbytes
        ));
    }
    Ok(NpyArray { shape, data: dtype.decode(data) })
}

/// A numeric dtype: kind and size from the descriptor's type code, byte order from its first character.
struct Dtype {
    kind: u8,
    size: usize,
    big_endian: bool,
}

impl Dtype {
    /// `<f4`, `>i8`, `|u1`, ...; `None` for anything else (complex, bool, strings, structured).
    fn parse(descr: &str) -> Option<Dtype> {
        let b = descr.as_bytes();
        let [order, kind, size] = *b else { return None };
        let size = (size as char).to_digit(10)? as usize;
        let ok = match kind {
            b'f' => matches!(size, 4 | 8),
            b'i' | b'u' => matches!(size, 1 | 2 | 4 | 8),
            _ => false,
        };
        // '|' (not applicable) is how NumPy marks single-byte types; '=' (native) never appears in files NumPy
        // writes but means little-endian on every platform we build for.
        let big_endian = match order {
            b'<' | b'=' => false,
            b'>' => true,
            b'|' if size == 1 => false,
            _ => return None,
        };
        ok.then_some(Dtype { kind, size, big_endian })
    }

    /// Decodes `data`, whose length is a multiple of `size` (checked by the caller).
    fn decode(&self, data: &[u8]) -> NpyData {
        macro_rules! decode {
            ($t:ty, $variant:ident) => {
                NpyData::$variant(
                    data.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| {
                            let mut a = [0u8; std::mem::size_of::<$t>()];
                            a.copy_from_slice(c);
                            if self.big_endian {
                                <$t>::from_be_bytes(a)
                            } else {
                                <$t>::from_le_bytes(a)
                            }
                        })
                        .collect(),
                )
            };
        }
        match (self.kind, self.size) {
            (b'f', 4) => decode!(f32, F32),
            (b'f', _) => decode!(f64, F64),
            (b'i', 1) => decode!(i8, I8),
            (b'i', 2) => decode!(i16, I16),
            (b'i', 4) => decode!(i32, I32),
            (b'i', _) => decode!(i64, I64),
            (b'u', 1) => decode!(u8, U8),
            (b'u', 2) => decode!(u16, U16),
            (b'u', 4) => decode!(u32, U32),
            _ => decode!(u64, U64),
        }
    }
}

/// The three keys of a `.npy` header.
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the Python literal subset `.npy` headers use.
enum Literal {
    Str(String),
    Bool(bool),
    Int(usize),
    Seq(Vec<Literal>),
    Dict(Vec<(String, Literal)>),
}

fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let bad = |what: &str| format!("malformed header ({what}): {}", text.trim_end());
    let mut parser = LiteralParser { s: text.as_bytes(), i: 0, depth: 0 };
    let Some(Literal::Dict(entries)) = parser.value() else { return Err(bad("not a dict")) };
    parser.skip_ws();
    if parser.i != parser.s.len() {
        return Err(bad("text after the dict"));
    }
    let (mut descr, mut fortran_order, mut shape) = (None, None, None);
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("descr", Literal::Str(s)) => descr = Some(s),
            // A list descr is a structured dtype, which no codes file uses.
            ("descr", Literal::Seq(_)) => return Err("unsupported dtype (structured array)".into()),
            ("fortran_order", Literal::Bool(b)) => fortran_order = Some(b),
            ("shape", Literal::Seq(dims)) => {
                let dims: Option<Vec<usize>> =
                    dims.into_iter().map(|d| if let Literal::Int(n) = d { Some(n) } else { None }).collect();
                shape = Some(dims.ok_or_else(|| bad("shape"))?);
            }
            ("descr" | "fortran_order" | "shape", _) => return Err(bad(&key)),
            _ => {} // NumPy ignores extra keys in principle; so do we.
        }
    }
    Ok(Header {
        descr: descr.ok_or_else(|| bad("no 'descr'"))?,
        fortran_order: fortran_order.ok_or_else(|| bad("no 'fortran_order'"))?,
        shape: shape.ok_or_else(|| bad("no 'shape'"))?,
    })
}

/// Recursive-descent parser for strings, True/False, non-negative integers, tuples, lists and dicts.
struct LiteralParser<'a> {
    s: &'a [u8],
    i: usize,
    /// Open brackets around the current position, at most [`MAX_DEPTH`]: a header of nested brackets would
    /// otherwise overflow the stack.
    depth: usize,
}

/// NumPy's own headers nest three deep at most (a structured dtype with a sub-array shape).
const MAX_DEPTH: usize = 32;

impl LiteralParser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// Consumes `c` after optional whitespace.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let found = self.s.get(self.i) == Some(&c);
        if found {
            self.i += 1;
        }
        found
    }

    fn value(&mut self) -> Option<Literal> {
        self.skip_ws();
        let c = *self.s.get(self.i)?;
        if matches!(c, b'(' | b'[' | b'{') {
            if self.depth == MAX_DEPTH {
                return None;
            }
            self.depth += 1;
            let v = self.container(c);
            self.depth -= 1;
            return v;
        }
        match c {
            q @ (b'\'' | b'"') => {
                let start = self.i + 1;
                let len = self.s[start..].iter().position(|&c| c == q)?;
                self.i = start + len + 1;
                Some(Literal::Str(std::str::from_utf8(&self.s[start..start + len]).ok()?.to_string()))
            }
            b'0'..=b'9' => {
                let start = self.i;
                while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i]).ok()?.parse().ok()?;
                // Python 2 wrote longs as `3L`.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                Some(Literal::Int(n))
            }
            _ if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Some(Literal::Bool(true))
            }
            _ if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Some(Literal::Bool(false))
            }
            _ => None,
        }
    }

    /// A tuple, list or dict starting at `open`, the byte at the current position.
    fn container(&mut self, open: u8) -> Option<Literal> {
        self.i += 1;
        match open {
            b'{' => self
                .items(b'}', |p| {
                    let Literal::Str(key) = p.value()? else { return None };
                    p.eat(b':').then_some(())?;
                    Some((key, p.value()?))
                })
                .map(Literal::Dict),
            b'(' => self.items(b')', Self::value).map(Literal::Seq),
            _ => self.items(b']', Self::value).map(Literal::Seq),
        }
    }

    /// Comma-separated items up to `close`, a trailing comma allowed; the opening bracket is already consumed.
    fn items<T>(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut out = Vec::new();
        loop {
            if self.eat(close) {
                return Some(out);
            }
            out.push(item(self)?);
            if !self.eat(b',') {
                return self.eat(close).then_some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::test_util::tmp_path;

    /// A v1.0 file with the given header dict (padded like NumPy) and raw data.
    fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
        let pad = (64 - (10 + dict.len() + 1) % 64) % 64;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend(std::iter::repeat_n(b' ', pad));
        out.push(b'\n');
        out.extend_from_slice(data);
        out
    }

    fn read_bytes(name: &str, bytes: &[u8]) -> Result<NpyArray> {
        let path = tmp_path(name);
        std::fs::write(&path, bytes).unwrap();
        let result = read(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn codes_error(result: Result<NpyArray>) -> String {
        match result {
            Err(e @ Error::Codes { .. }) => e.to_string(),
            other => panic!("expected a codes error, got {other:?}"),
        }
    }

    #[test]
    fn roundtrip_i32() {
        let path = tmp_path("i32.npy");
        let data = vec![0, 1, -1, i32::MAX, i32::MIN, 2047];
        write_i32(&path, &[2, 3], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Byte-for-byte what np.save(np.zeros((2, 3), '<i4')) writes before the data.
        let expected = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", &[]);
        assert_eq!(&bytes[..expected.len()], &expected[..]);
        assert_eq!(expected.len(), 128);
        let a = read(&path).unwrap();
        assert_eq!(a, NpyArray { shape: vec![2, 3], data: NpyData::I32(data.clone()) });
        assert_eq!(a.to_i64_vec().unwrap(), data.iter().map(|&x| x as i64).collect::<Vec<_>>());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn roundtrip_f32_bit_exact() {
        let path = tmp_path("f32.npy");
        let data = vec![0.0, -0.0, 1.5, f32::NAN, f32::INFINITY, f32::MIN_POSITIVE / 2.0, -1e-30, 3.25];
        write_f32(&path, &[2, 2, 2], &data).unwrap();
        let a = read(&path).unwrap();
        assert_eq!(a.shape, vec![2, 2, 2]);
        let NpyData::F32(back) = &a.data else { panic!("{:?}", a.data) };
        assert!(data.iter().zip(back).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_eq!(a.to_f32_vec().len(), 8);
        assert!(matches!(a.to_i64_vec(), Err(Error::InvalidArgument(m)) if m.contains("float32")));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn zero_and_one_dimensional_shapes() {
        let path = tmp_path("scalar.npy");
        write_f32(&path, &[], &[2.5]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("'shape': (), }"));
        assert_eq!(read(&path).unwrap(), NpyArray { shape: vec![], data: NpyData::F32(vec![2.5]) });

        write_i32(&path, &[4], &[1, 2, 3, 4]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("'shape': (4,), }"));
        assert_eq!(read(&path).unwrap(), NpyArray { shape: vec![4], data: NpyData::I32(vec![1, 2, 3, 4]) });

        write_i32(&path, &[0, 3], &[]).unwrap();
        assert_eq!(read(&path).unwrap(), NpyArray { shape: vec![0, 3], data: NpyData::I32(vec![]) });
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn write_rejects_shape_mismatch() {
        let err = write_i32(&tmp_path("mismatch.npy"), &[2, 3], &[1, 2, 3]).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }

    #[test]
    fn reads_hand_built_int64() {
        let values: [i64; 4] = [0, -5, 1 << 40, i64::MIN];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Key order and spacing differ from NumPy's to exercise the parser.
        let bytes = npy_bytes("{\"shape\":(1,2,2),'fortran_order':False,'descr':'<i8'}", &data);
        let a = read_bytes("i64.npy", &bytes).unwrap();
        assert_eq!(a.shape, vec![1, 2, 2]);
        assert_eq!(a.data.dtype(), "int64");
        assert_eq!(a.to_i64_vec().unwrap(), values);
        assert_eq!(a.to_f32_vec(), vec![0.0, -5.0, (1u64 << 40) as f32, i64::MIN as f32]);
    }

    #[test]
    fn reads_v2_header_big_endian_and_small_ints() {
        let dict = "{'descr': '>i4', 'fortran_order': False, 'shape': (3L,), }\n";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        for v in [1i32, -2, 70000] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let a = read_bytes("v2.npy", &bytes).unwrap();
        assert_eq!(a, NpyArray { shape: vec![3], data: NpyData::I32(vec![1, -2, 70000]) });

        let a =
            read_bytes("u1.npy", &npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", &[7, 255]))
                .unwrap();
        assert_eq!(a.to_i64_vec().unwrap(), vec![7, 255]);

        let big = npy_bytes("{'descr': '<u8', 'fortran_order': False, 'shape': (1,), }", &u64::MAX.to_le_bytes());
        assert!(read_bytes("u8big.npy", &big).unwrap().to_i64_vec().is_err());
    }

    #[test]
    fn truncated_data_is_an_error() {
        let bytes = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", &[0u8; 20]);
        let msg = codes_error(read_bytes("truncated.npy", &bytes));
        assert!(msg.contains("truncated.npy") && msg.contains("truncated") && msg.contains("24 bytes"), "{msg}");

        let bytes = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[0u8; 12]);
        let msg = codes_error(read_bytes("trailing.npy", &bytes));
        assert!(msg.contains("4 bytes after"), "{msg}");

        let whole = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[]);
        let msg = codes_error(read_bytes("cut_header.npy", &whole[..40]));
        assert!(msg.contains("truncated header"), "{msg}");
    }

    #[test]
    fn bad_magic_is_an_error() {
        let msg = codes_error(read_bytes("magic.npy", b"PK\x03\x04 this is a zip, maybe an .npz"));
        assert!(msg.contains("bad magic"), "{msg}");
        let msg = codes_error(read_bytes("empty.npy", b""));
        assert!(msg.contains("bad magic"), "{msg}");
    }

    #[test]
    fn fortran_order_is_an_error() {
        let bytes = npy_bytes("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 2), }", &[0u8; 16]);
        let msg = codes_error(read_bytes("fortran.npy", &bytes));
        assert!(msg.contains("Fortran"), "{msg}");
    }

    #[test]
    fn unsupported_dtype_and_malformed_header() {
        let bytes = npy_bytes("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", &[0u8; 8]);
        let msg = codes_error(read_bytes("complex.npy", &bytes));
        assert!(msg.ends_with("unsupported dtype '<c8'"), "{msg}");

        let bytes = npy_bytes("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }", &[0u8; 4]);
        assert!(codes_error(read_bytes("structured.npy", &bytes)).contains("structured"));

        let bytes = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (1, -2), }", &[]);
        assert!(codes_error(read_bytes("negative.npy", &bytes)).contains("malformed header"));

        let bytes = npy_bytes("{'descr': '<i4', 'shape': (1,), }", &[0u8; 4]);
        assert!(codes_error(read_bytes("nofortran.npy", &bytes)).contains("no 'fortran_order'"));

        let mut bytes = npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", &[0u8; 4]);
        bytes[6] = 4;
        assert!(codes_error(read_bytes("v4.npy", &bytes)).contains("version 4.0"));
    }

    #[test]
    fn deeply_nested_header_fails_fast() {
        // 24 nested lists take minutes in a PEG parser that backtracks (py_literal, under npyz and ndarray-npy);
        // 30000 overflowed our own parser's stack before it capped the depth.
        for depth in [24, 30000] {
            let dict = format!(
                "{{'descr': '<i4', 'fortran_order': False, 'shape': {}{}, }}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            let start = std::time::Instant::now();
            assert!(codes_error(read_bytes("nested.npy", &npy_bytes(&dict, &[]))).contains("malformed header"));
            assert!(start.elapsed().as_secs() < 5, "{depth} levels took {:?}", start.elapsed());
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        assert!(matches!(read(Path::new("/nonexistent/codes.npy")), Err(Error::Io { .. })));
    }
}
