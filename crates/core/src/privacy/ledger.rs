//! The person's privacy ledger, kept in their synced [`History`] so that every one of their
//! devices shares one budget: each round a device contributes to is recorded as a [`Spend`]
//! (the mechanism the round ran, as the accountant composes it), and the cumulative ε is the
//! RDP composition of every device's spends. Before a round, a device asks [`admit`]: the person
//! must have consented, the round must fit in what is left of their budget, and at most one of
//! their devices takes part in a round (each device that wants to writes a claim; after a sync
//! every device computes the same contributor from the claims, deterministically). A refusal is
//! decided before anything is sent.
//!
//! ```
//! use hearth_core::person::history::{History, Settings};
//! use hearth_core::privacy::ledger::{self, Admission};
//! use hearth_core::privacy::rdp::Mechanism;
//! let mut h = History::new("laptop");
//! h.set_settings(&Settings { federated: true, privacy_budget: 4.0 }).unwrap();
//! let m = Mechanism::SubsampledGaussian { q: 0.01, noise_multiplier: 1.0 };
//! ledger::claim(&mut h, "round-1", 0).unwrap();
//! assert!(matches!(ledger::admit(&h, "round-1", &m, 1e-5).unwrap(), Admission::Contribute { .. }));
//! ```

use serde::{Deserialize, Serialize};

use super::rdp::{Accountant, Mechanism, RdpError, integer_orders};
use crate::person::history::{History, HistoryError};

/// Why the ledger could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The history refused the record.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// A mechanism the accountant refuses.
    #[error(transparent)]
    Rdp(#[from] RdpError),
    /// A round id that cannot be a key (empty, over 128 bytes, or holding `:`).
    #[error("a round id is 1 to 128 characters without ':'")]
    RoundId,
}

/// One round's privacy spend, recorded by the device that contributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// The round.
    pub round: String,
    /// The model version the round trained.
    pub model_version: u32,
    /// What the round ran, for the accountant.
    pub mechanism: Mechanism,
    /// The device that took part.
    pub device: String,
    /// When (ms since the Unix epoch, the device's clock).
    pub ts: i64,
}

/// A device's answer to "may I take part in this round?".
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Take part: the person consented, the round fits in the budget and this device is the
    /// person's contributor. The ε figures are at the round's δ.
    Contribute {
        /// Cumulative ε before this round.
        spent: f64,
        /// Cumulative ε if this round is spent.
        after: f64,
    },
    /// Send nothing: why.
    Refuse(Refusal),
}

/// Why a device sends nothing to a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The person has not turned federated learning on.
    NoConsent,
    /// The round would take the person past their budget.
    OverBudget {
        /// Cumulative ε spent so far.
        spent: f64,
        /// What it would be after this round.
        after: f64,
        /// The person's budget.
        budget: f64,
    },
    /// Another of the person's devices contributes to this round.
    AnotherDevice(String),
    /// This device has not claimed the round (call [`claim`] and sync first).
    NotClaimed,
    /// The person already contributed to this round.
    AlreadySpent,
}

fn check_round(round: &str) -> Result<(), LedgerError> {
    if round.is_empty() || round.len() > 128 || round.contains(':') { Err(LedgerError::RoundId) } else { Ok(()) }
}

/// Every spend in the history, from every device of the person (records that do not parse are
/// skipped: a newer format's spends are counted by the devices that read it).
pub fn spends(h: &History) -> Vec<Spend> {
    h.records("l:").into_iter().filter_map(|(_, text)| serde_json::from_str(&text).ok()).collect()
}

fn accountant(spends: &[Spend]) -> Result<Accountant, LedgerError> {
    let mut a = Accountant::with_orders(integer_orders());
    for s in spends {
        a.compose(&s.mechanism, 1)?;
    }
    Ok(a)
}

/// The person's cumulative ε at `delta` over every device's spends.
pub fn spent(h: &History, delta: f64) -> Result<f64, LedgerError> {
    Ok(accountant(&spends(h))?.epsilon(delta)?.0)
}

/// Records this device's claim to contribute to `round` (before the round's first message).
pub fn claim(h: &mut History, round: &str, now: i64) -> Result<(), LedgerError> {
    check_round(round)?;
    let key = format!("r:{round}:{}", h.device());
    Ok(h.put_record(&key, &now.to_string())?)
}

/// The person's contributor to `round`: among the devices that claimed it, the one whose
/// SHA-256(round ‖ 0 ‖ device) is lowest (every replica that has the same claims agrees).
pub fn contributor(h: &History, round: &str) -> Option<String> {
    let prefix = format!("r:{round}:");
    h.records(&prefix)
        .into_iter()
        .map(|(k, _)| k[prefix.len()..].to_owned())
        .min_by_key(|device| crate::codec::sha256(&[round.as_bytes(), &[0], device.as_bytes()].concat()).as_ref().to_vec())
}

/// Whether this device may take part in `round` running `mechanism`, decided from the synced
/// history alone (nothing is sent to decide it).
pub fn admit(h: &History, round: &str, mechanism: &Mechanism, delta: f64) -> Result<Admission, LedgerError> {
    check_round(round)?;
    let settings = h.settings();
    if !settings.federated {
        return Ok(Admission::Refuse(Refusal::NoConsent));
    }
    let all = spends(h);
    if all.iter().any(|s| s.round == round) {
        return Ok(Admission::Refuse(Refusal::AlreadySpent));
    }
    match contributor(h, round) {
        None => return Ok(Admission::Refuse(Refusal::NotClaimed)),
        Some(d) if d != h.device() => return Ok(Admission::Refuse(Refusal::AnotherDevice(d))),
        Some(_) => {}
    }
    let mut a = accountant(&all)?;
    let spent = a.epsilon(delta)?.0;
    let after = a.compose(mechanism, 1)?.epsilon(delta)?.0;
    if after > settings.privacy_budget {
        return Ok(Admission::Refuse(Refusal::OverBudget { spent, after, budget: settings.privacy_budget }));
    }
    Ok(Admission::Contribute { spent, after })
}

