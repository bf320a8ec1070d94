//! `mptcp endpoint ...` and `mptcp limits ...`: the kernel path manager,
//! with the syntax and output of `ip mptcp endpoint` / `ip mptcp limits`.

use std::net::IpAddr;

use clap::{Args, Subcommand};
use mptcp_core::pm::{self, Endpoint, EndpointFlags, Limits, PathManager};
use serde_json::json;

use crate::failure::{CmdResult, EXIT_UNSUPPORTED, Failure};

/// `mptcp endpoint`.
#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Add an endpoint: ADDR [dev IFNAME] [id N] [port P] [signal] [subflow]
    /// [backup] [fullmesh] [laminar]
    #[command(
        after_help = "Examples:\n  mptcp endpoint add 198.18.1.1 dev eth1 subflow\n  \
                            mptcp endpoint add 198.18.1.2 id 5 signal port 8080 backup"
    )]
    Add {
        /// ADDR followed by keywords, as with `ip mptcp endpoint add`
        #[arg(required = true, num_args = 1.., value_name = "ADDR [KEYWORDS]")]
        words: Vec<String>,
    },
    /// Delete an endpoint: `id N`, `ADDR`, or `id 0 ADDR`
    #[command(visible_alias = "delete")]
    Del {
        /// `id N`, or an address
        #[arg(required = true, num_args = 1.., value_name = "id N | ADDR")]
        words: Vec<String>,
    },
    /// List the endpoints (like `ip mptcp endpoint show`)
    #[command(visible_alias = "show")]
    List {
        /// Print a JSON array, the same as `ip -j mptcp endpoint show`
        #[arg(short, long)]
        json: bool,
    },
    /// Delete every endpoint (the limits stay as they are)
    Flush,
    /// Change flags: id N [backup|nobackup] [fullmesh|nofullmesh]
    #[command(visible_alias = "change")]
    Set {
        /// `id N` followed by flag changes
        #[arg(required = true, num_args = 3.., value_name = "id N FLAG")]
        words: Vec<String>,
    },
}

/// `mptcp limits`.
#[derive(Args, Debug)]
pub struct LimitsArgs {
    /// Print JSON
    #[arg(short, long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<LimitsCommand>,
}

/// An endpoint as `ip -j mptcp endpoint show` gives it, from the line both
/// print (`198.18.5.1 id 1 subflow backup dev wan1`): the address, `id`,
/// `port` and `dev` with their values, each flag as `true`.
fn ip_json(line: &str) -> serde_json::Value {
    let mut words = line.split_whitespace();
    let mut object = serde_json::Map::new();
    if let Some(address) = words.next() {
        object.insert("address".into(), address.into());
    }
    while let Some(word) = words.next() {
        let value = match word {
            "id" | "port" | "dev" => {
                let Some(value) = words.next() else { break };
                match value.parse::<u64>() {
                    Ok(n) if word != "dev" => n.into(),
                    _ => value.into(),
                }
            }
            _ => true.into(),
        };
        object.insert(word.into(), value);
    }
    object.into()
}

/// `mptcp limits set`.
#[derive(Subcommand, Debug)]
pub enum LimitsCommand {
    /// Set limits: [subflows N] [add_addr_accepted N] (0 to 8; unnamed ones
    /// keep their value)
    #[command(after_help = "Example:\n  mptcp limits set subflows 2 add_addr_accepted 2")]
    Set {
        /// `subflows N` and/or `add_addr_accepted N`
        #[arg(required = true, num_args = 2.., value_name = "KEY N")]
        words: Vec<String>,
    },
}

/// Turns a path-manager error into an exit code: refused locally is a usage
/// error, missing privilege or kernel support exits 3.
pub fn pm_failure(err: pm::Error) -> Failure {
    let code = match &err {
        pm::Error::Invalid(_) => crate::failure::EXIT_USAGE,
        pm::Error::FamilyNotFound(_) => EXIT_UNSUPPORTED,
        _ if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => EXIT_UNSUPPORTED,
        _ => crate::failure::EXIT_FAILED,
    };
    Failure {
        code,
        message: err.to_string(),
    }
}

