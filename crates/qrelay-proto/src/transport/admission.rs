//! Admission control at the door: a cap on connections in total and per IP address,
//! shared by TCP and QUIC. A [`Permit`] is held for the life of a connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The relay is at `max_connections`.
    #[error("server at its connection limit ({0})")]
    Total(usize),
    /// This address is at `max_connections_per_ip`.
    #[error("address at its connection limit ({0})")]
    PerIp(usize),
}

/// Connection counters.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// Counters with these caps.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, state: Mutex::default() })
    }

    /// Admits one more connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let n = st.per_ip.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp(self.max_per_ip));
        }
        *n += 1;
        st.total += 1;
        Ok(Permit { admission: self.clone(), ip })
    }

    /// Connections admitted now.
    pub fn current(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.admission.state.lock().unwrap_or_else(|e| e.into_inner());
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                st.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_ip_and_frees_on_drop() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = [10, 0, 0, 1].into();
        let ip2: IpAddr = [10, 0, 0, 2].into();
        let p1 = a.admit(ip1).unwrap();
        let _p2 = a.admit(ip1).unwrap();
        assert_eq!(a.admit(ip1).unwrap_err(), Refusal::PerIp(2));
        let _p3 = a.admit(ip2).unwrap();
        assert_eq!(a.admit(ip2).unwrap_err(), Refusal::Total(3));
        drop(p1);
        assert!(a.admit(ip1).is_ok());
    }
}
