//! A network test bed made of Linux network namespaces, for the tests,
//! benches, examples and the `mptcp demo` command of the MPTCP toolkit.
//!
//! A [`Host`] is an anonymous network namespace held by a file descriptor: it
//! has no global name, so parallel test runs never collide, and it vanishes
//! when the last handle is dropped (also on panic). Hosts are joined by
//! [`Link`]s (veth pairs) that can be rate limited with `tc tbf`, taken down
//! and brought back while traffic flows; a link with a one-way delay
//! ([`LinkSpec`], e.g. `"20:75ms"`) runs through a [`DelayLine`], a middle
//! host whose thread holds every frame for the delay. [`two_links`] and
//! [`relay_path`] (and [`two_links_with`], [`relay_path_with`] for links of
//! their own kinds) build ready topologies with MPTCP limits, endpoints and
//! per-source routing, all on addresses from 198.18.0.0/15.
//!
//! Needs `CAP_SYS_ADMIN` and `CAP_NET_ADMIN` in the current user namespace:
//! root, or an unprivileged user namespace (see [`enter_user_namespace`]).
//! `ip` and `tc` from iproute2 must be installed.
//!
//! ```no_run
//! use std::time::Duration;
//! use mptcp_testbed::{Proto, Transfer, two_links};
//!
//! mptcp_testbed::require_privileges()?; // says what is missing, if anything
//! let bed = two_links(2, Some(20))?; // client and server, 2 x 20 Mbit/s
//! let transfer = Transfer::start(
//!     &bed.client,
//!     &bed.server,
//!     bed.server_addr(),
//!     Proto::Mptcp,
//!     Duration::from_secs(3),
//! )?;
//! std::thread::sleep(Duration::from_secs(1));
//! bed.links[1].down()?; // the transfer goes on over link 0
//! let report = transfer.wait()?;
//! assert!(report.intact());
//! println!("{:.1} Mbit/s", report.mbit_per_s());
//! # Ok::<(), std::io::Error>(())
//! ```
#![deny(missing_docs)]

pub mod data;
mod delay;
mod host;
mod link;
mod privilege;
mod process;
pub mod rates;
mod stall;
mod sys;
mod topology;
pub mod transfer;

pub use data::Meter;
pub use delay::{DelayLine, DelayStats};
pub use host::Host;
pub use link::{Link, LinkSpec, Side};
pub use privilege::{
    NOBODY, UnprivilegedCopy, enter_user_namespace, in_initial_user_namespace, require_privileges,
    run_ignored_test,
};
pub use process::{CpuContention, Daemon, build_preload_library, danted_config, redsocks_config};
pub use stall::StallWatch;
pub use topology::{RelayPath, TwoLinks, relay_path, relay_path_with, two_links, two_links_with};
pub use transfer::{Proto, Transfer, TransferReport};
