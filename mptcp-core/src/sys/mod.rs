//! Raw kernel ABI: constants and `#[repr(C)]` structures from the Linux uapi
//! headers, with compile-time size and offset checks. Nothing here has
//! behaviour; the safe wrappers live in the modules named after each concept.
#![allow(missing_docs)]

pub mod socket;
pub mod info;
#[cfg(feature = "pm")]
pub mod pm;
