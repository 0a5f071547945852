//! A guard run on a torch zip checkpoint (`.pth`, `.ckpt`) before candle's pickle reader sees it.
//!
//! candle builds the pickle's objects as one owned tree (`pickle::Object`) and copies a subtree on every memo
//! `GET`/`PUT`. Building, copying, printing and dropping that tree recurse once per nesting level, so a pickle that
//! nests lists a million deep overflows the stack, and a few dozen `GET`s of a memoised list holding itself twice
//! build a tree of 2^n nodes. This pass replays the opcodes candle understands on a stack of (depth, node count)
//! pairs instead of objects — flat, no recursion, memory bounded by the stack length — and refuses the file once
//! either exceeds a limit no real checkpoint comes near, or an argument lies about its size (a string longer than
//! the pickle, an integer wider than candle reads).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::{Error, Result};

/// Nesting a checkpoint needs: a state dict's tensor is about 6 levels deep, a Lightning checkpoint's optimizer state
/// about 10. Deep enough that no real file fails, shallow enough that candle's recursion stays within a small stack.
const MAX_DEPTH: u32 = 256;

/// Objects candle may build (each memo copy counts again): a checkpoint with thousands of tensors builds about a
/// million. At roughly 60 bytes an object, this caps the pickle's memory near 1 GB.
const MAX_OBJECTS: u64 = 16_000_000;

/// Checks every `*data.pkl` in the torch zip `path` (the entries candle reads) against the limits above.
pub fn check_torch_zip(path: &Path) -> Result<()> {
    let err = |msg: String| Error::convert(path, msg);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| err(format!("not a PyTorch zip checkpoint ({e})")))?;
    let pickles: Vec<String> = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).and_then(|n| n.ok()).map(|n| n.to_string()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    for name in pickles {
        let entry = zip.by_name(&name).map_err(|e| err(format!("cannot read {name}: {e}")))?;
        check_pickle(&mut BufReader::new(entry)).map_err(|msg| err(format!("{name}: {msg}")))?;
    }
    Ok(())
}

/// What candle would hold for one stack slot: the nesting depth of its object and how many objects it contains.
#[derive(Clone, Copy)]
struct Slot {
    depth: u32,
    objects: u64,
    mark: bool,
}

const LEAF: Slot = Slot { depth: 1, objects: 1, mark: false };

struct Replay {
    stack: Vec<Slot>,
    memo: HashMap<u32, Slot>,
    /// Objects built or copied so far.
    built: u64,
}

/// Why the replay ends: `Done` where candle's reader stops too (STOP, an opcode it does not know, a malformed
/// argument, the end of the data; it reports those itself), `Limit` where this guard refuses the file.
enum Halt {
    Done,
    Limit(String),
}

type Step<T> = std::result::Result<T, Halt>;

impl Replay {
    fn pop(&mut self) -> Step<Slot> {
        self.stack.pop().ok_or(Halt::Done)
    }

    fn pop_n(&mut self, n: usize) -> Step<Vec<Slot>> {
        let at = self.stack.len().checked_sub(n).ok_or(Halt::Done)?;
        Ok(self.stack.split_off(at))
    }