fn open() -> Result<PathManager, Failure> {
    PathManager::open().map_err(pm_failure)
}

/// The index of interface `name` in this network namespace.
fn interface_index(name: &str) -> Result<u32, Failure> {
    if name.as_bytes().contains(&0) {
        return Err(Failure::usage(format!(
            "dev {name:?}: not an interface name"
        )));
    }
    mptcp_core::sys::os::interface_index(name).ok_or_else(|| {
        Failure::usage(format!(
            "dev {name}: no such interface here (see `ip link`)"
        ))
    })
}

/// Reads the value after keyword `key`.
fn value<'a, T: std::str::FromStr>(
    words: &mut impl Iterator<Item = &'a String>,
    key: &str,
    expected: &str,
) -> Result<T, Failure> {
    let text = words
        .next()
        .ok_or_else(|| Failure::usage(format!("{key} needs a value ({expected})")))?;
    text.parse()
        .map_err(|_| Failure::usage(format!("{key} {text:?}: expected {expected}")))
}

fn address(text: &str) -> Result<IpAddr, Failure> {
    text.parse().map_err(|_| {
        Failure::usage(format!(
            "{text:?} is not an IP address (like 198.18.1.1 or 2001:db8::1)"
        ))
    })
}

/// Parses `ADDR [dev IFNAME] [id N] [port P] [FLAG]...`.
fn parse_add(words: &[String]) -> Result<Endpoint, Failure> {
    let mut it = words.iter();
    let addr = address(it.next().expect("clap requires one word"))?;
    let mut endpoint = Endpoint::new(addr, EndpointFlags::NONE);
    while let Some(word) = it.next() {
        match word.as_str() {
            "dev" => {
                let name: String = value(&mut it, "dev", "an interface name")?;
                endpoint.ifindex = Some(interface_index(&name)?);
            }
            "id" => endpoint.id = value(&mut it, "id", "a number from 1 to 255")?,
            "port" => endpoint.port = Some(value(&mut it, "port", "a port number")?),
            flag => endpoint.flags |= flag.parse::<EndpointFlags>().map_err(pm_failure)?,
        }
    }
    Ok(endpoint)
}

/// `mptcp endpoint ...`.
pub fn endpoint(command: EndpointCommand) -> CmdResult {
    match command {
        EndpointCommand::Add { words } => {
            let endpoint = parse_add(&words)?;
            open()?.add_endpoint(&endpoint).map_err(pm_failure)
        }
        EndpointCommand::Del { words } => {
            let mut pm = open()?;
            match words.as_slice() {
                [id, n] if id == "id" => {
                    let id: u8 = n
                        .parse()
                        .map_err(|_| Failure::usage(format!("id {n:?}: expected 1 to 255")))?;
                    pm.remove_endpoint(id).map_err(pm_failure)
                }
                [id, zero, addr] if id == "id" && zero == "0" => pm
                    .remove_endpoint_by_addr(address(addr)?)
                    .map_err(pm_failure),
                [addr] => pm
                    .remove_endpoint_by_addr(address(addr)?)
                    .map_err(pm_failure),
                _ => Err(Failure::usage(
                    "usage: mptcp endpoint del id N | mptcp endpoint del ADDR",
                )),
            }
        }
        EndpointCommand::List { json } => {
            let endpoints = open()?.endpoints().map_err(pm_failure)?;
            if json {
                let list: Vec<_> = endpoints.iter().map(|e| ip_json(&e.to_string())).collect();
                println!("{}", serde_json::Value::from(list));
            } else {
                for endpoint in endpoints {
                    println!("{endpoint}");
                }
            }
            Ok(())
        }
        EndpointCommand::Flush => open()?.flush().map_err(pm_failure),
        EndpointCommand::Set { words } => {
            let [id_kw, n, changes @ ..] = words.as_slice() else {
                unreachable!("clap requires three words")
            };
            if id_kw != "id" {
                return Err(Failure::usage(
                    "usage: mptcp endpoint set id N [backup|nobackup] [fullmesh|nofullmesh]",
                ));
            }
            let id: u8 = n
                .parse()
                .map_err(|_| Failure::usage(format!("id {n:?}: expected 1 to 255")))?;
            let mut changes_to = Vec::new();
            for change in changes {
                changes_to.push(match change.as_str() {
                    "backup" => (EndpointFlags::BACKUP, true),
                    "nobackup" => (EndpointFlags::BACKUP, false),
                    "fullmesh" => (EndpointFlags::FULLMESH, true),
                    "nofullmesh" => (EndpointFlags::FULLMESH, false),
                    other => {
                        return Err(Failure::usage(format!(
                            "{other:?}: expected backup, nobackup, fullmesh or nofullmesh"
                        )));
                    }
                });
            }
            let mut pm = open()?;
            // The kernel sets backup and fullmesh together: start from the
            // endpoint's current ones so that unnamed flags stay as they are.
            let current = pm.endpoint(id).map_err(pm_failure)?;
            let changeable = EndpointFlags::BACKUP | EndpointFlags::FULLMESH;
            let mut flags = EndpointFlags::from_bits(current.flags.bits() & changeable.bits());
            for (flag, on) in changes_to {
                flags = if on {
                    flags | flag
                } else {
                    flags.without(flag)
                };
            }
            pm.set_flags(id, flags).map_err(pm_failure)
        }
    }
}

