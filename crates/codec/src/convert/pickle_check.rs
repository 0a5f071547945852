//! A pre-pass over the pickles of a PyTorch zip checkpoint (descript's `.pth`, Lightning's `.ckpt`) before candle's
//! unpickler reads them. candle allocates a BINUNICODE string's declared 32-bit length before reading it (a lying
//! length asked for 4 GiB; found by fuzzing) and shifts past 64 bits on a LONG1 wider than 8 bytes. Here each
//! `data.pkl` is walked opcode by opcode without allocating: a string longer than what follows it, or a LONG1 wider
//! than 8 bytes, is an [`Error::Convert`] naming the file. Anything else (unknown opcodes, a broken zip) is left to
//! the reader, which reports it.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

use crate::{Error, Result};

/// Checks every `*data.pkl` in the zip at `path` (the entries candle's reader unpickles).
pub(crate) fn check_pickles(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let Ok(mut zip) = zip::ZipArchive::new(BufReader::new(file)) else { return Ok(()) };
    for i in 0..zip.len() {
        let Some(Ok(name)) = zip.name_for_index(i).map(|n| n.map(|s| s.to_string())) else { continue };
        if !name.ends_with("data.pkl") {
            continue;
        }
        let Ok(entry) = zip.by_index(i) else { continue };
        match walk(&mut BufReader::new(entry)) {
            Ok(()) => {}
            Err(Walk::Bad(msg)) => return Err(Error::convert(path, format!("corrupt pickle {name}: {msg}"))),
            // An unreadable entry: the reader reports it.
            Err(Walk::Io) => {}
        }
    }
    Ok(())
}

enum Walk {
    Bad(String),
    Io,
}

impl From<std::io::Error> for Walk {
    fn from(_: std::io::Error) -> Self {
        Walk::Io
    }
}

/// Skips `n` bytes; false if the stream ends or fails first (a zip entry's CRC is checked at its end, after candle
/// would already have allocated).
fn skip(r: &mut impl BufRead, n: u64) -> bool {
    std::io::copy(&mut r.take(n), &mut std::io::sink()).is_ok_and(|copied| copied == n)
}

/// Walks the opcodes candle's unpickler knows, up to STOP or the first one it does not know.
fn walk(r: &mut impl BufRead) -> std::result::Result<(), Walk> {
    loop {
        let mut op = [0u8; 1];
        match r.read_exact(&mut op) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let fixed: u64 = match op[0] {
            b'.' => return Ok(()), // STOP
            0x80 | b'q' | b'h' | b'K' => 1,
            b'M' => 2,
            b'r' | b'j' | b'J' => 4,
            b'G' => 8,
            b'c' => {
                // GLOBAL: module and name, each up to a newline.
                for _ in 0..2 {
                    let mut line = Vec::new();
                    r.by_ref().take(64 * 1024).read_until(b'\n', &mut line)?;
                }
                0
            }
            b'X' => {
                let mut len = [0u8; 4];
                if r.read_exact(&mut len).is_err() {
                    return Ok(());
                }
                let len = u32::from_le_bytes(len);
                if !skip(r, len as u64) {
                    return Err(Walk::Bad(format!("a string of {len} bytes runs past the end of the pickle")));
                }
                0
            }
            0x8a => {
                let mut n = [0u8; 1];
                if r.read_exact(&mut n).is_err() {
                    return Ok(());
                }
                if n[0] > 8 {
                    return Err(Walk::Bad(format!("a {}-byte LONG1 integer (at most 8 bytes are supported)", n[0])));
                }
                n[0] as u64
            }
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | 0x85..=0x89
            | b'N'
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            _ => return Ok(()),
        };
        if !skip(r, fixed) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A torch-style zip holding `pickle` as `archive/data.pkl`.
    fn zip_with_pickle(name: &str, pickle: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("codec-rs-pickle-{}-{name}", std::process::id()));
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        zip.finish().unwrap();
        path
    }

    /// Found by fuzzing (fuzz target `ckpt`): a BINUNICODE declaring 4 GiB made candle allocate it before reading.
    /// Both readers of PyTorch zips (WavTokenizer's `.ckpt`, DAC's `.pth`) now say what is wrong instead.
    #[test]
    fn lying_pickle_string_length_is_an_error() {
        let pickle = b"\x80\x02}q\x00X\xff\xff\xff\xffabc";
        let ckpt = zip_with_pickle("lying.ckpt", pickle);
        let msg = crate::convert::wavtokenizer::read_ckpt(&ckpt).unwrap_err().to_string();
        assert!(msg.contains("lying.ckpt") && msg.contains("a string of 4294967295 bytes runs past"), "{msg}");
        let pth = zip_with_pickle("lying.pth", pickle);
        let msg = crate::convert::dac::read_pth(&pth).unwrap_err().to_string();
        assert!(msg.contains("lying.pth") && msg.contains("a string of 4294967295 bytes runs past"), "{msg}");
        let _ = std::fs::remove_file(ckpt);
        let _ = std::fs::remove_file(pth);
    }

    /// The fuzzer's input had a wrong CRC too: reading the entry to its end fails, which must not hide the lie.
    #[test]
    fn lying_string_length_in_an_entry_with_a_bad_crc_is_an_error() {
        let path = zip_with_pickle("bad_crc.ckpt", b"\x80\x02}q\x00X\xff\xff\xff\xffabc");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xff; // CRC-32 in the local header
        let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        bytes[central + 16] ^= 0xff; // and in the central directory
        std::fs::write(&path, &bytes).unwrap();
        let msg = crate::convert::wavtokenizer::read_ckpt(&path).unwrap_err().to_string();
        assert!(msg.contains("a string of 4294967295 bytes runs past"), "{msg}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn wide_long1_is_an_error() {
        let mut pickle = b"\x80\x02\x8a\x20".to_vec();
        pickle.extend_from_slice(&[1; 32]);
        pickle.push(b'.');
        let path = zip_with_pickle("wide_long.ckpt", &pickle);
        let msg = crate::convert::wavtokenizer::read_ckpt(&path).unwrap_err().to_string();
        assert!(msg.contains("a 32-byte LONG1 integer"), "{msg}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn well_formed_pickles_pass() {
        // A dict {'a': 'bc', 'n': 2**40 as LONG1, 'f': 1.5}, then STOP.
        let mut pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00aX\x02\x00\x00\x00bcX\x01\x00\x00\x00n\x8a\x06".to_vec();
        pickle.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        pickle.extend_from_slice(b"X\x01\x00\x00\x00fG?\xf8\x00\x00\x00\x00\x00\x00u.");
        let path = zip_with_pickle("fine.ckpt", &pickle);
        assert!(check_pickles(&path).is_ok());
        let _ = std::fs::remove_file(path);
    }
}