    /// candle's `pop_to_marker`: the slots above the last mark, mark removed.
    fn pop_to_mark(&mut self) -> Step<Vec<Slot>> {
        let at = self.stack.iter().rposition(|s| s.mark).ok_or(Halt::Done)?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Pushes a new container holding `items` (one level deeper than its deepest item).
    fn push_container(&mut self, items: &[Slot]) -> Step<()> {
        let depth = items.iter().map(|s| s.depth).max().unwrap_or(0).saturating_add(1);
        let objects = items.iter().fold(1u64, |n, s| n.saturating_add(s.objects));
        self.push(Slot { depth, objects, mark: false })
    }

    /// Adds `items` into the container on top of the stack (APPEND, SETITEM, ...).
    fn extend_top(&mut self, items: &[Slot]) -> Step<()> {
        let top = self.stack.last_mut().ok_or(Halt::Done)?;
        for item in items {
            top.depth = top.depth.max(item.depth.saturating_add(1));
            top.objects = top.objects.saturating_add(item.objects);
        }
        self.limits()
    }

    /// Pushes `slot`, counting `copied` objects built for it.
    fn push_copy(&mut self, slot: Slot, copied: u64) -> Step<()> {
        self.built = self.built.saturating_add(copied);
        self.stack.push(slot);
        self.limits()
    }

    fn push(&mut self, slot: Slot) -> Step<()> {
        self.push_copy(slot, 1)
    }

    fn limits(&self) -> Step<()> {
        if self.stack.last().is_some_and(|top| top.depth > MAX_DEPTH) {
            return Err(Halt::Limit(format!("the pickle nests objects more than {MAX_DEPTH} deep; not a checkpoint")));
        }
        if self.built > MAX_OBJECTS {
            return Err(Halt::Limit(format!("the pickle builds more than {MAX_OBJECTS} objects; not a checkpoint")));
        }
        Ok(())
    }
}

/// Replays the pickle's opcodes; `Err` names the limit exceeded.
fn check_pickle(r: &mut impl BufRead) -> std::result::Result<(), String> {
    let mut vm = Replay { stack: Vec::new(), memo: HashMap::new(), built: 0 };
    loop {
        match step(&mut vm, r) {
            Ok(()) => {}
            Err(Halt::Done) => return Ok(()),
            Err(Halt::Limit(msg)) => return Err(msg),
        }
    }
}

/// One opcode, with the stack effect candle gives it (`pickle::Stack::read`).
fn step(vm: &mut Replay, r: &mut impl BufRead) -> Step<()> {
    let op = read_n::<1>(r)?[0];
    match op {
        b'.' => Err(Halt::Done),
        0x80 => skip(r, 1),
        // BININT1, BININT2, BININT, BINFLOAT, LONG1, BINUNICODE: a value after its fixed-size or counted bytes.
        b'K' => skip(r, 1).and_then(|_| vm.push(LEAF)),
        b'M' => skip(r, 2).and_then(|_| vm.push(LEAF)),
        b'J' => skip(r, 4).and_then(|_| vm.push(LEAF)),
        b'G' => skip(r, 8).and_then(|_| vm.push(LEAF)),
        // candle shifts a LONG1 into an i64 (wider ones overflow) and allocates a BINUNICODE's declared length
        // before reading it (a lying length asked for 4 GiB; found by fuzzing): both are checked here first. A string
        // that cannot be read to its end (short, or the zip entry fails its CRC there) is the same lie.
        0x8a => {
            let n = read_n::<1>(r)?[0];
            if n > 8 {
                return Err(Halt::Limit(format!("a {n}-byte LONG1 integer (at most 8 bytes are supported)")));
            }
            skip(r, u64::from(n))?;
            vm.push(LEAF)
        }
        b'X' => {
            let len = u32::from_le_bytes(read_n::<4>(r)?);
            skip(r, u64::from(len))
                .map_err(|_| Halt::Limit(format!("a string of {len} bytes runs past the end of the pickle")))?;
            vm.push(LEAF)
        }
        // GLOBAL: module and class, each up to a newline.
        b'c' => {
            skip_line(r)?;
            skip_line(r)?;
            vm.push(LEAF)
        }
        // NONE, NEWTRUE, NEWFALSE, EMPTY_TUPLE/LIST/DICT, and DICT (which candle reads as an empty dict).
        b'N' | 0x88 | 0x89 | b')' | b']' | b'}' | b'd' => vm.push(LEAF),
        b'(' => vm.push_copy(Slot { depth: 0, objects: 0, mark: true }, 0),
        b't' => {
            let items = vm.pop_to_mark()?;
            vm.push_container(&items)
        }
        // TUPLE1..3.
        0x85..=0x87 => {
            let items = vm.pop_n(usize::from(op - 0x84))?;
            vm.push_container(&items)
        }
        // BINPERSID wraps one object; REDUCE, BUILD and NEWOBJ combine two.
        b'Q' => {
            let item = vm.pop()?;
            vm.push_container(&[item])
        }
        b'R' | b'b' | 0x81 => {
            let items = vm.pop_n(2)?;
            vm.push_container(&items)
        }
        // APPEND, SETITEM, APPENDS, SETITEMS.
        b'a' => {
            let item = vm.pop()?;
            vm.extend_top(&[item])
        }
        b's' => {
            let items = vm.pop_n(2)?;
            vm.extend_top(&items)
        }
        b'e' | b'u' => {
            let items = vm.pop_to_mark()?;
            vm.extend_top(&items)
        }
        // BINGET, LONG_BINGET push a copy of a memo entry; BINPUT, LONG_BINPUT store a copy of the top.
        b'h' | b'j' => {
            let id = memo_id(op == b'j', r)?;
            let slot = *vm.memo.get(&id).ok_or(Halt::Done)?;
            vm.push_copy(slot, slot.objects)
        }
        b'q' | b'r' => {
            let id = memo_id(op == b'r', r)?;
            let top = *vm.stack.last().ok_or(Halt::Done)?;
            vm.memo.insert(id, top);
            vm.built = vm.built.saturating_add(top.objects);
            vm.limits()
        }
        _ => Err(Halt::Done),
    }
}

fn read_n<const N: usize>(r: &mut impl Read) -> Step<[u8; N]> {
    let mut buf = [0u8; N];
    r.read_exact(&mut buf).map_err(|_| Halt::Done)?;
    Ok(buf)
}

fn memo_id(long: bool, r: &mut impl Read) -> Step<u32> {
    Ok(if long { u32::from_le_bytes(read_n::<4>(r)?) } else { u32::from(read_n::<1>(r)?[0]) })
}

fn skip(r: &mut impl Read, n: u64) -> Step<()> {
    match std::io::copy(&mut r.take(n), &mut std::io::sink()) {
        Ok(skipped) if skipped == n => Ok(()),
        _ => Err(Halt::Done),
    }
}

fn skip_line(r: &mut impl BufRead) -> Step<()> {
    loop {
        let buf = r.fill_buf().map_err(|_| Halt::Done)?;
        if buf.is_empty() {
            // candle accepts a last line without a newline.
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A torch-style zip (`archive/data.pkl`) holding `pickle`, as `model.{ext}` in a scratch directory of its own
    /// (removed when dropped).
    fn torch_zip(ext: &str, pickle: &[u8]) -> TorchZip {
        let dir = tempfile::Builder::new().prefix("codec-pickle-").tempdir().unwrap();
        let path = dir.path().join(format!("model.{ext}"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        zip.finish().unwrap();
        TorchZip { _dir: dir, path }
    }

    struct TorchZip {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    impl std::ops::Deref for TorchZip {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.path
        }
    }

    impl AsRef<Path> for TorchZip {
        fn as_ref(&self) -> &Path {
            &self.path
        }
    }

    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', depth));
        p.extend(std::iter::repeat_n(b'a', depth - 1));
        p.push(b'.');
        p
    }

    /// `[[]]` nested through MARK/APPENDS instead: `( ] ( ] ... e e`.
    fn nested_marks(depth: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']'];
        p.extend(std::iter::repeat_n([b'(', b']'], depth - 1).flatten());
        p.extend(std::iter::repeat_n(b'e', depth - 1));
        p.push(b'.');
        p
    }

    /// A list memoised, then `n` times a list holding the memoised one twice memoised in its place: 2^n objects
    /// from 9n bytes (candle has no POP, so the lists stay on the stack).
    fn doubling(n: usize) -> Vec<u8> {
        let mut p = vec![0x80, 2, b']', b'q', 0];
        p.extend(std::iter::repeat_n([b']', b'(', b'h', 0, b'h', 0, b'e', b'q', 0], n).flatten());
        p.push(b'.');
        p
    }

    fn convert_error(path: &Path) -> String {
        let out = path.with_extension("gguf");
        match crate::convert::convert(path, &out, &Default::default()) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("{}: converted", path.display()),
        }
    }

    #[test]
    fn deep_pickles_fail_cleanly_in_pth_and_ckpt() {
        // Runs on the test's own thread (2 MB stack): candle alone overflows it on these files.
        for pickle in [nested_lists(1_000_000), nested_marks(1_000_000)] {
            for ext in ["pth", "ckpt"] {
                let path = torch_zip(ext, &pickle);
                if ext == "ckpt" {
                    std::fs::write(path.with_file_name("config.yaml"), "model: {}\n").unwrap();
                }
                let msg = convert_error(&path);
                assert!(msg.starts_with(&format!("{}: cannot convert: ", path.display())), "{msg}");
                assert!(msg.contains("archive/data.pkl: the pickle nests objects more than 256 deep"), "{msg}");
            }
        }
    }

    #[test]
    fn exponential_memo_copies_are_refused() {
        let path = torch_zip("pth", &doubling(64));
        let msg = convert_error(&path);
        assert!(msg.contains("the pickle builds more than 16000000 objects"), "{msg}");
    }

    #[test]
    fn ordinary_pickles_pass() {
        // {'a': [1, 2], 'b': (None, True)} as protocol 2 writes it, memo included.
        let pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01K\x02eX\x01\x00\x00\x00bq\x03N\x88\x86q\x04u.";
        check_pickle(&mut &pickle[..]).unwrap();
        check_pickle(&mut &nested_lists(MAX_DEPTH as usize)[..]).unwrap();
        assert!(check_pickle(&mut &nested_lists(MAX_DEPTH as usize + 1)[..]).is_err());
        // Malformed input is left to candle, which reports it.
        check_pickle(&mut &b"\x80\x02]a"[..]).unwrap();
    }

    /// Found by fuzzing (target `ckpt`): a BINUNICODE declaring 4 GiB made candle allocate it before reading; both
    /// readers of torch zips say what is wrong instead, also when the entry's CRC is wrong too (the fuzzer's input).
    #[test]
    fn lying_string_lengths_are_an_error() {
        let pickle = b"\x80\x02}q\x00X\xff\xff\xff\xffabc";
        for ext in ["pth", "ckpt"] {
            let path = torch_zip(ext, pickle);
            let msg = check_torch_zip(&path).unwrap_err().to_string();
            assert!(msg.contains("model.") && msg.contains("a string of 4294967295 bytes runs past"), "{msg}");
        }
        let path = torch_zip("ckpt", pickle);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xff; // CRC-32 in the local header
        let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        bytes[central + 16] ^= 0xff; // and in the central directory
        std::fs::write(&path, &bytes).unwrap();
        let msg = check_torch_zip(&path).unwrap_err().to_string();
        assert!(msg.contains("a string of 4294967295 bytes runs past"), "{msg}");
    }

    #[test]
    fn wide_long1_is_an_error_and_sane_values_pass() {
        let mut pickle = b"\x80\x02\x8a\x20".to_vec();
        pickle.extend_from_slice(&[1; 32]);
        pickle.push(b'.');
        let msg = check_torch_zip(&torch_zip("ckpt", &pickle)).unwrap_err().to_string();
        assert!(msg.contains("a 32-byte LONG1 integer"), "{msg}");
        // {'a': 'bc', 'n': 2**40 as a 6-byte LONG1, 'f': 1.5}
        let mut pickle = b"\x80\x02}q\x00(X\x01\x00\x00\x00aX\x02\x00\x00\x00bcX\x01\x00\x00\x00n\x8a\x06".to_vec();
        pickle.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        pickle.extend_from_slice(b"X\x01\x00\x00\x00fG?\xf8\x00\x00\x00\x00\x00\x00u.");
        assert!(check_torch_zip(&torch_zip("ckpt", &pickle)).is_ok());
    }
}
