//! Catalog rights: where, when and for what an item may be offered, and how far it is trusted.
//!
//! An items CSV may carry a `rights` column, a `;`-separated list of `key=value` rules:
//! `territories=CH,DE` (only there), `exclude=US` (everywhere but there), `from=2026-01-01` and
//! `until=2027-01-01` (an availability window, UTC; `until` exclusive; a date or milliseconds
//! since the Unix epoch), `usage=stream,download` (the kinds of use allowed, e.g. `stream`,
//! `download`, `remix`). An empty cell means no rules. The rules travel in the served catalog,
//! and a device ranks only what [`Rights::allows`] for the person's territory and time (both from
//! the caller). MovieLens items have none.
//!
//! ```
//! use hearth_core::data::rights::Rights;
//! let r = Rights::parse("territories=CH,DE;until=2027-01-01;usage=stream").unwrap().unwrap();
//! let new_year_2026 = 1_767_225_600_000;
//! assert!(r.allows(Some("CH"), new_year_2026, Some("stream")));
//! assert!(!r.allows(Some("US"), new_year_2026, Some("stream")));
//! assert!(!r.allows(Some("CH"), new_year_2026, Some("remix")));
//! ```

use serde::{Deserialize, Serialize};

/// The trust score below which an item is not recommended unless the caller says otherwise
/// (the product brief's default).
pub const DEFAULT_MIN_TRUST: f32 = 0.6;

/// An item's availability rules. Empty lists and absent bounds mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    /// Territories (ISO 3166-1 alpha-2, upper case) where it may be offered; empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub territories: Vec<String>,
    /// Territories where it may not be offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    /// Available from this time (ms since the Unix epoch, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Available until this time (ms since the Unix epoch, exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Kinds of use allowed (`stream`, `download`, `remix`, …); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<String>,
}

impl Rights {
    /// Parses a rights cell (see the module docs). `Ok(None)` for an empty cell.
    pub fn parse(cell: &str) -> Result<Option<Rights>, String> {
        let mut r = Rights::default();
        let mut any = false;
        for rule in cell.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            any = true;
            let (key, value) = rule.split_once('=').ok_or_else(|| format!("rights rule {rule:?} is not key=value"))?;
            let list = || -> Result<Vec<String>, String> {
                let v: Vec<String> = value.split(',').map(|t| t.trim().to_ascii_uppercase()).filter(|t| !t.is_empty()).collect();
                match v.iter().find(|t| t.len() != 2 || !t.bytes().all(|b| b.is_ascii_alphabetic())) {
                    Some(bad) => Err(format!("{bad:?} is not a two-letter territory code")),
                    None if v.is_empty() => Err(format!("rights rule {key:?} lists nothing")),
                    None => Ok(v),
                }
            };
            match key.trim() {
                "territories" => r.territories = list()?,
                "exclude" => r.excluded = list()?,
                "from" => r.from = Some(parse_time(value.trim())?),
                "until" => r.until = Some(parse_time(value.trim())?),
                "usage" => {
                    r.usage = value.split(',').map(|u| u.trim().to_ascii_lowercase()).filter(|u| !u.is_empty()).collect();
                    if r.usage.is_empty() {
                        return Err("rights rule \"usage\" lists nothing".into());
                    }
                }
                other => return Err(format!("unknown rights rule {other:?} (territories, exclude, from, until, usage)")),
            }
        }
        if let (Some(f), Some(u)) = (r.from, r.until)
            && u <= f
        {
            return Err("the availability window ends before it starts".into());
        }
        Ok(any.then_some(r))
    }

    /// Whether the item may be offered in `territory` at `now` (ms) for `usage`. An unknown
    /// territory passes no territory rule and an unknown time no window (rights are honoured
    /// conservatively); an unknown usage is not checked.
    pub fn allows(&self, territory: Option<&str>, now: i64, usage: Option<&str>) -> bool {
        let t = territory.map(str::to_ascii_uppercase);
        let territory_ok = match &t {
            Some(t) => (self.territories.is_empty() || self.territories.contains(t)) && !self.excluded.contains(t),
            None => self.territories.is_empty() && self.excluded.is_empty(),
        };
        let time_ok = self.from.is_none_or(|f| now >= f) && self.until.is_none_or(|u| now < u);
        let usage_ok = match usage {
            Some(u) => self.usage.is_empty() || self.usage.iter().any(|a| a.eq_ignore_ascii_case(u)),
            None => true,
        };
        territory_ok && time_ok && usage_ok
    }
}

/// Parses a trust cell: a number in [0, 1]; `Ok(None)` when empty.
pub fn parse_trust(cell: &str) -> Result<Option<f32>, String> {
    let cell = cell.trim();
    if cell.is_empty() {
        return Ok(None);
    }
    match cell.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(Some(v)),
        _ => Err(format!("trust {cell:?} is not a number from 0 to 1")),
    }
}

/// `YYYY-MM-DD` (UTC midnight) or integer milliseconds since the Unix epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || format!("{s:?} is not a date (YYYY-MM-DD) or milliseconds since 1970");
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let (y, m, d): (i64, u32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d == 0 || d > days_in[m as usize - 1] || !(1..=9999).contains(&y) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400_000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_midnights() {
        assert_eq!(parse_time("1970-01-01"), Ok(0));
        assert_eq!(parse_time("2026-01-01"), Ok(1_767_225_600_000));
        assert_eq!(parse_time("2000-03-01"), Ok(951_868_800_000));
        assert_eq!(parse_time("12345"), Ok(12_345));
        for bad in ["2026-02-30", "2026-13-01", "2025-02-29", "26-1", "soon", "2026-00-10"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
    }

    #[test]
    fn an_empty_rules_cell_is_no_rules() {
        assert_eq!(Rights::parse(""), Ok(None));
        assert_eq!(Rights::parse(" ; "), Ok(None));
    }

    #[test]
    fn territory_window_and_usage_rules_apply_as_written() {
        let r = Rights::parse("exclude=us, ca; from=2026-06-01; usage=Stream").unwrap().unwrap();
        assert_eq!((r.excluded.clone(), r.usage.clone()), (vec!["US".to_owned(), "CA".into()], vec!["stream".to_owned()]));
        let june = parse_time("2026-06-01").unwrap();
        assert!(r.allows(Some("ch"), june, Some("stream")));
        assert!(!r.allows(Some("ch"), june - 1, Some("stream")), "not before the window");
        assert!(!r.allows(Some("US"), june, Some("stream")));
        assert!(!r.allows(None, june, None), "an unknown territory passes no territory rule");
        assert!(r.allows(Some("CH"), june, None), "no usage asked: not checked");
    }

    #[test]
    fn until_is_exclusive_and_a_window_alone_ignores_the_territory() {
        let w = Rights::parse("until=2026-01-01").unwrap().unwrap();
        assert!(!w.allows(Some("CH"), parse_time("2026-01-01").unwrap(), None), "until is exclusive");
        assert!(w.allows(None, 0, None));
    }

    #[test]
    fn malformed_rules_are_errors() {
        for bad in ["territories", "territories=", "territories=CHE", "region=CH", "from=2027-01-01;until=2026-01-01", "usage=,"] {
            assert!(Rights::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_is_a_number_in_zero_one_or_empty() {
        assert_eq!(parse_trust(" 0.75 "), Ok(Some(0.75)));
        assert_eq!(parse_trust(""), Ok(None));
        for bad in ["1.5", "high", "NaN", "-0.1"] {
            assert!(parse_trust(bad).is_err(), "{bad}");
        }
    }
}
