//! The "% match" calibration, fitted the way a device scores.

use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::data::{self, Dataset, Split};

use crate::error::{AggregatorError, Result};

/// How well a calibration fits held-out data it was not fitted on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationReport {
    /// The fitted calibration.
    pub calibration: hearth_core::eval::Calibration,
    /// Expected calibration error on the other half of the users (10 equal-width bins).
    pub ece: f64,
    /// Examples (positives + negatives) it was fitted on.
    pub fitted_on: usize,
    /// Examples it was checked on.
    pub checked_on: usize,
}

/// Fits the "% match" calibration the way a device scores: each person's vector from the plain
/// user tower over their training history and age band (no personal vector), scored against the
/// int8 catalog rows. Positive: the person's held-out item; negative: one random item they never
/// touched. So the probability reads "how likely this item, rather than an unrelated one, is what
/// you pick next". Fitted on even users, checked (ECE) on odd users.
pub fn fit_calibration(bundle: &ModelBundle, ds: &Dataset, split: &Split, seed: u64) -> Result<CalibrationReport> {
    use hearth_core::artifact::bundle::PersonInput;
    use hearth_core::eval::Calibration;
    use hearth_core::device::tower::UserTower;
    use rand::SeedableRng;
    let tower = UserTower::from_bundle(bundle)?;
    let shard = bundle.catalog_shard::<burn::backend::Flex>(&Default::default())?;
    let view = shard.view();
    let histories = split.histories(ds.users.len());
    let ages: Vec<Vec<u32>> = ds
        .users
        .iter()
        .map(|u| u.tags.iter().copied().filter(|&t| ds.user_tags[t as usize].starts_with("age:")).collect())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let score = |user: &[f32], i: u32| hearth_core::device::score::score_one(view, user, i);
    let (mut fit, mut check) = ((vec![], vec![]), (vec![], vec![]));
    for h in &split.test {
        let u = h.user as usize;
        let user = tower.person_vector(&PersonInput { history: histories[u].clone(), tags: ages[u].clone() });
        let seen: std::collections::HashSet<u32> = histories[u].iter().copied().collect();
        // A user who touched every other item has no negative to compare with: left out.
        let Some(&neg) = data::draw_distinct(&mut rng, ds.items.len() as u32, 1, |i| i == h.item || seen.contains(&i)).first() else { continue };
        let side = if u.is_multiple_of(2) { &mut fit } else { &mut check };
        side.0.push(score(&user, h.item));
        side.1.push(score(&user, neg));
    }
    let calibration = Calibration::fit(&fit.0, &fit.1).ok_or(AggregatorError::NoCalibrationData)?;
    let ece = hearth_core::eval::expected_calibration_error(&calibration, &check.0, &check.1, 10);
    Ok(CalibrationReport { calibration, ece, fitted_on: fit.0.len() * 2, checked_on: check.0.len() * 2 })
}

