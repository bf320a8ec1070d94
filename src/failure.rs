//! Errors of the `mptcp` command and the exit codes scripts can rely on.

use std::fmt;
use std::io;

/// Exit code: the operation failed (the message says why and what to do).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line is wrong (clap uses it for its own errors too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: missing privilege, or the kernel lacks what the command needs.
pub const EXIT_UNSUPPORTED: u8 = 3;

/// The `--help` text that documents the exit codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the operation failed
  2  usage error (bad arguments)
  3  missing privilege (run as root / CAP_NET_ADMIN) or unsupported kernel
`mptcp run` exits with the program's own code (126/127: it could not be started).";

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// One of the `EXIT_*` codes (or a program's exit code for `run`).
    pub code: u8,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// The result of a subcommand.
pub type CmdResult = Result<(), Failure>;

impl Failure {
    /// The operation failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }

    /// The command line is wrong in a way clap cannot see.
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// Missing privilege or kernel support.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self {
            code: EXIT_UNSUPPORTED,
            message: message.into(),
        }
    }

    /// An I/O error while doing `what`, with the exit code and a hint chosen
    /// from the errno: privilege errors and missing kernel support exit 3.
    pub fn io(what: impl fmt::Display, err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Self::unsupported(format!(
                "{what}: {err}\n  hint: this needs CAP_NET_ADMIN: run it as root (sudo mptcp ...)"
            )),
            Some(libc::EPROTONOSUPPORT | libc::ENOPROTOOPT | libc::EAFNOSUPPORT) => {
                Self::unsupported(format!(
                    "{what}: {err}\n  hint: the kernel lacks MPTCP support here; `mptcp probe` says what to change"
                ))
            }
            _ => Self::failed(format!("{what}: {err}")),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
