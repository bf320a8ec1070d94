//! Automatic paths: keeps the host's MPTCP endpoints *and* per-source
//! routing in line with its interfaces, as NetworkManager and mptcpd's
//! `addr_adv` do for endpoints.
//!
//! For every selected interface that is up with a usable address (not
//! loopback, not link-local) it adds routing table `table_base + ifindex`
//! (the interface's subnet and its default gateway), a rule `from ADDRESS
//! lookup TABLE`, and an endpoint (`subflow` on a client, `signal` on a
//! server). When the interface or address goes away, those go too. It
//! watches rtnetlink for link, address and route changes, never touches
//! what it did not create, and removes what it created on exit. A dry run
//! prints the equivalent `ip` commands instead.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use mptcp_core::paths::{AutoPaths, Config, Role};
//!
//! let stop = AtomicBool::new(false); // set from a signal handler
//! let config = Config { role: Role::Client, exclude: vec!["docker*".into()], ..Config::default() };
//! let mut paths = AutoPaths::new(config)?;
//! paths.run_until(&stop, |action, error| match error {
//!     None => println!("{action}"),
//!     Some(e) => eprintln!("{action}: {e}"),
//! })?;
//! # Ok::<(), mptcp_core::pm::Error>(())
//! ```
#![forbid(unsafe_code)]

mod plan;
mod rtnl;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

pub use self::plan::{
    Action, Config, Interface, Owned, Role, Route, Rule, Snapshot, glob_match, plan, usable_address,
};
use self::rtnl::{Rtnl, Watcher};
use crate::pm::{Error, Limits, PathManager, Result};

/// How many routing tables past `table_base` are considered ours to read
/// (interface indexes grow as interfaces are created).
const TABLE_SPAN: u32 = 1 << 20;

/// How often `run_until` looks at its stop flag while nothing changes.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The automatic-paths daemon of the calling thread's network namespace.
#[derive(Debug)]
pub struct AutoPaths {
    config: Config,
    pm: PathManager,
    rtnl: Rtnl,
    owned: Owned,
    /// In a dry run, the limits the printed commands would have set.
    dry_limits: Option<Limits>,
}

/// Receives every action with its outcome (`None` when it succeeded or,
/// in a dry run, was only printed).
pub type Report<'a> = dyn FnMut(&Action, Option<&Error>) + 'a;

impl AutoPaths {
    /// Opens the netlink sockets (in the calling thread's namespace).
    pub fn new(config: Config) -> Result<Self> {
        Ok(AutoPaths {
            config,
            pm: PathManager::open()?,
            rtnl: Rtnl::open()?,
            owned: Owned::default(),
            dry_limits: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What it created and will remove on exit.
    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    /// Reads the kernel's state. In a dry run, what the printed commands
    /// would have created is added, so that nothing is printed twice.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let base = self.config.table_base;
        let routing = self.rtnl.read(base..base.saturating_add(TABLE_SPAN))?;
        let mut snapshot = Snapshot {
            interfaces: routing.interfaces,
            endpoints: self.pm.endpoints()?,
            routes: routing.routes,
            rules: routing.rules,
            limits: self.pm.limits()?,
        };
        if self.config.dry_run {
            for route in &self.owned.routes {
                if !snapshot.routes.contains(route) {
                    snapshot.routes.push(route.clone());
                }
            }
            for rule in &self.owned.rules {
                if !snapshot.rules.contains(rule) {
                    snapshot.rules.push(rule.clone());
                }
            }
            for endpoint in self.owned.endpoints.values() {
                if !snapshot.endpoints.contains(endpoint) {
                    snapshot.endpoints.push(endpoint.clone());
                }
            }
            if let Some(limits) = self.dry_limits {
                snapshot.limits = limits;
            }
        }
        Ok(snapshot)
    }

    /// One pass: reads the state, plans, applies (or prints) and returns
    /// the actions, each also given to `report`.
    pub fn sync(&mut self, report: &mut Report<'_>) -> Result<Vec<Action>> {
        self.pass(false, report)
    }

    /// Removes everything it created (what `run_until` does on exit).
    pub fn cleanup(&mut self, report: &mut Report<'_>) -> Result<Vec<Action>> {
        self.pass(true, report)
    }

    fn pass(&mut self, shutdown: bool, report: &mut Report<'_>) -> Result<Vec<Action>> {
        let now = self.snapshot()?;
        self.owned.forget_vanished(&now);
        let actions = plan::plan(&self.config, &now, &self.owned, shutdown);
        for action in &actions {
            let outcome = if self.config.dry_run {
                if let Action::SetLimits(limits) = action {
                    self.dry_limits = Some(*limits);
                }
                Ok(())
            } else {
                self.apply(action)
            };
            match outcome {
                Ok(()) => {
                    self.owned.record(action, now.limits);
                    report(action, None);
                }
                Err(e) => {
                    tracing::warn!(%action, error = %e, "automatic paths: action failed");
                    report(action, Some(&e));
                }
            }
        }
        Ok(actions)
    }

    fn apply(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::AddEndpoint { endpoint, .. } => self.pm.add_endpoint(endpoint),
            Action::RemoveEndpoint { id, .. } => match self.pm.remove_endpoint(*id) {
                // Someone removed it already.
                Err(Error::Kernel {
                    message: Some(m), ..
                }) if m == "address not found" => Ok(()),
                other => other,
            },
            Action::AddRoute(route) => self.rtnl.add_route(route),
            Action::RemoveRoute(route) => self.rtnl.remove_route(route),
            Action::AddRule(rule) => self.rtnl.add_rule(rule),
            Action::RemoveRule(rule) => self.rtnl.remove_rule(rule),
            Action::SetLimits(limits) => self.pm.set_limits(*limits),
        }
    }

    /// Syncs, then follows link, address and route changes until `stop` is
    /// set, then removes what it created. Failed actions are reported and
    /// retried at the next change; failing to read the state ends the run
    /// (after the cleanup).
    pub fn run_until(
        &mut self,
        stop: &AtomicBool,
        mut report: impl FnMut(&Action, Option<&Error>),
    ) -> Result<()> {
        // Subscribe before the first read so that no change falls in between.
        let result = Watcher::subscribe().and_then(|mut watcher| {
            self.sync(&mut report)?;
            while !stop.load(Ordering::Relaxed) {
                if watcher.wait(STOP_POLL)? {
                    self.sync(&mut report)?;
                }
            }
            Ok(())
        });
        let cleanup = self.cleanup(&mut report);
        result.and(cleanup.map(drop))
    }
}

impl Drop for AutoPaths {
    /// Removes what is left (after a panic or an early return), best effort.
    fn drop(&mut self) {
        if !self.owned.is_empty() && !self.config.dry_run {
            let _ = self.cleanup(&mut |action, error| {
                if let Some(e) = error {
                    tracing::warn!(%action, error = %e, "automatic paths: cleanup failed");
                }
            });
        }
    }
}
