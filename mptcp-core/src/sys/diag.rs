//! Socket diagnostics (inet_diag / sock_diag) ABI: owned by the CLI helper.
