//! Statuses, this thread's last error, and the guard every entry point runs its body in: no panic crosses into C,
//! and every failure leaves its status and message for `codec_last_status` / `codec_last_error`.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use codec_rs::Error;

/// `codec_status` of include/codec.h.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    InvalidArg = 1,
    Io = 2,
    Model = 3,
    Unsupported = 4,
    BufferTooSmall = 5,
    Internal = 6,
}

/// Why a call failed: the status it returns and the message `codec_last_error` gives.
#[derive(Debug)]
pub struct Failure {
    pub status: Status,
    pub message: String,
}

impl Failure {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArg, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Io { .. } => Status::Io,
            Error::ModelFile { .. } | Error::Convert { .. } | Error::Hub(_) => Status::Model,
            Error::Audio { .. } | Error::Codes { .. } | Error::InvalidArgument(_) => Status::InvalidArg,
            Error::Unsupported(_) => Status::Unsupported,
            Error::Tensor { .. } => Status::Internal,
        };
        Failure::new(status, e.to_string())
    }
}

pub type Outcome<T> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<(Status, CString)> = RefCell::new((Status::Ok, CString::default()));
    /// The message and place of this thread's last panic, left by the panic hook for the guard that catches it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn record(status: Status, message: &str) {
    // A C string ends at the first NUL: one inside a message (from a hostile file's text) is shown escaped.
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // Unavailable only while this thread's locals are being destroyed, when nobody can read them any more.
    LAST_ERROR.try_with(|last| *last.borrow_mut() = (status, message)).ok();
}

/// This thread's last status (`Ok` after a call that succeeded).
pub fn last_status() -> Status {
    LAST_ERROR.try_with(|last| last.borrow().0).unwrap_or(Status::Ok)
}

/// This thread's last error message, `""` after a call that succeeded; valid until this thread's next call.
pub fn last_error() -> *const c_char {
    LAST_ERROR.try_with(|last| last.borrow().1.as_ptr()).unwrap_or(c"".as_ptr())
}

/// Runs an entry point's body: clears this thread's last error, and turns a failure — or a panic, which never
/// unwinds into C — into its status and message, returning `on_failure(status)`.
pub fn guard<T>(on_failure: impl FnOnce(Status) -> T, body: impl FnOnce() -> Outcome<T>) -> T {
    silence_panics();
    record(Status::Ok, "");
    LAST_PANIC.try_with(|p| p.borrow_mut().take()).ok();
    let result = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        // The hook saw the panic if it happened on this thread; one from a pool thread arrives as its payload only.
        let seen = LAST_PANIC.try_with(|p| p.borrow_mut().take()).ok().flatten();
        let message = seen.unwrap_or_else(|| {
            let text = payload.downcast_ref::<&str>().map(|s| s.to_string());
            text.or_else(|| payload.downcast_ref::<String>().cloned()).unwrap_or_default()
        });
        Err(Failure::new(Status::Internal, format!("internal error (please report): {message}")))
    });
    result.unwrap_or_else(|failure| {
        record(failure.status, &failure.message);
        on_failure(failure.status)
    })
}

/// [`guard`] for an entry point that returns only its status.
pub fn status(body: impl FnOnce() -> Outcome<()>) -> Status {
    guard(|status| status, || body().map(|()| Status::Ok))
}

/// Replaces the default panic hook, which prints to stderr (the library never writes to the host's streams), by
/// one that keeps the message and place for the guard. The hook belongs to this library's own Rust runtime.
fn silence_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            let message = format!("{}{place}", info.payload_as_str().unwrap_or("(no message)"));
            LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(message)).ok();
        }))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_message() -> String {
        // SAFETY: `last_error` points at this thread's NUL-terminated message.
        unsafe { std::ffi::CStr::from_ptr(last_error()) }.to_string_lossy().into_owned()
    }

    /// A panic, here or on a pool thread, becomes `Internal` with its message; the next success clears it.
    #[test]
    fn panics_become_internal_errors() {
        assert_eq!(status(|| panic!("boom {}", 7)), Status::Internal);
        assert_eq!(last_status(), Status::Internal);
        let message = last_message();
        assert!(message.starts_with("internal error (please report): boom 7 at "), "{message}");
        assert!(message.contains("status.rs"), "{message}");

        let from_pool = status(|| {
            rayon::scope(|s| s.spawn(|_| panic!("in the pool")));
            Ok(())
        });
        assert_eq!(from_pool, Status::Internal);
        assert!(last_message().contains("in the pool"), "{}", last_message());

        assert_eq!(status(|| Ok(())), Status::Ok);
        assert_eq!((last_status(), last_message()), (Status::Ok, String::new()));
    }

    #[test]
    fn errors_map_to_statuses_with_their_message() {
        let io = Error::io("/x/model.gguf", std::io::Error::from(std::io::ErrorKind::NotFound));
        let cases = [
            (io, Status::Io),
            (Error::model_file("m.gguf", "truncated"), Status::Model),
            (Error::convert("ckpt", "no weights"), Status::Model),
            (Error::Hub("timed out".into()), Status::Model),
            (Error::codes("c.npy", "bad"), Status::InvalidArg),
            (Error::audio("a.wav", "bad"), Status::InvalidArg),
            (Error::InvalidArgument("n_q".into()), Status::InvalidArg),
            (Error::Unsupported("stream".into()), Status::Unsupported),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            assert_eq!(status(|| Err(error.into())), want, "{text}");
            assert_eq!(last_message(), text);
        }
        assert_eq!(status(|| Err(Failure::invalid("a\0b"))), Status::InvalidArg);
        assert_eq!(last_message(), "a\\0b");
    }
}