/// `mptcp limits [set ...]`.
pub fn limits(args: LimitsArgs) -> CmdResult {
    let mut pm = open()?;
    if let Some(LimitsCommand::Set { words }) = args.command {
        let mut limits = pm.limits().map_err(pm_failure)?;
        let mut it = words.iter();
        while let Some(key) = it.next() {
            let n: u32 = value(&mut it, key, "a number from 0 to 8")?;
            if n > 8 {
                return Err(Failure::usage(format!(
                    "{key} {n}: the kernel allows at most 8"
                )));
            }
            match key.as_str() {
                "subflows" | "subflow" => limits.subflows = n,
                "add_addr_accepted" => limits.add_addr_accepted = n,
                other => {
                    return Err(Failure::usage(format!(
                        "{other:?}: expected subflows or add_addr_accepted"
                    )));
                }
            }
        }
        pm.set_limits(limits).map_err(pm_failure)?;
    }
    let limits: Limits = pm.limits().map_err(pm_failure)?;
    if args.json {
        println!(
            "{}",
            json!({"subflows": limits.subflows, "add_addr_accepted": limits.add_addr_accepted})
        );
    } else {
        println!("{limits}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_json_is_iproute2_json() {
        assert_eq!(
            ip_json("198.18.5.1 id 1 subflow backup dev wan1"),
            json!({"address": "198.18.5.1", "id": 1, "subflow": true, "backup": true, "dev": "wan1"})
        );
        assert_eq!(
            ip_json("198.18.5.9 port 1000 id 2 signal"),
            json!({"address": "198.18.5.9", "port": 1000, "id": 2, "signal": true})
        );
    }

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn add_syntax() {
        let e = parse_add(&words("198.18.1.1 id 3 signal port 8080 backup")).unwrap();
        assert_eq!(e.id, 3);
        assert_eq!(e.port, Some(8080));
        assert_eq!(e.flags, EndpointFlags::SIGNAL | EndpointFlags::BACKUP);
        assert_eq!(parse_add(&words("198.18.1.1 id")).unwrap_err().code, 2);
        assert_eq!(parse_add(&words("not-an-ip")).unwrap_err().code, 2);
        assert_eq!(
            parse_add(&words("198.18.1.1 sideways")).unwrap_err().code,
            2
        );
        assert_eq!(
            parse_add(&words("198.18.1.1 dev nosuchdev0"))
                .unwrap_err()
                .code,
            2
        );
    }
}
