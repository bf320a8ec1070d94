//! The error type of the path manager and of automatic paths.

use std::{fmt, io};

/// Why a path-manager or routing request failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The request was refused before anything was sent, for the same
    /// reasons iproute2 refuses it (bad flag combination, bad id, ...).
    Invalid(String),
    /// The kernel answered the request with an error.
    Kernel {
        /// What was asked, e.g. `add endpoint 198.18.0.1 id 1 subflow`.
        request: String,
        /// The positive `errno` the kernel returned.
        errno: i32,
        /// The kernel's extended-ACK message, when it gave one.
        message: Option<String>,
    },
    /// A system call on the netlink socket failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel sent a message this code could not decode.
    Decode(String),
    /// The running kernel has no such generic netlink family or group.
    FamilyNotFound(String),
}

/// Result of the path-manager API.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The OS error number behind this error, if any (`EINVAL` for requests
    /// refused locally), so that C callers can set `errno`.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Invalid(_) => Some(libc::EINVAL),
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Decode(_) => Some(libc::EPROTO),
            Error::FamilyNotFound(_) => Some(libc::ENOENT),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// What to do about an errno the kernel returns to path-manager requests.
fn hint(errno: i32, message: Option<&str>) -> Option<&'static str> {
    match errno {
        libc::EPERM | libc::EACCES => Some("needs CAP_NET_ADMIN (run as root)"),
        libc::ERANGE if message.is_none_or(|m| m.contains("too many")) => Some(
            "the kernel keeps at most 8 endpoints per network namespace and refuses duplicates; \
             see `ip mptcp endpoint show`",
        ),
        _ if message == Some("invalid token") => Some(
            "no MPTCP connection has this token in this network namespace (tokens come from \
             the `created` event)",
        ),
        _ if message.is_some_and(|m| m.contains("userspace PM not selected")) => {
            Some("select the userspace path manager: `sysctl net.mptcp.pm_type=1`")
        }
        _ => None,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => f.write_str(why),
            Error::Kernel {
                request,
                errno,
                message,
            } => {
                let os = io::Error::from_raw_os_error(*errno);
                match message {
                    Some(message) => write!(f, "{request}: {message} ({os})")?,
                    None => write!(f, "{request}: {os}")?,
                }
                if let Some(hint) = hint(*errno, message.as_deref()) {
                    write!(f, ": {hint}")?;
                }
                Ok(())
            }
            Error::Io { context, source } => {
                write!(f, "{context}: {source}")?;
                if let Some(hint) = source.raw_os_error().and_then(|e| hint(e, None)) {
                    write!(f, ": {hint}")?;
                }
                Ok(())
            }
            Error::Decode(why) => write!(f, "cannot decode the kernel's netlink message: {why}"),
            Error::FamilyNotFound(what) => write!(
                f,
                "the kernel has no {what}: this kernel lacks MPTCP (CONFIG_MPTCP) or is older than 5.7"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno).kind(),
            None => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_says_what_to_do() {
        let e = Error::Kernel {
            request: "add endpoint 198.18.0.1 id 1 subflow".into(),
            errno: libc::EPERM,
            message: None,
        };
        let text = e.to_string();
        assert!(
            text.starts_with("add endpoint 198.18.0.1 id 1 subflow: "),
            "{text}"
        );
        assert!(
            text.ends_with("needs CAP_NET_ADMIN (run as root)"),
            "{text}"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn kernel_message_comes_first() {
        let e = Error::Kernel {
            request: "add endpoint".into(),
            errno: libc::ERANGE,
            message: Some("too many addresses or duplicate one".into()),
        };
        let text = e.to_string();
        assert!(
            text.contains("too many addresses or duplicate one"),
            "{text}"
        );
        assert!(text.contains("at most 8 endpoints"), "{text}");
    }
}
