//! Quotas: how many engines one owner may have, in all and active (neither `Terminated` nor
//! `ErrorClean`). The store checks them atomically with the change that would exceed them.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Limits on the engines of one owner. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// The most engines an owner may have, in any state.
    pub max_engines: Option<u32>,
    /// The most engines an owner may have that are not `Terminated` or `ErrorClean`.
    pub max_active_engines: Option<u32>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.max_engines.is_none() && self.max_active_engines.is_none()
    }

    /// Checks the owner's counts (before the change) against the limits: `total` engines, of
    /// which `active` are not settled. `adds_engine` for a create, `activates` when the change
    /// makes an engine active.
    pub fn check(
        &self,
        total: u32,
        active: u32,
        adds_engine: bool,
        activates: bool,
    ) -> Result<(), QuotaExceeded> {
        if let Some(max) = self.max_engines.filter(|max| adds_engine && total >= *max) {
            return Err(QuotaExceeded {
                limit: "max_engines",
                value: max,
                current: total,
            });
        }
        if let Some(max) = self
            .max_active_engines
            .filter(|max| activates && active >= *max)
        {
            return Err(QuotaExceeded {
                limit: "max_active_engines",
                value: max,
                current: active,
            });
        }
        Ok(())
    }
}

/// Which quota a change would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quota exceeded: {limit} is {value} and the owner has {current}")]
pub struct QuotaExceeded {
    /// `max_engines` or `max_active_engines`.
    pub limit: &'static str,
    pub value: u32,
    pub current: u32,
}

/// The `[quota]` table: limits for every owner, and per-user limits that replace them
/// (`[quota.users.NAME]`; a limit a user's table leaves out is the general one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub max_engines: Option<u32>,
    pub max_active_engines: Option<u32>,
    pub users: BTreeMap<String, UserLimits>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserLimits {
    pub max_engines: Option<u32>,
    pub max_active_engines: Option<u32>,
}

impl Quotas {
    /// The limits of `owner`'s engines.
    pub fn for_owner(&self, owner: &str) -> Limits {
        let user = self.users.get(owner).copied().unwrap_or_default();
        Limits {
            max_engines: user.max_engines.or(self.max_engines),
            max_active_engines: user.max_active_engines.or(self.max_active_engines),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_what_would_be_exceeded() {
        let limits = Limits {
            max_engines: Some(3),
            max_active_engines: Some(2),
        };
        assert_eq!(limits.check(2, 1, true, true), Ok(()));
        let over = limits.check(3, 0, true, true).expect_err("three in all");
        assert_eq!((over.limit, over.value), ("max_engines", 3));
        let over = limits.check(2, 2, true, true).expect_err("two active");
        assert_eq!((over.limit, over.value), ("max_active_engines", 2));
        // A restart adds no engine; only the active limit applies.
        assert_eq!(limits.check(5, 1, false, true), Ok(()));
        // A change that activates nothing is never refused.
        assert_eq!(limits.check(9, 9, false, false), Ok(()));
        assert!(Limits::default().is_unlimited());
    }

    #[test]
    fn per_user_limits_replace_the_general_ones() {
        let quotas: Quotas = toml::from_str(
            "max_engines = 10\nmax_active_engines = 2\n[users.alice]\nmax_active_engines = 5\n",
        )
        .expect("valid");
        assert_eq!(
            quotas.for_owner("alice"),
            Limits {
                max_engines: Some(10),
                max_active_engines: Some(5)
            }
        );
        assert_eq!(quotas.for_owner("bob").max_active_engines, Some(2));
        assert!(Quotas::default().for_owner("x").is_unlimited());
    }
}
