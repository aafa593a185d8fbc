//! Connection admission: what a client without the token can hold, kept apart from what peers need.
//!
//! Every accepted connection starts *pending*: it has not yet sent a request with the run's token.
//! Pending connections have a budget of their own, in total and per client address, and a deadline;
//! a connection leaves that budget the moment its first request shows the token, for the budget of
//! *authenticated* connections. So connections without the token never take a place a peer needs:
//!
//! - A new connection is always admitted. When its address, or the server, already has its full
//!   budget of pending connections, the oldest pending one (of that address, else of all) is closed to
//!   make room. A real peer sends its request head right after connecting and stays pending for well
//!   under a millisecond, so only clients that hold idle connections are the ones closed.
//! - A pending connection that shows no valid token within the deadline is closed.
//! - Authenticated connections are never closed to make room; past their own budget, a new one is
//!   turned away (503) instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::server::Counters;

/// The budgets, from [`super::ServerConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budgets {
    pub(crate) pending: usize,
    pub(crate) pending_per_address: usize,
    pub(crate) authenticated: usize,
    pub(crate) auth_timeout: Duration,
}

/// The server's ledger of open connections.
#[derive(Debug)]
pub(crate) struct Admission {
    budgets: Budgets,
    counters: Arc<Counters>,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    next_id: u64,
    /// Pending connections by id; ids grow with arrival, so the first is the oldest.
    pending: BTreeMap<u64, Pending>,
    /// The same connections by client address, oldest first.
    by_address: HashMap<IpAddr, BTreeSet<u64>>,
    authenticated: usize,
}

#[derive(Debug)]
struct Pending {
    address: IpAddr,
    close: Arc<Notify>,
}

/// One connection's place in the ledger, shared by its task and its request handler. Dropping the
/// last reference (the connection ended) gives the place back.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    close: Arc<Notify>,
    /// Set (under the ledger's lock) when the connection moves to the authenticated budget.
    authenticated: AtomicBool,
}

impl Admission {
    pub(crate) fn new(budgets: Budgets, counters: Arc<Counters>) -> Arc<Admission> {
        Arc::new(Admission {
            budgets,
            counters,
            ledger: Mutex::default(),
        })
    }

    /// Admits a new connection from `address` as pending, closing the oldest pending connection of
    /// that address, or else of the whole server, when its budget is full.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Arc<Ticket> {
        // An IPv4 peer reaching a dual-stack socket shows up as ::ffff:a.b.c.d: one address either way.
        let address = address.to_canonical();
        let mut ledger = self.lock();
        let of_address = ledger.by_address.get(&address).map_or(0, BTreeSet::len);
        let oldest = if of_address >= self.budgets.pending_per_address {
            ledger.by_address.get(&address).and_then(|ids| ids.first().copied())
        } else if ledger.pending.len() >= self.budgets.pending {
            ledger.pending.keys().next().copied()
        } else {
            None
        };
        if let Some(evicted) = oldest.and_then(|id| ledger.take_pending(id)) {
            evicted.close.notify_one();
            self.counters.unauthenticated_evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = ledger.next_id;
        ledger.next_id += 1;
        let close = Arc::new(Notify::new());
        let entry = Pending {
            address,
            close: close.clone(),
        };
        ledger.pending.insert(id, entry);
        ledger.by_address.entry(address).or_default().insert(id);
        Arc::new(Ticket {
            admission: self.clone(),
            id,
            close,
            authenticated: AtomicBool::new(false),
        })
    }

    /// Connections open now: (pending, authenticated).
    pub(crate) fn open(&self) -> (usize, usize) {
        let ledger = self.lock();
        (ledger.pending.len(), ledger.authenticated)
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ledger {
    fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let pending = self.pending.remove(&id)?;
        if let Some(ids) = self.by_address.get_mut(&pending.address) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_address.remove(&pending.address);
            }
        }
        Some(pending)
    }
}

impl Ticket {
    /// Moves the connection to the authenticated budget (its request showed the token). False when it
    /// cannot stay: that budget is full, or the connection was already told to close.
    pub(crate) fn authenticate(&self) -> bool {
        if self.authenticated.load(Ordering::Acquire) {
            return true;
        }
        let admission = &self.admission;
        let mut ledger = admission.lock();
        if ledger.authenticated >= admission.budgets.authenticated || !ledger.pending.contains_key(&self.id) {
            return false;
        }
        ledger.take_pending(self.id);
        ledger.authenticated += 1;
        self.authenticated.store(true, Ordering::Release);
        true
    }

    /// Completes when the connection must be closed: it was evicted to make room, or it was still
    /// pending at the deadline. Never completes for an authenticated connection.
    pub(crate) async fn must_close(&self) {
        tokio::select! {
            () = self.close.notified() => {}
            () = tokio::time::sleep(self.admission.budgets.auth_timeout) => {
                if !self.expire() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// Takes the connection out of the pending budget if it is still there; true if it was.
    fn expire(&self) -> bool {
        let expired = self.admission.lock().take_pending(self.id).is_some();
        if expired {
            let counters = &self.admission.counters;
            counters.unauthenticated_timed_out.fetch_add(1, Ordering::Relaxed);
        }
        expired
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut ledger = self.admission.lock();
        if ledger.take_pending(self.id).is_none() && *self.authenticated.get_mut() {
            ledger.authenticated -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn admission(pending: usize, pending_per_address: usize, authenticated: usize) -> Arc<Admission> {
        let budgets = Budgets {
            pending,
            pending_per_address,
            authenticated,
            auth_timeout: Duration::from_secs(3),
        };
        Admission::new(budgets, Arc::default())
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn evicted(ticket: &Ticket) -> bool {
        !ticket.admission.lock().pending.contains_key(&ticket.id) && !ticket.authenticated.load(Ordering::Relaxed)
    }

    #[test]
    fn an_address_over_its_budget_loses_its_own_oldest_connection() {
        let admission = admission(10, 2, 10);
        let other = admission.admit(ip(2));
        let first = admission.admit(ip(1));
        let second = admission.admit(ip(1));
        let third = admission.admit(ip(1));
        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&third) && !evicted(&other));
        assert_eq!(admission.open(), (3, 0));
    }

    #[test]
    fn a_full_server_loses_its_oldest_pending_connection() {
        let admission = admission(2, 10, 10);
        let first = admission.admit(ip(1));
        let second = admission.admit(ip(2));
        let third = admission.admit(ip(3));
        assert!(evicted(&first));
        assert!(!evicted(&second) && !evicted(&third));
        assert!(!first.authenticate(), "an evicted connection cannot come back");
    }

    #[test]
    fn authenticated_connections_have_their_own_budget_and_are_never_evicted() {
        let admission = admission(1, 1, 1);
        let peer = admission.admit(ip(1));
        assert!(peer.authenticate());
        let idle = admission.admit(ip(1));
        let newer = admission.admit(ip(1));
        assert!(evicted(&idle) && !evicted(&newer));
        assert_eq!(admission.open(), (1, 1));
        assert!(!newer.authenticate(), "the authenticated budget is full");
        drop(peer);
        assert!(newer.authenticate());
        assert_eq!(admission.open(), (0, 1));
        drop((idle, newer));
        assert_eq!(admission.open(), (0, 0));
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let admission = admission(10, 1, 10);
        let first = admission.admit(ip(1));
        let IpAddr::V4(v4) = ip(1) else { unreachable!() };
        let _mapped = admission.admit(IpAddr::V6(v4.to_ipv6_mapped()));
        assert!(evicted(&first));
    }
}
