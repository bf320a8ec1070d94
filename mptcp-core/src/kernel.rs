//! The running kernel's version, which decides which MPTCP socket options
//! exist (`MPTCP_INFO` 5.16, `MPTCP_FULL_INFO` 6.5, `TCP_IS_MPTCP` 6.10).
//! The same in every network namespace.
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::fmt;
use std::io;

/// A kernel version, `major.minor.patch` from `uname -r`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelVersion {
    /// Major version (6 in 6.18.2).
    pub major: u32,
    /// Minor version (18 in 6.18.2).
    pub minor: u32,
    /// Patch level (2 in 6.18.2; 0 when absent).
    pub patch: u32,
}

impl KernelVersion {
    /// Builds a version.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// The running kernel's version (`uname(2)`). Allocation-free.
    pub fn running() -> io::Result<Self> {
        with_release(|release| release.to_str().ok().and_then(Self::parse))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable kernel release"))
    }

    /// Parses the start of a release string such as `6.18.44-fc-v669` or
    /// `5.15.0-91-generic`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|part| part.parse::<u32>().ok());
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Calls `f` with the kernel release string from `uname(2)`, without
/// allocating.
pub(crate) fn with_release<R>(f: impl FnOnce(&CStr) -> R) -> io::Result<R> {
    crate::sys::os::with_kernel_release(f)
}
