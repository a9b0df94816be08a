//! Keeping relay chains finite: the hop count a relay announces to the next one, and
//! whether a target is the relay itself.
//!
//! A relay that publishes a stream to another relay (a push forward) puts the number of
//! relays the stream has passed through, itself included, in its `connect` command
//! object as `qrelayHops` (an AMF0 number). An encoder sends none: 0. A relay refuses a
//! publish that announces more than its `max_hops`, and does not forward a stream whose
//! next hop would exceed it. Servers that do not know the property ignore it (RTMP
//! servers ignore unknown `connect` properties), so the stream key reaches the target
//! unchanged. A target that resolves to the relay's own listening address is refused
//! outright: that would be a loop of one hop.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::rtmp::amf0::Amf0Value;

/// The `connect` property carrying the hop count.
pub const HOPS_PROPERTY: &str = "qrelayHops";

/// The `connect` property announcing `hops`.
pub fn hops_property(hops: u32) -> (String, Amf0Value) {
    (HOPS_PROPERTY.to_owned(), Amf0Value::Number(f64::from(hops)))
}

/// The hop count a peer announced (its `qrelayHops`, absent: 0). A value that is not a
/// whole non-negative number is refused with what is wrong with it; a huge one counts as
/// `u32::MAX` (over any limit).
pub fn announced_hops(value: Option<&Amf0Value>) -> Result<u32, String> {
    match value {
        None => Ok(0),
        Some(Amf0Value::Number(n)) if n.is_finite() && *n >= 0.0 && n.fract() == 0.0 => {
            Ok(if *n >= f64::from(u32::MAX) { u32::MAX } else { *n as u32 })
        }
        Some(other) => Err(format!("{HOPS_PROPERTY} is not a hop count: {other:?}")),
    }
}

/// Whether connecting to `target` reaches the relay listening on `listen`: the same
/// port and either the same address or, for a relay listening on every address, any
/// address of this host.
pub fn is_self(target: SocketAddr, listen: SocketAddr) -> bool {
    if target.port() != listen.port() {
        return false;
    }
    let (target_ip, listen_ip) = (canonical(target.ip()), canonical(listen.ip()));
    target_ip == listen_ip || (listen_ip.is_unspecified() && is_local(target_ip))
}

/// Whether `ip` is an address of this host: loopback, unspecified (which connects to
/// this host), or one a socket can bind to (the kernel allows that only for its own
/// addresses; no interface list needed).
pub fn is_local(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hop_counts_are_read_strictly() {
        assert_eq!(announced_hops(None), Ok(0));
        assert_eq!(announced_hops(Some(&Amf0Value::Number(3.0))), Ok(3));
        assert_eq!(announced_hops(Some(&Amf0Value::Number(1e12))), Ok(u32::MAX));
        for bad in [Amf0Value::Number(-1.0), Amf0Value::Number(1.5), Amf0Value::Number(f64::NAN)] {
            assert!(announced_hops(Some(&bad)).is_err(), "{bad:?}");
        }
        assert!(announced_hops(Some(&Amf0Value::String("1".into()))).unwrap_err().contains(HOPS_PROPERTY));
        let (name, value) = hops_property(2);
        assert_eq!((name.as_str(), announced_hops(Some(&value))), (HOPS_PROPERTY, Ok(2)));
    }

    #[test]
    fn targets_on_our_own_port_and_address_are_us() {
        assert!(is_self(addr("127.0.0.1:1935"), addr("127.0.0.1:1935")));
        assert!(!is_self(addr("127.0.0.1:1936"), addr("127.0.0.1:1935")));
        // Another loopback address is not the one a specific listener is bound to.
        assert!(!is_self(addr("127.0.0.2:1935"), addr("127.0.0.1:1935")));
        // Listening everywhere: every local address is us, a remote one is not.
        assert!(is_self(addr("127.0.0.5:1935"), addr("0.0.0.0:1935")));
        assert!(is_self(addr("[::ffff:127.0.0.1]:1935"), addr("0.0.0.0:1935")));
        assert!(is_self(addr("0.0.0.0:1935"), addr("0.0.0.0:1935")));
        assert!(!is_self(addr("192.0.2.1:1935"), addr("0.0.0.0:1935")), "TEST-NET-1 is nobody's");
    }
}
