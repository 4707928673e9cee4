//! What the API server fills into object metadata (uids, timestamps, generated names) and the
//! name rules it enforces.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::Kind;

/// An RFC 3339 UTC timestamp with second precision, as in `metadata.creationTimestamp`.
pub(crate) fn timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A random v4-style uuid, as in `metadata.uid`.
pub(crate) fn uid() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The five random characters `generateName` gets (the alphabet Kubernetes uses).
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize];
            bits /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

/// Random enough for test identities, without a dependency: std's per-process random hash keys.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// Why `name` is not a valid name for a `kind`, in the words of the API server; `None` if valid.
/// Services need an RFC 1035 label; pods, secrets, configmaps and networkpolicies an RFC 1123
/// subdomain.
pub(crate) fn invalid_name(kind: Kind, name: &str) -> Option<String> {
    let lower_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let dns_label = kind == Kind::Service;
    let valid = if dns_label {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.ends_with(lower_alnum)
            && name.chars().all(|c| lower_alnum(c) || c == '-')
    } else {
        name.len() <= 253
            && name.split('.').all(|label| {
                label.starts_with(lower_alnum)
                    && label.ends_with(lower_alnum)
                    && label.chars().all(|c| lower_alnum(c) || c == '-')
            })
    };
    if valid {
        return None;
    }
    let rule = if dns_label {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (at most 63 characters)"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)"
    };
    Some(format!("metadata.name: Invalid value: \"{name}\": {rule}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29 01:02:03
        assert_eq!(timestamp(leap), "2000-02-29T01:02:03Z");
        let later = UNIX_EPOCH + Duration::from_secs(1_767_225_599); // 2025-12-31 23:59:59
        assert_eq!(timestamp(later), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn uids_look_like_uuids_and_differ() {
        let (a, b) = (uid(), uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(
            a.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
    }

    #[test]
    fn names_follow_the_kind_rules() {
        assert_eq!(invalid_name(Kind::Pod, "rucat-1.driver"), None);
        assert_eq!(invalid_name(Kind::Service, "rucat-1"), None);
        assert!(invalid_name(Kind::Service, "1rucat").is_some());
        assert!(invalid_name(Kind::Service, "a.b").is_some());
        assert!(invalid_name(Kind::Pod, "Upper").is_some());
        assert!(invalid_name(Kind::Pod, "-x").is_some());
        assert!(invalid_name(Kind::Pod, "").is_some());
        assert!(invalid_name(Kind::Service, &"a".repeat(64)).is_some());
        assert_eq!(invalid_name(Kind::Secret, "spark.conf-1"), None);
        assert_eq!(invalid_name(Kind::ConfigMap, "9-spark"), None);
        assert_eq!(invalid_name(Kind::NetworkPolicy, "a.b"), None);
        assert!(invalid_name(Kind::ConfigMap, "Upper").is_some());
        assert!(invalid_name(Kind::NetworkPolicy, "a_b").is_some());
    }
}
