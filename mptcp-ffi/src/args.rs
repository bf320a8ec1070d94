//! The caller's arguments: pointers checked before they are borrowed,
//! strings read as UTF-8, and opaque handles given to C and taken back.

use std::ffi::{CStr, c_char, c_int};

use crate::error::{Error, Result};

/// A count or index as the `int` C functions return.
pub(crate) fn to_c_int(n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| Error::new(libc::EOVERFLOW, format!("{n} does not fit an int")))
}

/// Borrows `*ptr` for reading.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` that lives for `'a` and is not
/// written meanwhile.
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the caller guarantees that a non-NULL `ptr` is valid for 'a.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::invalid(format!("`{name}` is NULL")))
}

/// Borrows `*ptr` for writing.
///
/// # Safety
/// `ptr` is NULL or points to a valid `T` that lives for `'a` and is not
/// accessed by anything else meanwhile.
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees that a non-NULL `ptr` is valid and
    // unaliased for 'a.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::invalid(format!("`{name}` is NULL")))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("`{name}` is NULL")));
    }
    // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|_| Error::invalid(format!("`{name}` is not valid UTF-8")))
}

/// Hands a new opaque handle to the caller: checks `out`, then makes the
/// value with `open` and stores it, boxed, in `*out` (left untouched when
/// `open` fails). [`take_handle`] takes it back.
///
/// # Safety
/// `out` is NULL or writable.
pub(crate) unsafe fn open_handle<T>(
    out: *mut *mut T,
    open: impl FnOnce() -> Result<T>,
) -> Result<c_int> {
    // SAFETY: guaranteed by our caller.
    let out = unsafe { arg_mut(out, "out") }?;
    *out = Box::into_raw(Box::new(open()?));
    Ok(0)
}

/// Takes back a handle from [`open_handle`] (to free it, or to stop what it
/// runs first); `None` for NULL.
///
/// # Safety
/// `handle` is NULL or a handle [`open_handle`] stored and not taken back
/// before; it is invalid after this call.
pub(crate) unsafe fn take_handle<T>(handle: *mut T) -> Option<Box<T>> {
    // SAFETY: our caller passes a pointer from Box::into_raw in
    // open_handle, once.
    (!handle.is_null()).then(|| unsafe { Box::from_raw(handle) })
}
