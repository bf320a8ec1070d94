//! The one path every exported function takes: [`call`] catches panics and
//! turns errors into a negative `errno` plus a message kept per thread;
//! the argument helpers check every pointer; the output helpers write
//! size-versioned structs, arrays and strings into the caller's memory;
//! the handle helpers give opaque handles to C and take them back.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::mem::size_of;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;

use mptcp_core::{pm, relay, socket};

/// An error for the C caller: a positive `errno` (returned negated) and
/// the message `mptcp_last_error()` gives.
#[derive(Debug)]
pub(crate) struct Error {
    errno: i32,
    message: String,
}

/// `Result` with the C-facing [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(errno: i32, message: impl Into<String>) -> Self {
        Error {
            errno,
            message: message.into(),
        }
    }

    /// `EINVAL` with a message naming the bad argument.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(libc::EINVAL, message)
    }
}

impl From<socket::Error> for Error {
    fn from(err: socket::Error) -> Self {
        match err {
            // An address that does not parse ("host:http", a port past
            // 65535) is `InvalidInput`: EINVAL, as io errors map.
            socket::Error::Io(err) => err.into(),
            err => Error::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string()),
        }
    }
}

impl From<pm::Error> for Error {
    fn from(err: pm::Error) -> Self {
        Error::new(err.raw_os_error().unwrap_or(libc::EIO), err.to_string())
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        let errno = err.raw_os_error().unwrap_or(match err.kind() {
            io::ErrorKind::InvalidInput => libc::EINVAL,
            io::ErrorKind::Unsupported => libc::EOPNOTSUPP,
            _ => libc::EIO,
        });
        Error::new(errno, err.to_string())
    }
}

impl From<relay::ConfigError> for Error {
    fn from(err: relay::ConfigError) -> Self {
        Error::invalid(err.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread. Replaced only by
    /// the next failure, so a pointer to it stays valid across successful
    /// calls.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn store(message: &str) {
    // An interior NUL would cut the C string short; no message of ours has
    // one, but a kernel or config text might.
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = Some(message));
}

/// Calls `f` with `LAST_ERROR`'s message.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&CStr) -> R) -> R {
    LAST_ERROR.with(|last| f(last.borrow().as_deref().unwrap_or(c"")))
}

/// The pointer to the last message, valid until the next failure on this
/// thread (the `CString` is only replaced on failure, and its heap buffer
/// does not move while it lives).
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_deref().unwrap_or(c"").as_ptr())
}

/// Runs the body of an exported function: its value on success, the
/// negated `errno` on error (the message stored for `mptcp_last_error`),
/// `-EIO` with a message if it panicked. No panic crosses into C.
pub(crate) fn call(function: &str, f: impl FnOnce() -> Result<c_int>) -> c_int {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(err)) => {
            store(&format!("{function}: {}", err.message));
            -err.errno
        }
        Err(payload) => {
            let what = mptcp_core::panic_message(&*payload).unwrap_or("unknown panic");
            // Storing must not panic again: `store` only allocates.
            store(&format!(
                "{function}: internal error in libmptcp (please report it): {what}"
            ));
            -libc::EIO
        }
    }
}

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

/// Structs made of integers and arrays of integers only, so that all-zero
/// bytes are a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs whose fields are all integers,
/// arrays of integers, or `sockaddr_storage`.
pub(crate) unsafe trait Plain: Sized {
    /// All fields zero.
    fn zeroed() -> Self {
        // SAFETY: the trait's contract: all-zero bytes are a valid `Self`.
        unsafe { std::mem::zeroed() }
    }
}

/// Structs whose first field is `size_t struct_size`, set by the caller to
/// the size it knows; the library writes only that many bytes, so that
/// fields appended in later versions never overrun an older program's
/// struct.
///
/// # Safety
/// The struct is [`Plain`] and its first field is a `usize` `struct_size`.
pub(crate) unsafe trait Versioned: Plain {}

/// Writes `value` into the caller's size-versioned struct: the first
/// `min(out->struct_size, sizeof value)` bytes, then sets `struct_size` to
/// the count written.
///
/// # Safety
/// `out` is NULL or points to writable memory of at least `out->struct_size`
/// bytes, aligned for `size_t`.
pub(crate) unsafe fn write_versioned<T: Versioned>(
    out: *mut T,
    value: &T,
    name: &str,
) -> Result<()> {
    if out.is_null() {
        return Err(Error::invalid(format!("`{name}` is NULL")));
    }
    // SAFETY: non-NULL; the caller guarantees the struct starts with a
    // readable `size_t struct_size`.
    let caller_size = unsafe { ptr::read(out.cast::<usize>()) };
    if caller_size < size_of::<usize>() {
        return Err(Error::invalid(format!(
            "`{name}->struct_size` is {caller_size}: set it to sizeof(*{name}) before the call"
        )));
    }
    let written = caller_size.min(size_of::<T>());
    // SAFETY: `value` is a `T` (readable for size_of::<T>() >= `written`
    // bytes); the caller guarantees `out` is writable for `caller_size` >=
    // `written` bytes; they cannot overlap (`value` is our own).
    unsafe {
        ptr::copy_nonoverlapping(ptr::from_ref(value).cast::<u8>(), out.cast::<u8>(), written);
        ptr::write(out.cast::<usize>(), written);
    }
    Ok(())
}

