//! The member domain: a membership record, its standing, and the playback decision.
//!
//! Pure and without I/O: the store and the tier read and write [`Member`]s, the lookup
//! service caches them, HTTP renders them; all of them import it from here. The
//! decision needs the member's plan, which the caller looks up in its catalog snapshot.

use crate::plan::{Plan, Price};

/// A member's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Active,
    /// Payment failed, still within grace: may stream.
    Grace,
    OnHold,
    Paused,
    Cancelled,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "active" => Status::Active,
            "grace" => Status::Grace,
            "on_hold" => Status::OnHold,
            "paused" => Status::Paused,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Grace => "grace",
            Status::OnHold => "on_hold",
            Status::Paused => "paused",
            Status::Cancelled => "cancelled",
        }
    }

    pub const ALL: [Status; 5] = [
        Status::Active,
        Status::Grace,
        Status::OnHold,
        Status::Paused,
        Status::Cancelled,
    ];
}

/// One row of `memberships`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub status: Status,
    pub plan_id: String,
    pub country: String,
    /// Raised by the store on every write; never lower for a newer state of the row.
    pub version: i64,
    /// The price this member keeps paying (grandfathering), if any: boxed, so a
    /// member without one (most) costs a pointer's width in L1, not the lock's.
    pub price_lock: Option<Box<PriceLock>>,
}

/// A member's grandfathered price: `memberships.price_locked_amount` in
/// `price_locked_currency` until `price_locked_until` (README, "Pricing rules").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceLock {
    pub amount: Price,
    pub currency: String,
    /// Milliseconds since the epoch from which the catalog price applies again
    /// (`None`: no end date).
    pub until_ms: Option<i64>,
}

impl PriceLock {
    /// Whether the lock holds at `now`.
    pub fn holds_at(&self, now: i64) -> bool {
        self.until_ms.is_none_or(|u| now < u)
    }
}

/// Why playback is allowed or not (the `reason` of an authorize answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    NotAMember,
    AccountOnHold,
    AccountPaused,
    MembershipCancelled,
    DeviceNotAllowed,
    StreamLimitReached,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::NotAMember => "not_a_member",
            Reason::AccountOnHold => "account_on_hold",
            Reason::AccountPaused => "account_paused",
            Reason::MembershipCancelled => "membership_cancelled",
            Reason::DeviceNotAllowed => "device_not_allowed",
            Reason::StreamLimitReached => "stream_limit_reached",
        }
    }
}

/// Whether the member's standing alone lets them stream: the plan they may stream on,
/// or the reason they may not. A member whose plan is missing from the catalog is
/// treated as not a member: there is nothing to entitle them to.
pub fn standing<'p>(member: &Member, plan: Option<&'p Plan>) -> Result<&'p Plan, Reason> {
    match (member.status, plan) {
        (Status::OnHold, _) => Err(Reason::AccountOnHold),
        (Status::Paused, _) => Err(Reason::AccountPaused),
        (Status::Cancelled, _) => Err(Reason::MembershipCancelled),
        (Status::Active | Status::Grace, None) => Err(Reason::NotAMember),
        (Status::Active | Status::Grace, Some(plan)) => Ok(plan),
    }
}

/// The playback decision for a member (or an unknown id), its plan as the catalog
/// has it, a device class, and the number of streams the member already has running.
/// Checked in order: membership, standing, device, stream count.
pub fn authorize(
    member: Option<&Member>,
    plan: Option<&Plan>,
    device_class: &str,
    active_streams: u64,
) -> Reason {
    let Some(member) = member else {
        return Reason::NotAMember;
    };
    match standing(member, plan) {
        Err(reason) => reason,
        Ok(plan) if !plan.allows_device(device_class) => Reason::DeviceNotAllowed,
        Ok(plan) if active_streams >= plan.max_streams as u64 => Reason::StreamLimitReached,
        Ok(_) => Reason::Ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::CatalogData;

    fn member(status: Status, plan: &str) -> Member {
        Member {
            id: 1,
            status,
            plan_id: plan.into(),
            country: "US".into(),
            version: 1,
            price_lock: None,
        }
    }

    /// Every status × device class × active streams × plan of the reference catalog.
    #[test]
    fn entitlement_decision_table() {
        let data = CatalogData::reference().unwrap();
        let plan_of = |id: &str| data.plans.iter().find(|p| p.id == id);
        let plans = [
            "mobile",
            "basic",
            "standard-with-ads",
            "standard",
            "premium",
        ];
        let max = |p: &str| match p {
            "mobile" | "basic" => 1,
            "standard-with-ads" | "standard" => 2,
            "premium" => 4,
            _ => unreachable!(),
        };
        let devices = ["tv", "computer", "mobile", "tablet", "toaster"];
        let mut seen = std::collections::HashSet::new();
        for status in Status::ALL {
            for plan in plans {
                for device in devices {
                    for active in 0..6u64 {
                        let m = member(status, plan);
                        let p = plan_of(plan);
                        assert!(p.is_some(), "{plan} is in the reference catalog");
                        let reason = authorize(Some(&m), p, device, active);
                        let device_ok = match plan {
                            "mobile" => matches!(device, "mobile" | "tablet"),
                            _ => device != "toaster",
                        };
                        let expected = match status {
                            Status::OnHold => Reason::AccountOnHold,
                            Status::Paused => Reason::AccountPaused,
                            Status::Cancelled => Reason::MembershipCancelled,
                            Status::Active | Status::Grace if !device_ok => {
                                Reason::DeviceNotAllowed
                            }
                            Status::Active | Status::Grace if active >= max(plan) => {
                                Reason::StreamLimitReached
                            }
                            Status::Active | Status::Grace => Reason::Ok,
                        };
                        assert_eq!(reason, expected, "{status:?} {plan} {device} {active}");
                        seen.insert(reason);
                    }
                }
            }
        }
        assert_eq!(authorize(None, None, "tv", 0), Reason::NotAMember);
        let orphan = member(Status::Active, "no-such-plan");
        assert_eq!(
            authorize(Some(&orphan), plan_of("no-such-plan"), "tv", 0),
            Reason::NotAMember
        );
        assert_eq!(
            seen.len(),
            6,
            "every reason but not_a_member reached by the table"
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("Active"), None);
    }
}
