//! Federated quality on MovieLens 100K, the full runs behind BENCHMARKS.md (the CI-sized run is a
//! scenario test). Every model is scored as `eval` scores it, with user vectors from each
//! person's history and profile alone (a federated model has no central personal vectors; the
//! central models are scored the same way, so the comparison is like for like).
//!
//! ```text
//! cargo run -p hearth-tests --bin fed_quality -- scratch [--rounds 60] [--devices 200] [--seed 42 (sampling and devices; the initialisation is always seed 42)]
//! cargo run -p hearth-tests --bin fed_quality -- half [--eps 1,2,4,8,16|none] [--rounds 20]
//!     [--devices 0 (= everyone)] [--groups tower,items,history-items,item-tags] [--clip 1]
//!     [--server fedadam|fedavg] [--lr 0.01] [--epochs 2] [--local-lr 0.05] [--recon-steps 20]
//!     [--reconstruct] [--tau 1e-3] [--decay-every 0 --decay 1 (both learning rates × decay every N rounds)]
//! ```
//! - `scratch`: federated rounds over every user from the same initialisation as the central
//!   model (`models/ml100k`, seed 42), no DP, beside that central model.
//! - `half`: v1 trained centrally on the even users; federated rounds over the odd users, with
//!   no DP and at each cumulative ε; everything scored on the odd users; central on all users.

use std::path::Path;

use hearth_aggregator::{evaluate_model, load_dataset, read_model_dir, train_model};
use hearth_core::artifact::TensorFile;
use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::data::{Dataset, Split, leave_one_out};
use hearth_core::fed::aggregate::ServerOptimizer;
use hearth_core::fed::client::ModelSettings;
use hearth_core::fed::layout::Layout;
use hearth_core::fed::plan::{Group, LocalTraining};
use hearth_core::privacy::ddg::{DdgConfig, DdgPlan};
use hearth_core::privacy::rdp::{Accountant, integer_orders};
use hearth_tests::fed_sim::{Population, SimConfig, run};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> T {
    arg(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}"))).unwrap_or(default)
}

fn groups() -> Vec<Group> {
    arg("--groups")
        .unwrap_or_else(|| "tower".into())
        .split(',')
        .map(|g| match g {
            "tower" => Group::Tower,
            "item-tags" => Group::ItemTags,
            "history-items" => Group::HistoryItems,
            "items" => Group::Items,
            other => panic!("unknown group {other} (tower, item-tags, history-items, items)"),
        })
        .collect()
}

fn settings(b: &ModelBundle) -> ModelSettings {
    let h = &b.manifest.hyper;
    ModelSettings {
        link: b.manifest.link().expect("a known link"),
        rating_weight: h["rating_weight"].as_f64().unwrap_or(0.0) as f32,
        user_l2: h["user_l2"].as_f64().unwrap_or(0.0) as f32,
    }
}

/// How user vectors are made for scoring.
static RECONSTRUCT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// (sampled HR@10, full HR@10, full NDCG@10) of `bundle` with `global` on `split`: user vectors
/// from each person's history alone, or with `--reconstruct` plus the personal vector each
/// person's device rebuilds from the model and their training history (Federated
/// Reconstruction's evaluation; the same for central and federated models).
fn score(bundle: &ModelBundle, global: &TensorFile, ds: &Dataset, split: &Split) -> [f64; 3] {
    let mut b = bundle.clone();
    b.global = global.clone();
    b.personal = None;
    if *RECONSTRUCT.get_or_init(|| std::env::args().any(|a| a == "--reconstruct")) {
        let pop = Population::new(ds, split);
        let dims = &bundle.manifest.dims;
        let rows = hearth_core::platform::par_map(pop.people.len(), |u| {
            if pop.people[u].history.is_empty() {
                return vec![0.0; dims.dim];
            }
            hearth_core::fed::client::reconstruct::<burn::backend::Autodiff<burn::backend::Flex>>(
                global, dims, &pop.catalog, &pop.people[u], &settings(bundle), &LocalTraining::default(), u as u64, &Default::default(),
            )
            .expect("reconstruction")
        });
        let mut t = TensorFile::default();
        t.insert("personal", vec![rows.len(), dims.dim], rows.concat());
        b.personal = Some(t);
    }
    let device = Default::default();
    let model = b.to_model::<burn::backend::Flex>(&device).expect("a model");
    let r = evaluate_model(&model, ds, split, None, 42, &device).expect("evaluation");
    [r.model.sampled.hr, r.model.full.hr, r.model.full.ndcg]
}

