//! Keeping relay chains finite: the hop count a relay announces to the next one (whether
//! a peer is this relay itself is [`super::node::is_self`]).
//!
//! A relay that publishes a stream to another relay (a push forward) puts the number of
//! relays the stream has passed through, itself included, in its `connect` command
//! object as `qrelayHops` (an AMF0 number). An encoder sends none: 0. A relay refuses a
//! publish that announces more than its `max_hops`, and does not forward a stream whose
//! next hop would exceed it. Servers that do not know the property ignore it (RTMP
//! servers ignore unknown `connect` properties), so the stream key reaches the target
//! unchanged.

use crate::rtmp::amf0::Amf0Value;

/// The `connect` property carrying the hop count.
pub const HOPS_PROPERTY: &str = "qrelayHops";

/// The `connect` property announcing `hops`.
pub fn hops_property(hops: u32) -> (String, Amf0Value) {
    (HOPS_PROPERTY.to_owned(), Amf0Value::Number(f64::from(hops)))
}

/// Characters of a malformed hop count echoed back.
const MAX_ECHO: usize = 64;

/// The hop count a peer announced (its `qrelayHops`, absent: 0). A value that is not a
/// whole non-negative number is refused with what is wrong with it; a huge one counts as
/// `u32::MAX` (over any limit).
pub fn announced_hops(value: Option<&Amf0Value>) -> Result<u32, String> {
    match value {
        None => Ok(0),
        Some(Amf0Value::Number(n)) if n.is_finite() && *n >= 0.0 && n.fract() == 0.0 => {
            Ok(if *n >= f64::from(u32::MAX) { u32::MAX } else { *n as u32 })
        }
        Some(other) => {
            // The peer's value is echoed into logs and its refusal: at most a line of it.
            let mut shown = format!("{other:?}");
            if shown.len() > MAX_ECHO {
                let cut = (0..=MAX_ECHO).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
                shown.truncate(cut);
                shown.push('…');
            }
            Err(format!("{HOPS_PROPERTY} is not a hop count: {shown}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_counts_are_read_strictly() {
        assert_eq!(announced_hops(None), Ok(0));
        assert_eq!(announced_hops(Some(&Amf0Value::Number(3.0))), Ok(3));
        assert_eq!(announced_hops(Some(&Amf0Value::Number(1e12))), Ok(u32::MAX));
        for bad in [Amf0Value::Number(-1.0), Amf0Value::Number(1.5), Amf0Value::Number(f64::NAN)] {
            assert!(announced_hops(Some(&bad)).is_err(), "{bad:?}");
        }
        assert!(announced_hops(Some(&Amf0Value::String("1".into()))).unwrap_err().contains(HOPS_PROPERTY));
        // A peer's megabyte is not echoed into logs.
        let huge = announced_hops(Some(&Amf0Value::String("é".repeat(500_000)))).unwrap_err();
        assert!(huge.len() < 200, "{} bytes echoed", huge.len());
        let (name, value) = hops_property(2);
        assert_eq!((name.as_str(), announced_hops(Some(&value))), (HOPS_PROPERTY, Ok(2)));
    }
}