/// Records that this device took part in `round` (right before its masked update is sent, so a
/// crash after sending can only over-count).
pub fn record(h: &mut History, round: &str, model_version: u32, mechanism: &Mechanism, now: i64) -> Result<Spend, LedgerError> {
    check_round(round)?;
    mechanism.rdp(&[2.0])?;
    let spend = Spend { round: round.to_owned(), model_version, mechanism: mechanism.clone(), device: h.device().to_owned(), ts: now };
    let text = serde_json::to_string(&spend).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
    h.put_record(&format!("l:{}:{round}", h.device()), &text)?;
    Ok(spend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::person::history::Settings;

    fn person(device: &str) -> History {
        let mut h = History::new(device);
        h.set_settings(&Settings { federated: true, privacy_budget: 3.0 }).unwrap();
        h
    }

    fn sync(a: &mut History, b: &mut History) {
        a.merge(b).unwrap();
        b.merge(a).unwrap();
    }

    const M: Mechanism = Mechanism::SubsampledGaussian { q: 0.05, noise_multiplier: 1.0 };

    #[test]
    fn spends_on_two_synced_devices_add_up() {
        let mut phone = person("phone");
        let mut laptop = History::empty("laptop");
        sync(&mut phone, &mut laptop);
        // Concurrent spends, each on its own device, in different rounds.
        record(&mut phone, "r1", 1, &M, 10).unwrap();
        record(&mut laptop, "r2", 1, &M, 11).unwrap();
        let alone = spent(&phone, 1e-5).unwrap();
        sync(&mut phone, &mut laptop);
        let both = spent(&phone, 1e-5).unwrap();
        assert_eq!(spends(&phone).len(), 2);
        assert_eq!(both, spent(&laptop, 1e-5).unwrap(), "both devices see one budget");
        let mut two = Accountant::with_orders(integer_orders());
        two.compose(&M, 2).unwrap();
        assert!((both - two.epsilon(1e-5).unwrap().0).abs() < 1e-12 && both > alone);
        // Compaction on one device and adoption on the other keep every spend.
        phone.compact(0).unwrap();
        laptop.adopt(&phone.save()).unwrap();
        assert_eq!(spends(&laptop).len(), 2);
        phone.wipe(99).unwrap();
        assert_eq!(spends(&phone).len(), 2, "a wipe does not give the budget back");
    }

    #[test]
    fn one_device_of_a_person_contributes_to_a_round_and_over_budget_sends_nothing() {
        let mut phone = person("phone");
        let mut laptop = History::empty("laptop");
        sync(&mut phone, &mut laptop);
        // Both claim before syncing; after the sync they agree on one contributor.
        claim(&mut phone, "r7", 1).unwrap();
        claim(&mut laptop, "r7", 2).unwrap();
        sync(&mut phone, &mut laptop);
        let who = contributor(&phone, "r7").unwrap();
        assert_eq!(contributor(&laptop, "r7").as_deref(), Some(who.as_str()));
        let (winner, loser) = if who == "phone" { (&phone, &laptop) } else { (&laptop, &phone) };
        assert!(matches!(admit(winner, "r7", &M, 1e-5).unwrap(), Admission::Contribute { .. }));
        assert_eq!(admit(loser, "r7", &M, 1e-5).unwrap(), Admission::Refuse(Refusal::AnotherDevice(who.clone())));
        assert_eq!(admit(&phone, "r8", &M, 1e-5).unwrap(), Admission::Refuse(Refusal::NotClaimed));
        // Spend until the budget (3.0) is reached: the round that would pass it is refused.
        let mut rounds = 0;
        loop {
            let round = format!("s{rounds}");
            claim(&mut phone, &round, 0).unwrap();
            match admit(&phone, &round, &M, 1e-5).unwrap() {
                Admission::Contribute { after, .. } => {
                    assert!(after <= 3.0);
                    record(&mut phone, &round, 1, &M, 0).unwrap();
                    rounds += 1;
                }
                Admission::Refuse(Refusal::OverBudget { spent, after, budget }) => {
                    assert!(spent <= budget && after > budget);
                    break;
                }
                other => panic!("{other:?}"),
            }
            assert!(rounds < 10_000);
        }
        assert!(rounds > 1);
        // The same round twice is refused too.
        assert_eq!(admit(&phone, "s0", &M, 1e-5).unwrap(), Admission::Refuse(Refusal::AlreadySpent));
    }

    #[test]
    fn without_consent_nothing_is_admitted_and_bad_round_ids_are_refused() {
        let mut h = History::new("tablet");
        claim(&mut h, "r1", 0).unwrap();
        assert_eq!(admit(&h, "r1", &M, 1e-5).unwrap(), Admission::Refuse(Refusal::NoConsent));
        for bad in ["", "a:b", &"x".repeat(129)] {
            assert_eq!(claim(&mut h, bad, 0), Err(LedgerError::RoundId));
        }
        let bad = Mechanism::SubsampledGaussian { q: 2.0, noise_multiplier: 1.0 };
        assert!(matches!(record(&mut h, "r1", 1, &bad, 0), Err(LedgerError::Rdp(_))));
        assert!(h.put_record("e:x", "y").is_err(), "ledger records cannot overwrite events");
    }
}