fn row(name: &str, s: [f64; 3], base: Option<[f64; 3]>, extra: &str) {
    let ratio = base.map_or(String::new(), |b| format!("{:.3} / {:.3}", s[0] / b[0], s[1] / b[1]));
    println!("| {name} | {:.4} | {:.4} | {:.4} | {ratio} | {extra} |", s[0], s[1], s[2]);
}

fn sim(rounds: u32, devices: u32, noise: f64, min_survivors: u32, seed: u64) -> SimConfig {
    SimConfig {
        rounds,
        devices,
        groups: groups(),
        local: LocalTraining { epochs: num("--epochs", 2), lr: num("--local-lr", 0.05), reconstruction_steps: num("--recon-steps", 20), ..LocalTraining::default() },
        clip: num("--clip", 1.0),
        noise_multiplier: noise,
        min_survivors,
        server: match arg("--server").as_deref() {
            Some("fedavg") => ServerOptimizer::FedAvg { lr: num("--lr", 1.0) },
            _ => ServerOptimizer::FedAdam { lr: num("--lr", 0.01), beta1: 0.9, beta2: 0.99, tau: num("--tau", 1e-3) },
        },
        dropout: num("--dropout", 0.0),
        seed,
        decay_every: num("--decay-every", 0),
        decay: num("--decay", 1.0),
    }
}

