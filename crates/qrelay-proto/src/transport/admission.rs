//! Admission control at the door: a cap on connections in total and per address,
//! shared by TCP and QUIC, and on publishers per address. A [`Permit`] is held for the
//! life of a connection, a [`PublisherPermit`] for the life of a publish.
//!
//! "Per address" is per IPv4 address and per IPv6 /64: one host gets a whole /64, so
//! counting single IPv6 addresses would let one peer hold any number of places.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a connection (or a publish) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The relay is at `max_connections`.
    #[error("server at its connection limit ({0})")]
    Total(usize),
    /// This address is at `max_connections_per_ip`.
    #[error("address at its connection limit ({0})")]
    PerIp(usize),
    /// This address is at `max_publishers_per_ip`.
    #[error("address at its publisher limit ({0})")]
    PublishersPerIp(usize),
    /// The process is over its memory budget (`max_memory`, in bytes).
    #[error("server over its memory budget ({0} bytes)")]
    Memory(u64),
}

/// What per-address limits count by: an IPv4 address (IPv4-mapped IPv6 included) or an
/// IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    /// One IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4.octets()),
                None => AddrKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Connection counters.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    max_publishers_per_ip: usize,
    memory: Option<super::memory::MemoryBudget>,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<AddrKey, usize>,
    publishers: HashMap<AddrKey, usize>,
}

impl Admission {
    /// Counters with these caps (publishers per address unlimited).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Self::with_publishers(max_total, max_per_ip, usize::MAX)
    }

    /// Counters with these caps, publishers per address included.
    pub fn with_publishers(max_total: usize, max_per_ip: usize, max_publishers_per_ip: usize) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, max_publishers_per_ip, memory: None, state: Mutex::default() })
    }

    /// Counters with these caps, refusing anything new while the process's resident
    /// memory is over `memory`.
    pub fn with_budget(
        max_total: usize,
        max_per_ip: usize,
        max_publishers_per_ip: usize,
        memory: super::memory::MemoryBudget,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            max_publishers_per_ip,
            memory: Some(memory),
            state: Mutex::default(),
        })
    }

    /// The memory budget's refusal, if the process is over it.
    fn check_memory(&self) -> Result<(), Refusal> {
        match &self.memory {
            Some(m) if m.over() => Err(Refusal::Memory(m.limit())),
            _ => Ok(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one more connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        self.check_memory()?;
        let key = AddrKey::from(ip);
        let mut st = self.state();
        if st.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let n = st.per_ip.entry(key).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp(self.max_per_ip));
        }
        *n += 1;
        st.total += 1;
        Ok(Permit { admission: self.clone(), key })
    }

    /// Admits one more publisher from `ip`, or says why not.
    pub fn admit_publisher(self: &Arc<Self>, ip: IpAddr) -> Result<PublisherPermit, Refusal> {
        self.check_memory()?;
        let key = AddrKey::from(ip);
        let mut st = self.state();
        let n = st.publishers.entry(key).or_default();
        if *n >= self.max_publishers_per_ip {
            return Err(Refusal::PublishersPerIp(self.max_publishers_per_ip));
        }
        *n += 1;
        Ok(PublisherPermit { admission: self.clone(), key })
    }

    /// Connections admitted now.
    pub fn current(&self) -> usize {
        self.state().total
    }

    /// Connections admitted now from `ip`'s address (its /64 for IPv6).
    pub fn current_from(&self, ip: IpAddr) -> usize {
        self.state().per_ip.get(&AddrKey::from(ip)).copied().unwrap_or(0)
    }
}

fn release(map: &mut HashMap<AddrKey, usize>, key: AddrKey) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// One admitted connection; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    key: AddrKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.admission.state();
        st.total = st.total.saturating_sub(1);
        release(&mut st.per_ip, self.key);
    }
}

/// One admitted publisher; dropping it frees the place.
#[derive(Debug)]
pub struct PublisherPermit {
    admission: Arc<Admission>,
    key: AddrKey,
}

impl Drop for PublisherPermit {
    fn drop(&mut self) {
        release(&mut self.admission.state().publishers, self.key);
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

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = Admission::new(100, 2);
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        let _p1 = a.admit(host(1)).unwrap();
        let _p2 = a.admit(host(2)).unwrap();
        assert_eq!(a.admit(host(3)).unwrap_err(), Refusal::PerIp(2), "one /64, many addresses");
        assert!(a.admit(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1])).is_ok(), "another /64");
        let v4: IpAddr = [192, 0, 2, 7].into();
        let mapped: IpAddr = std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().into();
        let _p3 = a.admit(v4).unwrap();
        let _p4 = a.admit(mapped).unwrap();
        assert_eq!(a.admit(v4).unwrap_err(), Refusal::PerIp(2));
        assert_eq!(a.current_from(mapped), 2);
    }

    #[test]
    fn nothing_new_is_admitted_over_the_memory_budget() {
        let a = Admission::with_budget(100, 100, 100, crate::transport::memory::MemoryBudget::new(1 << 20));
        let ip: IpAddr = [10, 0, 0, 9].into();
        assert_eq!(a.admit(ip).unwrap_err(), Refusal::Memory(1 << 20));
        assert_eq!(a.admit_publisher(ip).unwrap_err(), Refusal::Memory(1 << 20));
        let roomy =
            Admission::with_budget(100, 100, 100, crate::transport::memory::MemoryBudget::new(u64::MAX));
        assert!(roomy.admit(ip).is_ok());
    }

    #[test]
    fn publishers_per_address_are_capped_and_freed() {
        let a = Admission::with_publishers(100, 100, 2);
        let ip: IpAddr = [10, 0, 0, 9].into();
        let p1 = a.admit_publisher(ip).unwrap();
        let _p2 = a.admit_publisher(ip).unwrap();
        assert_eq!(a.admit_publisher(ip).unwrap_err(), Refusal::PublishersPerIp(2));
        assert!(a.admit_publisher([10, 0, 0, 10].into()).is_ok());
        drop(p1);
        assert!(a.admit_publisher(ip).is_ok());
    }
}
