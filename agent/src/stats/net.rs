//! /proc/net/dev of a pod's network namespace: per-interface counters.

use super::model::{InterfaceUsage, NetworkUsage};

/// The interface CNI gives a pod (crius' default attachment): the CRI's `default_interface`.
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Every interface of a /proc/net/dev text (two header lines, then `name: 16 counters`).
pub fn parse_net_dev(text: &str) -> Result<Vec<InterfaceUsage>, String> {
    let mut out = Vec::new();
    for line in text.lines().skip(2).filter(|l| !l.trim().is_empty()) {
        let (name, counters) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line:?} has no interface name"))?;
        let values: Vec<u64> = counters
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("line {line:?} has a non-numeric counter"))?;
        if values.len() < 16 {
            return Err(format!(
                "line {line:?} has {} counters, not 16",
                values.len()
            ));
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs drop ...
        out.push(InterfaceUsage {
            name: name.trim().to_string(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    Ok(out)
}

/// The pod's network usage: `eth0` as the default interface, every other one after it, by name.
pub fn network_usage(timestamp: i64, mut interfaces: Vec<InterfaceUsage>) -> NetworkUsage {
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    let default_interface = interfaces
        .iter()
        .position(|i| i.name == DEFAULT_INTERFACE)
        .map(|i| interfaces.remove(i));
    NetworkUsage {
        timestamp,
        default_interface,
        interfaces,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
  eth0: 1234567     890    1    2    0     0          0         3   654321     456    4    5    0     0       0          0
";

    #[test]
    fn parses_every_interface() {
        let ifs = parse_net_dev(SAMPLE).unwrap();
        assert_eq!(ifs.len(), 2);
        assert_eq!(
            ifs[1],
            InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 1234567,
                rx_packets: 890,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 654321,
                tx_packets: 456,
                tx_errors: 4,
                tx_dropped: 5,
            }
        );
        assert_eq!((ifs[0].name.as_str(), ifs[0].rx_bytes), ("lo", 840));
    }

    #[test]
    fn refuses_malformed_lines() {
        let head = "h1\nh2\n";
        assert!(parse_net_dev(&format!("{head}eth0 1 2 3\n")).is_err());
        assert!(parse_net_dev(&format!("{head}eth0: 1 2 3\n")).is_err());
        assert!(parse_net_dev(&format!("{head}eth0: {}x\n", "1 ".repeat(16))).is_err());
        assert!(parse_net_dev(head).unwrap().is_empty());
    }

    #[test]
    fn eth0_is_the_default_interface() {
        let n = network_usage(7, parse_net_dev(SAMPLE).unwrap());
        assert_eq!(n.default_interface.unwrap().name, "eth0");
        assert_eq!(n.interfaces.len(), 1);
        assert_eq!(n.interfaces[0].name, "lo");
        let n = network_usage(7, Vec::new());
        assert!(n.default_interface.is_none() && n.interfaces.is_empty());
    }
}
