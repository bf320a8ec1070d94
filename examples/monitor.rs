//! Shows the path manager's state, then prints its events as they happen,
//! like `ip mptcp endpoint show; ip mptcp limits show; ip mptcp monitor`.
//!
//! ```sh
//! sudo cargo run --example monitor
//! ```
//! Runs in the network namespace it is started in (`ip netns exec NAME ...`).

use mptcp_core::pm::{EventListener, PathManager};

fn main() {
    if let Err(e) = run() {
        eprintln!("monitor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), mptcp_core::pm::Error> {
    let mut pm = PathManager::open()?;
    println!("limits: {}", pm.limits()?);
    for endpoint in pm.endpoints()? {
        println!("endpoint: {endpoint}");
    }
    // Subscribing needs CAP_NET_ADMIN; the error says so.
    for event in EventListener::subscribe()? {
        println!("{}", event?);
    }
    Ok(())
}