/// Writes `items`, each converted to its C struct `T`, into the caller's
/// array of `*count` elements of `elem_size` bytes each (the caller's
/// `sizeof`, so that elements can grow): the first `min(elem_size,
/// sizeof T)` bytes of each. Sets `*count`
/// to the number of items there are (more than the capacity when the array
/// was too small: call again with a larger one) and returns the number
/// written. With `*count == 0`, `array` may be NULL: a size query.
///
/// # Safety
/// `count` is NULL or valid for reading and writing; `array` is NULL or
/// writable for `*count * elem_size` bytes.
pub(crate) unsafe fn write_array<S, T>(
    array: *mut T,
    elem_size: usize,
    count: *mut usize,
    items: &[S],
    name: &str,
) -> Result<c_int>
where
    T: Plain + for<'a> From<&'a S>,
{
    // SAFETY: the caller guarantees `count` is NULL or valid.
    let count = unsafe { arg_mut(count, "count") }?;
    let capacity = *count;
    if capacity > 0 {
        if array.is_null() {
            return Err(Error::invalid(format!(
                "`{name}` is NULL but `*count` is {capacity}"
            )));
        }
        if elem_size == 0 {
            return Err(Error::invalid(format!(
                "the element size is 0: pass sizeof(*{name})"
            )));
        }
    }
    let written = capacity.min(items.len());
    let bytes = elem_size.min(size_of::<T>());
    for (i, item) in items.iter().take(written).enumerate() {
        let item = T::from(item);
        // SAFETY: i < capacity, so the destination lies within the
        // `capacity * elem_size` writable bytes the caller guarantees;
        // `item` is readable for size_of::<T>() >= `bytes`; no overlap.
        unsafe {
            let dst = array.cast::<u8>().add(i * elem_size);
            ptr::copy_nonoverlapping(ptr::from_ref(&item).cast::<u8>(), dst, bytes);
        }
    }
    *count = items.len();
    to_c_int(written)
}

/// Copies `text` into the caller's buffer of `len` bytes like `snprintf`:
/// truncated to `len - 1` bytes and NUL-terminated when `len > 0`. Returns
/// the full length (without the NUL), so a return `>= len` means
/// "truncated, call again with a buffer of return + 1 bytes".
///
/// # Safety
/// `buf` is NULL (then `len` must be 0) or writable for `len` bytes.
pub(crate) unsafe fn write_str(buf: *mut c_char, len: usize, text: &[u8]) -> Result<c_int> {
    if len > 0 {
        if buf.is_null() {
            return Err(Error::invalid(format!("`buf` is NULL but `len` is {len}")));
        }
        let copied = text.len().min(len - 1);
        // SAFETY: `buf` is writable for `len` > `copied` bytes; `text` is
        // readable for `copied` bytes; they do not overlap (`text` is ours).
        unsafe {
            ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, copied);
            buf.add(copied).write(0);
        }
    }
    to_c_int(text.len())
}

/// Copies `text` into a fixed-size `char` array field, truncated and always
/// NUL-terminated.
pub(crate) fn fill_text<const N: usize>(field: &mut [c_char; N], text: &str) {
    let copied = text.len().min(N.saturating_sub(1));
    for (dst, src) in field.iter_mut().zip(&text.as_bytes()[..copied]) {
        *dst = *src as c_char;
    }
    if let Some(end) = field.get_mut(copied) {
        *end = 0;
    }
}

/// Static C strings for a fixed set of names (kinds, reasons), built once.
pub(crate) struct NameTable(std::sync::OnceLock<Vec<CString>>);

impl NameTable {
    pub(crate) const fn new() -> Self {
        NameTable(std::sync::OnceLock::new())
    }

    /// The body of the exported function `function` that names things:
    /// the name of `names` at the index `index` finds, as a pointer valid
    /// for the life of the process; NULL when `index` finds none or one out
    /// of range. Runs through [`call`], so a panic stays on this side.
    pub(crate) fn name(
        &self,
        function: &str,
        names: impl FnOnce() -> Vec<String>,
        index: impl FnOnce() -> Option<usize>,
    ) -> *const c_char {
        let mut name = ptr::null();
        call(function, || {
            if let Some(index) = index() {
                let table = self.0.get_or_init(|| {
                    names()
                        .into_iter()
                        .map(|name| CString::new(name).unwrap_or_default())
                        .collect()
                });
                name = table.get(index).map_or(ptr::null(), |name| name.as_ptr());
            }
            Ok(0)
        });
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        with_last_error(|message| message.to_string_lossy().into_owned())
    }

    #[test]
    fn a_panic_becomes_eio_with_a_message() {
        let rc = call("mptcp_test", || panic!("boom {}", 42));
        assert_eq!(rc, -libc::EIO);
        assert!(
            last().starts_with("mptcp_test: internal error in libmptcp"),
            "{}",
            last()
        );
        assert!(last().ends_with("boom 42"), "{}", last());
    }

    #[test]
    fn errors_keep_their_errno_and_successes_keep_the_message() {
        assert_eq!(
            call("f", || Err(Error::new(libc::ENOENT, "gone"))),
            -libc::ENOENT
        );
        assert_eq!(call("g", || Ok(7)), 7);
        assert_eq!(last(), "f: gone");
        // An interior NUL does not cut the message short.
        call("h", || Err(Error::invalid("a\0b")));
        assert_eq!(last(), "h: a b");
    }

    #[test]
    fn texts_are_truncated_and_terminated() {
        let mut field = [0x55 as c_char; 4];
        fill_text(&mut field, "abcdef");
        assert_eq!(field, [b'a' as c_char, b'b' as c_char, b'c' as c_char, 0]);
        let mut buf = [0x55 as c_char; 3];
        // SAFETY: `buf` is writable for its length.
        let full = unsafe { write_str(buf.as_mut_ptr(), buf.len(), b"xyz") };
        assert_eq!(full.unwrap(), 3);
        assert_eq!(buf, [b'x' as c_char, b'y' as c_char, 0]);
    }
}
