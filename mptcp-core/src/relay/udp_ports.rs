//! The local role's choice per destination port for UDP from the LAN
//! (`[local] udp_ports`): carry it to the remote relay (the default), block
//! it (dropped and counted: UDP/443 blocked makes browsers fall back from
//! QUIC to TCP, which the relay aggregates), or send it directly from the
//! router (not aggregated). Pure code over the configuration.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;

/// What becomes of UDP to a destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpPortAction {
    /// Carried in the session to the remote relay.
    #[default]
    Carry,
    /// Dropped and counted.
    Block,
    /// Sent from the router itself, over its own routing.
    Direct,
}

/// The choices by port range, checked not to overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpPorts(Vec<(u16, u16, UdpPortAction)>);

impl UdpPorts {
    /// Parses the configuration's map: keys are ports (`"443"`) or ranges
    /// (`"5000-5100"`), which may not overlap.
    pub fn parse(map: &BTreeMap<String, UdpPortAction>) -> Result<UdpPorts, String> {
        let mut ranges = Vec::new();
        for (key, &action) in map {
            let port = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| {
                        format!("{key:?} is not a port (1-65535) or a range \"LOW-HIGH\"")
                    })
            };
            let (low, high) = match key.split_once('-') {
                Some((low, high)) => (port(low)?, port(high)?),
                None => (port(key)?, port(key)?),
            };
            if low > high {
                return Err(format!("{key:?}: the range is empty"));
            }
            ranges.push((low, high, action));
        }
        ranges.sort_unstable_by_key(|&(low, ..)| low);
        for pair in ranges.windows(2) {
            if pair[1].0 <= pair[0].1 {
                return Err(format!(
                    "ports {}-{} and {}-{} overlap",
                    pair[0].0, pair[0].1, pair[1].0, pair[1].1
                ));
            }
        }
        Ok(UdpPorts(ranges))
    }

    /// The choice for destination port `port`.
    pub fn action(&self, port: u16) -> UdpPortAction {
        self.0
            .iter()
            .find(|&&(low, high, _)| (low..=high).contains(&port))
            .map_or(UdpPortAction::Carry, |&(.., action)| action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, UdpPortAction)]) -> BTreeMap<String, UdpPortAction> {
        entries.iter().map(|(k, a)| (k.to_string(), *a)).collect()
    }

    #[test]
    fn ports_and_ranges_choose_and_the_rest_is_carried() {
        let ports = UdpPorts::parse(&map(&[
            ("443", UdpPortAction::Block),
            ("5000-5100", UdpPortAction::Direct),
            ("53", UdpPortAction::Carry),
        ]))
        .unwrap();
        assert_eq!(ports.action(443), UdpPortAction::Block);
        assert_eq!(ports.action(5000), UdpPortAction::Direct);
        assert_eq!(ports.action(5100), UdpPortAction::Direct);
        assert_eq!(ports.action(5101), UdpPortAction::Carry);
        assert_eq!(ports.action(53), UdpPortAction::Carry);
        assert_eq!(UdpPorts::default().action(443), UdpPortAction::Carry);
    }

    #[test]
    fn bad_keys_and_overlaps_are_named() {
        for (key, want) in [
            ("0", "is not a port"),
            ("x", "is not a port"),
            ("70000", "is not a port"),
            ("100-50", "empty"),
        ] {
            let e = UdpPorts::parse(&map(&[(key, UdpPortAction::Block)])).unwrap_err();
            assert!(e.contains(want), "{key}: {e}");
        }
        let e = UdpPorts::parse(&map(&[
            ("443", UdpPortAction::Block),
            ("400-500", UdpPortAction::Direct),
        ]))
        .unwrap_err();
        assert!(e.contains("overlap"), "{e}");
    }
}
