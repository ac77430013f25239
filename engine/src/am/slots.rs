//! Places held while something is in progress, so that a bound is exact
//! however many tasks race for it: user connections (in all and per
//! address) and sessions being opened (in all and per user). A place is a
//! guard: dropping it gives the place back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use wire::{ErrorCode, ErrorMessage, Name};

use super::pipeline::SessionTable;
use crate::config::IngestConfig;

/// User connections open now, in all and per address (IPv4, or IPv6 /64).
pub(super) struct UserSlots {
    max: usize,
    per_address_max: usize,
    /// Connections in all, and per address (entries leave at zero).
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One user connection's place; given back on drop.
pub(super) struct UserSlot<'a> {
    slots: &'a UserSlots,
    address: IpAddr,
}

impl UserSlots {
    /// At most `max` connections, `per_address_max` from one address.
    pub(super) fn new(max: usize, per_address_max: usize) -> Self {
        Self {
            max,
            per_address_max,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// A place for a connection from `remote`, or the `reason` label of
    /// the bound that is full.
    pub(super) fn take(&self, remote: IpAddr) -> Result<UserSlot<'_>, &'static str> {
        let address = user_address_key(remote);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (all, by_address) = &mut *open;
        let count = by_address.get(&address).copied().unwrap_or(0);
        if count >= self.per_address_max {
            return Err("user_address");
        }
        if *all >= self.max {
            return Err("user_connections");
        }
        *all += 1;
        by_address.insert(address, count + 1);
        Ok(UserSlot { slots: self, address })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (all, by_address) = &mut *open;
        match by_address.get_mut(&self.address) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                by_address.remove(&self.address);
            }
        }
        *all -= 1;
    }
}

/// The address a user connection counts against: the IPv4 address, or the
/// IPv6 /64 (one host usually holds a whole /64).
fn user_address_key(remote: IpAddr) -> IpAddr {
    match remote {
        IpAddr::V4(_) => remote,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// Sessions being opened now, in all and per user (users with none have no
/// entry).
#[derive(Default)]
pub(super) struct SessionSlots {
    opening: Mutex<Opening>,
}

#[derive(Default)]
struct Opening {
    all: usize,
    per_user: HashMap<Name, usize>,
}

/// A place under `sessions_max` (and, for a user's request, under
/// `sessions_per_user_max`) held while a session is being opened: the
/// sessions held plus those being opened never exceed either bound, however
/// many requests race (a session counts twice between its store and the
/// slot's drop, which only errs on the safe side).
pub(super) struct SessionSlot<'a> {
    slots: &'a SessionSlots,
    user: Option<Name>,
}

impl SessionSlots {
    /// A place for a session of `user`'s request (`None`: the admin path,
    /// bound by `sessions_max` only), counting the sessions `table` holds.
    pub(super) fn take(
        &self,
        table: &SessionTable,
        config: &IngestConfig,
        user: Option<&Name>,
    ) -> Result<SessionSlot<'_>, ErrorMessage> {
        let mut opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() + opening.all >= config.sessions_max {
            return Err(ErrorMessage::new(
                ErrorCode::BUSY,
                "the AM holds its maximum number of sessions",
            ));
        }
        if let Some(user) = user {
            let pending = opening.per_user.get(user).copied().unwrap_or(0);
            if table.live_sessions(user) + pending >= config.sessions_per_user_max {
                metrics::counter!("acct_credentials_refused_total", "code" => "per_user").increment(1);
                return Err(ErrorMessage::new(
                    ErrorCode::BUSY,
                    "this user holds its maximum number of live sessions (sessions_per_user_max)",
                ));
            }
            *opening.per_user.entry(user.clone()).or_default() += 1;
        }
        opening.all += 1;
        Ok(SessionSlot {
            slots: self,
            user: user.cloned(),
        })
    }
}

impl Drop for SessionSlot<'_> {
    fn drop(&mut self) {
        let mut opening = self.slots.opening.lock().unwrap_or_else(PoisonError::into_inner);
        opening.all -= 1;
        if let Some(user) = &self.user {
            match opening.per_user.get_mut(user) {
                Some(count) if *count > 1 => *count -= 1,
                _ => {
                    opening.per_user.remove(user);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_slots_are_bounded_in_all_and_per_address() {
        let slots = UserSlots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some("user_address"));
        let _third = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some("user_connections"));
        drop(first);
        assert!(slots.take(b).is_ok(), "a freed place is given again");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(user_address_key(one), user_address_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(user_address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