/// The noise multiplier whose rounds reach cumulative ε = `target` at δ = 1e-5 after `rounds`
/// rounds of about `devices` survivors sampled at rate `q` (the mechanism the rounds really run).
fn noise_for(target: f64, rounds: u32, devices: u32, q: f64, dim: usize, clip: f64) -> f64 {
    let eps = |z: f64| {
        let plan = DdgPlan::new(dim, &DdgConfig { clip, noise_multiplier: z, min_survivors: devices, max_clients: devices, ..DdgConfig::default() }).expect("a plan");
        let mut a = Accountant::with_orders(integer_orders());
        a.compose(&plan.mechanism(q, devices), rounds).expect("accountable");
        a.epsilon(1e-5).expect("epsilon").0
    };
    let (mut lo, mut hi) = (0.05f64, 200.0f64);
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if eps(mid) > target { lo = mid } else { hi = mid }
    }
    hi
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ds = load_dataset(&hearth_tests::ml100k_dir(), None).expect("MovieLens 100K");
    let split = leave_one_out(&ds).expect("a split");
    let central = read_model_dir(&root.join("models/ml100k")).expect("the committed model");
    let dims = central.manifest.dims;
    let pop = Population::new(&ds, &split);
    let t0 = std::time::Instant::now();
    match mode.as_str() {
        "scratch" => {
            let rounds = num("--rounds", 60);
            let devices = num("--devices", 200);
            let every = num("--eval-every", 10);
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(42);
            let init = hearth_core::model::GlobalParams::<burn::backend::Flex>::init(&dims, &mut rng, &Default::default()).to_file();
            let everyone: Vec<u32> = (0..ds.users.len() as u32).collect();
            let base = score(&central, &central.global, &ds, &split);
            println!("| model | sampled HR@10 | full HR@10 | full NDCG@10 | / central (sampled / full) | |\n|---|---|---|---|---|---|");
            row("central (models/ml100k, seed 42)", base, None, "");
            row("initialisation", score(&central, &init, &ds, &split), Some(base), "");
            let cfg = sim(rounds, devices, 0.0, 10, num("--seed", 42));
            run(&pop, &everyone, &dims, &settings(&central), init, &cfg, |l, g| {
                eprintln!("round {}: {} devices ({} failed local training), local loss {:.3} -> {:.3}, {:.1} s", l.round, l.survivors, l.failed, l.local_loss.0, l.local_loss.1, l.secs);
                if l.round % every == 0 || l.round == rounds {
                    row(&format!("federated, {} rounds of ~{devices}", l.round), score(&central, g, &ds, &split), Some(base), &format!("{:.0} s", t0.elapsed().as_secs_f64()));
                }
            })
            .expect("rounds");
        }
        "half" => {
            let rounds = num("--rounds", 20);
            let odd: Vec<u32> = (0..ds.users.len() as u32).filter(|u| u % 2 == 1).collect();
            let devices = match num("--devices", 0) { 0 => odd.len() as u32, d => d };
            let q = (f64::from(devices) / odd.len() as f64).min(1.0);
            let on_odd = Split { train: split.train.clone(), test: split.test.iter().filter(|h| h.user % 2 == 1).copied().collect() };
            // v1: central training on the even users' interactions only.
            let even = Dataset { interactions: ds.interactions.iter().filter(|x| x.user % 2 == 0).copied().collect(), ..ds.clone() };
            let v1 = train_model(&even, None, &serde_json::from_value(central.manifest.hyper.clone()).expect("the committed config"), hearth_aggregator::Backend::Cpu, &mut |_| {})
                .expect("v1")
                .bundle;
            let base = score(&central, &v1.global, &ds, &on_odd);
            println!("| model (scored on the odd users) | sampled HR@10 | full HR@10 | full NDCG@10 | / v1 (sampled / full) | rounds, ε, noise |\n|---|---|---|---|---|---|");
            row("v1: central on the even users", base, None, "");
            let layout = Layout::new(&dims, &groups());
            // The noise is sized for 90 % of the expected devices surviving.
            let min_survivors = (f64::from(devices) * 0.9) as u32;
            let last = |name: String, noise: f64, seed: u64| -> [f64; 3] {
                let mut final_eps = None;
                let every = num("--eval-every", 0u32);
                let g = run(&pop, &odd, &dims, &settings(&v1), v1.global.clone(), &sim(rounds, devices, noise, min_survivors, seed), |l, g| {
                    final_eps = l.epsilon;
                    eprintln!(
                        "{name} round {}: {} devices, ε {:?}, local loss {:.3} -> {:.3}, device update norm p50 {:.4}, mean update norm {:.4}, {:.1} s",
                        l.round, l.survivors, l.epsilon, l.local_loss.0, l.local_loss.1, l.device_norm_p50, l.update_norm, l.secs
                    );
                    if every > 0 && l.round % every == 0 {
                        let s = score(&central, g, &ds, &on_odd);
                        eprintln!("{name} after round {}: {:.4} / {:.4} / {:.4}", l.round, s[0], s[1], s[2]);
                    }
                })
                .expect("rounds");
                let s = score(&central, &g, &ds, &on_odd);
                row(&name, s, Some(base), &format!("{rounds} × ~{devices} devices, ε {}, z {noise:.2}", final_eps.map_or("∞ (no DP)".into(), |e| format!("{e:.2}"))));
                s
            };
            let open = last("+ federated, no DP".into(), 0.0, 1);
            let targets = arg("--eps").unwrap_or_else(|| "1,2,4,8,16".into());
            for target in targets.split(',').filter(|e| *e != "none").map(|e| e.parse::<f64>().expect("an ε")) {
                let z = noise_for(target, rounds, min_survivors, q, layout.len(), num("--clip", 1.0));
                let s = last(format!("+ federated, ε = {target}"), z, 2);
                let kept = (s[1] - base[1]) / (open[1] - base[1]);
                eprintln!("ε {target}: keeps {:.0} % of the non-private gain in full HR@10", 100.0 * kept);
            }
            row("central on all users (models/ml100k)", score(&central, &central.global, &ds, &on_odd), Some(base), "");
        }
        _ => {
            eprintln!("usage: fed_quality scratch|half [options] (see the file's header)");
            std::process::exit(2);
        }
    }
    eprintln!("{:.0} s", t0.elapsed().as_secs_f64());
}
