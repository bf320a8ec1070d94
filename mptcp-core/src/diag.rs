//! MPTCP connections on this host from the kernel socket diagnostics: owned by the CLI helper.
