//! Writing into the caller's memory: size-versioned structs (the caller
//! says how large its struct is; what fits is written), arrays, strings,
//! and the static name tables of the `*_name` functions.

use std::ffi::{CString, c_char, c_int};
use std::mem::size_of;
use std::ptr;

use crate::args::{arg_mut, to_c_int};
use crate::error::{Error, Result, call};

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
