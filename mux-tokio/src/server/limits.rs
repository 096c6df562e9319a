//! Server-wide connection accounting: a global cap, per-IP and per-principal caps. The only
//! state shared across connections; bounded by the global cap and released on drop, the
//! tables' capacity with it once they are mostly empty (`crate::sparse`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sparse::ShrinkSparse;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The global cap: shed with 503.
    Global,
    /// Too many from this IP or principal: 429.
    TooMany,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    per_principal: HashMap<String, usize>,
}

/// The registry of live connections.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_ip: usize,
    max_per_principal: usize,
}

/// Holds one connection's place (and, unless it came through a trusted proxy, its place
/// under its IP); dropping it frees them.
#[derive(Debug)]
pub(crate) struct IpPermit {
    registry: Registry,
    ip: Option<IpAddr>,
}

/// Holds a place under the client IP a trusted proxy reported.
#[derive(Debug)]
pub(crate) struct ForwardedPermit {
    registry: Registry,
    ip: IpAddr,
}

/// Holds one connection's place under its principal.
#[derive(Debug)]
pub(crate) struct PrincipalPermit {
    registry: Registry,
    principal: String,
}

impl Registry {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, max_per_principal: usize) -> Self {
        Registry {
            counts: Arc::new(Mutex::new(Counts::default())),
            max_total,
            max_per_ip,
            max_per_principal,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A poisoned lock only means a panic elsewhere; the counts are still consistent.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new TCP connection from `ip`, checked before anything is read from it.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<IpPermit, Refusal> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Global);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return Err(Refusal::TooMany);
        }
        *n = n.saturating_add(1);
        c.total = c.total.saturating_add(1);
        Ok(IpPermit {
            registry: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a connection from a trusted proxy: the global cap now, the per-IP cap once
    /// the request says who the client is ([`Registry::admit_forwarded`]).
    pub(crate) fn admit_trusted(&self) -> Result<IpPermit, Refusal> {
        let mut c = self.lock();
        if c.total >= self.max_total {
            return Err(Refusal::Global);
        }
        c.total = c.total.saturating_add(1);
        Ok(IpPermit {
            registry: self.clone(),
            ip: None,
        })
    }

    /// Counts a client a trusted proxy reported against the per-IP cap.
    pub(crate) fn admit_forwarded(&self, ip: IpAddr) -> Result<ForwardedPermit, Refusal> {
        let mut c = self.lock();
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return Err(Refusal::TooMany);
        }
        *n = n.saturating_add(1);
        Ok(ForwardedPermit {
            registry: self.clone(),
            ip,
        })
    }

    /// Admits an authenticated principal.
    pub(crate) fn admit_principal(&self, principal: &str) -> Result<PrincipalPermit, Refusal> {
        let mut c = self.lock();
        let n = c.per_principal.entry(principal.to_owned()).or_insert(0);
        if *n >= self.max_per_principal {
            if *n == 0 {
                c.per_principal.remove(principal);
            }
            return Err(Refusal::TooMany);
        }
        *n = n.saturating_add(1);
        Ok(PrincipalPermit {
            registry: self.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Connections admitted now.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Distinct IPs and principals tracked (for checking that state is released).
    pub(crate) fn tracked_keys(&self) -> (usize, usize) {
        let c = self.lock();
        (c.per_ip.len(), c.per_principal.len())
    }

    /// Room the per-IP and per-principal tables have without growing.
    #[cfg(test)]
    fn capacities(&self) -> (usize, usize) {
        let c = self.lock();
        (c.per_ip.capacity(), c.per_principal.capacity())
    }
}

fn release_ip(c: &mut Counts, ip: &IpAddr) {
    if let Some(n) = c.per_ip.get_mut(ip) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            c.per_ip.remove(ip);
            c.per_ip.shrink_if_sparse();
        }
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = &self.ip {
            release_ip(&mut c, ip);
        }
    }
}

impl Drop for ForwardedPermit {
    fn drop(&mut self) {
        release_ip(&mut self.registry.lock(), &self.ip);
    }
}

impl Drop for PrincipalPermit {
    fn drop(&mut self) {
        let mut c = self.registry.lock();
        if let Some(n) = c.per_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_principal.remove(&self.principal);
                c.per_principal.shrink_if_sparse();
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn caps_trip_at_exactly_their_value_and_release() {
        let r = Registry::new(3, 2, 1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = r.admit(a).unwrap();
        let p2 = r.admit(a).unwrap();
        assert_eq!(r.admit(a).unwrap_err(), Refusal::TooMany);
        let p3 = r.admit(b).unwrap();
        assert_eq!(r.admit(b).unwrap_err(), Refusal::Global);
        let u = r.admit_principal("alice").unwrap();
        assert_eq!(r.admit_principal("alice").unwrap_err(), Refusal::TooMany);
        drop((p1, p2, p3, u));
        assert_eq!(r.total(), 0);
        assert_eq!(r.tracked_keys(), (0, 0));
    }

    #[test]
    fn the_tables_give_back_what_a_flood_of_sources_grew_them_to() {
        let r = Registry::new(10_000, 1, 1);
        let mut held = Vec::new();
        for i in 0..5000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 | i));
            held.push((
                r.admit(ip).unwrap(),
                r.admit_principal(&ip.to_string()).unwrap(),
            ));
        }
        let (ips, principals) = r.capacities();
        assert!(ips >= 5000 && principals >= 5000);
        drop(held);
        assert_eq!((r.total(), r.tracked_keys()), (0, (0, 0)));
        let (ips, principals) = r.capacities();
        assert!(
            ips <= 128 && principals <= 128,
            "capacities after the flood: {ips}, {principals}"
        );
    }
}
