//! Open connections per client address (`--max-connections-per-peer`), so that one host holding
//! many idle or half-sent connections cannot take the whole `--max-connections` budget: its
//! connections over the share are refused while everyone else is still answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// How many connections each address holds.
#[derive(Debug)]
pub struct Peers {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its address's count goes down when it is dropped.
#[derive(Debug)]
pub struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Peers {
    pub fn new(limit: usize) -> Arc<Peers> {
        Arc::new(Peers {
            limit: limit.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Count a connection from `ip`, unless that address already holds the limit.
    pub fn admit(self: &Arc<Peers>, ip: IpAddr) -> Option<PeerSlot> {
        let ip = canonical(ip);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&canonical(ip)).copied().unwrap_or(0)
    }
}

/// An IPv4 client seen on a dual-stack socket counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_share_and_slots_come_back() {
        let peers = Peers::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = peers.admit(a).unwrap();
        let _s2 = peers.admit(a).unwrap();
        assert!(peers.admit(a).is_none());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(peers.admit(mapped).is_none(), "the same host over IPv6");
        assert!(peers.admit(b).is_some());
        drop(s1);
        assert_eq!(peers.open_from(a), 1);
        assert!(peers.admit(a).is_some());
        assert_eq!(peers.open_from(b), 0);
    }
}
