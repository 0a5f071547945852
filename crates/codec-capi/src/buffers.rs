//! C's pointers as Rust references and slices, each checked: NULL (except an output buffer of capacity 0, the size
//! query) and lengths beyond what memory can hold are errors naming the argument. The caller vouches for the rest
//! (pointers to live, non-overlapping memory of the stated length), as codec.h says.

use std::ffi::{c_char, CStr};

use crate::status::{Failure, Outcome, Status};

pub unsafe fn deref<'a, T>(ptr: *const T, what: &str) -> Outcome<&'a T> {
    ptr.as_ref().ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

pub unsafe fn deref_mut<'a, T>(ptr: *mut T, what: &str) -> Outcome<&'a mut T> {
    ptr.as_mut().ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// A NUL-terminated UTF-8 string.
pub unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Outcome<&'a str> {
    deref(ptr, what)?;
    CStr::from_ptr(ptr).to_str().map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// The `len` values of an input array.
pub unsafe fn input<'a, T>(ptr: *const T, len: usize, what: &str) -> Outcome<&'a [T]> {
    deref(ptr, what)?;
    addressable::<T>(len, what)?;
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// The `len` values of an array the call writes.
pub unsafe fn input_mut<'a, T>(ptr: *mut T, len: usize, what: &str) -> Outcome<&'a mut [T]> {
    deref_mut(ptr, what)?;
    addressable::<T>(len, what)?;
    Ok(std::slice::from_raw_parts_mut(ptr, len))
}

/// An output buffer of `capacity` values; NULL with capacity 0 is the size query.
pub unsafe fn output<'a, T>(ptr: *mut T, capacity: usize, what: &str) -> Outcome<&'a mut [T]> {
    match (ptr.is_null(), capacity) {
        (true, 0) => Ok(&mut []),
        (true, _) => Err(Failure::invalid(format!("{what} is NULL but its capacity is {capacity}"))),
        (false, _) => input_mut(ptr, capacity, what),
    }
}

/// An error unless `len` values of `T` fit the address space (a slice's requirement).
fn addressable<T>(len: usize, what: &str) -> Outcome<()> {
    match len.checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => Ok(()),
        _ => Err(Failure::invalid(format!("{what}: {len} values are more than memory can hold"))),
    }
}

/// `CODEC_ERR_BUFFER_TOO_SMALL` unless `out` holds `needed` values (the caller has set the needed count).
pub fn reserve<T>(out: &[T], needed: usize, what: &str) -> Outcome<()> {
    if out.len() >= needed {
        return Ok(());
    }
    Err(Failure::new(Status::BufferTooSmall, format!("{what} holds {} values; {needed} are needed", out.len())))
}

/// Copies `data` to the start of `out`, which [`reserve`] sized for it beforehand.
pub fn deliver<T: Copy>(data: &[T], out: &mut [T], what: &str) -> Outcome<()> {
    let room = out.len();
    let target = out.get_mut(..data.len()).ok_or_else(|| {
        Failure::new(Status::Internal, format!("{what}: {} values came out, more than the {room} reserved", data.len()))
    })?;
    target.copy_from_slice(data);
    Ok(())
}

/// `what`, indexed when it is one of a batch: `codes[2]`.
pub fn name(what: &str, i: usize, batch: usize) -> String {
    if batch == 1 {
        what.to_string()
    } else {
        format!("{what}[{i}]")
    }
}
