//! What the running kernel offers for MPTCP.

use std::ffi::{c_char, c_int};

use mptcp_core::probe::{Availability, Probe};

use crate::error::call;
use crate::out::{Plain, Versioned, fill_text, write_str, write_versioned};

/// What the running kernel offers for MPTCP in the calling thread's network
/// namespace. Size-versioned like `mptcp_info_t`: set
/// `struct_size = sizeof(mptcp_probe_t)`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mptcp_probe_t {
    /// In: `sizeof(mptcp_probe_t)` as the caller knows it. Out: bytes written.
    pub struct_size: usize,
    /// Kernel major version (6 in 6.18.2); 0 when unparsable.
    pub kernel_major: u32,
    /// Kernel minor version.
    pub kernel_minor: u32,
    /// Kernel patch level.
    pub kernel_patch: u32,
    /// 0 when MPTCP IPv4 sockets can be created, else the negative errno of
    /// the refusal (`mptcp_refusal_advice` explains it) or of the failed test.
    pub ipv4: i32,
    /// The same for IPv6.
    pub ipv6: i32,
    /// `net.mptcp.enabled`: 1, 0, or -1 when unreadable.
    pub enabled: i32,
    /// The kernel release (`uname -r`).
    pub kernel_release: [c_char; 65],
    /// The path manager (`kernel`, `userspace`), empty when unknown.
    pub path_manager: [c_char; 32],
    /// The packet scheduler (`default`), empty when unknown.
    pub scheduler: [c_char; 32],
}

// SAFETY: repr(C), integers and integer arrays only.
unsafe impl Plain for mptcp_probe_t {}
// SAFETY: Plain, and the first field is `struct_size: usize`.
unsafe impl Versioned for mptcp_probe_t {}

fn availability_code(availability: &Availability) -> i32 {
    match availability {
        Availability::Available => 0,
        Availability::Refused(reason) => -reason.errno(),
        Availability::Unknown(_) => -libc::EIO,
    }
}

impl From<&Probe> for mptcp_probe_t {
    fn from(probe: &Probe) -> Self {
        let mut out = mptcp_probe_t::zeroed();
        if let Some(kernel) = probe.kernel {
            out.kernel_major = kernel.major;
            out.kernel_minor = kernel.minor;
            out.kernel_patch = kernel.patch;
        }
        out.ipv4 = availability_code(&probe.ipv4);
        out.ipv6 = availability_code(&probe.ipv6);
        out.enabled = probe.enabled.map_or(-1, i32::from);
        fill_text(&mut out.kernel_release, &probe.kernel_release);
        fill_text(
            &mut out.path_manager,
            probe.path_manager.as_deref().unwrap_or(""),
        );
        fill_text(&mut out.scheduler, probe.scheduler.as_deref().unwrap_or(""));
        out
    }
}

/// Probes the kernel from the calling thread (availability by creating a
/// test socket, the `net.mptcp.*` sysctls, version) into `*probe`. Returns
/// 0 or a negative errno (only for a bad argument: what cannot be read is
/// reported as unknown).
///
/// # Safety
/// `probe` is NULL or writable for `probe->struct_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_probe(probe: *mut mptcp_probe_t) -> c_int {
    call("mptcp_probe", || {
        let value = mptcp_probe_t::from(&Probe::read());
        // SAFETY: guaranteed by the caller.
        unsafe { write_versioned(probe, &value, "probe") }?;
        Ok(0)
    })
}

/// Writes the probe as readable text, one `name: value` per line with every
/// `net.mptcp.*` sysctl (what `mptcp probe` prints), into `buf` like
/// `snprintf`: returns the full length; a return `>= len` means truncated.
/// `buf` may be NULL with `len` 0 to ask for the length.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or writable for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mptcp_probe_text(buf: *mut c_char, len: usize) -> c_int {
    call("mptcp_probe_text", || {
        let text = Probe::read().to_string();
        // SAFETY: guaranteed by the caller.
        unsafe { write_str(buf, len, text.as_bytes()) }
    })
}
