//! The `hearth-aggregator` binary on bad input: every case must fail with a clear message and a
//! non-zero exit, never a panic. Also a small CSV dataset end to end through `train` and `eval`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hearth-aggregator"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.success(), String::from_utf8_lossy(&stdout).into(), String::from_utf8_lossy(&stderr).into())
}

fn fails_with(args: &[&str], needle: &str) {
    let (ok, _, err) = run(bin().args(args));
    assert!(!ok, "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// Two taste groups over 60 items with sequential structure, 120 users, string ids.
fn synthetic_csv(dir: &Path) -> PathBuf {
    let mut csv = String::from("UserId,ItemId,Rating,Timestamp\n");
    for u in 0..120 {
        let base = if u % 2 == 0 { 0 } else { 30 };
        for t in 0..15 {
            let item = base + (u * 7 + t * 3) % 30;
            csv += &format!("person-{u},title-{item},{},{}\n", 1 + (t % 5), 1000 + t * 10 + u);
        }
    }
    let p = dir.join("mine.csv");
    std::fs::write(&p, csv).unwrap();
    p
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = scratch("bad");
    let p = |name: &str, body: &str| {
        let f = dir.join(name);
        std::fs::write(&f, body).unwrap();
        f.display().to_string()
    };
    let out = dir.join("m").display().to_string();

    fails_with(&["train", "--data", "/nonexistent/data.csv", "--out", &out], "data not found: /nonexistent/data.csv does not exist");
    let cols = p("cols.csv", "user,item,rating\na,x,1\nb,y\n");
    fails_with(&["train", "--data", &cols, "--out", &out], &format!("{cols}:3: expected 3 columns, found 2"));
    let ts = p("ts.csv", "user,item,rating,timestamp\na,x,1,100\na,y,1,tuesday\n");
    fails_with(&["train", "--data", &ts, "--out", &out], &format!("{ts}:3: timestamp \"tuesday\" is not a number"));
    let empty = p("empty.csv", "user,item\n");
    fails_with(&["train", "--data", &empty, "--out", &out], &format!("{empty}: no interactions (the dataset is empty)"));
    let mldir = dir.join("ml");
    std::fs::create_dir_all(&mldir).unwrap();
    std::fs::write(mldir.join("u.data"), "1\t2\t3\n").unwrap();
    fails_with(&["train", "--data", mldir.to_str().unwrap(), "--out", &out], "u.data:1: expected 4 tab-separated columns, found 3");
    let ok_csv = p("ok.csv", "user,item\na,x\na,y\nb,x\n");
    fails_with(&["train", "--data", &ok_csv, "--out", &out, "--epochs", "0"], "invalid training setting: epochs must be at least 1");
    fails_with(&["train", "--data", &ok_csv, "--out", &out, "--lr=-1"], "lr must be > 0");
}

#[test]
fn a_dataset_where_everyone_touched_every_item_ends_with_a_clear_answer() {
    // Two items, both touched by everyone: no user has a negative to sample. Calibration used
    // to loop forever here; now every step ends, and the answer is a result or a clear error.
    let dir = scratch("full");
    let csv = dir.join("full.csv");
    std::fs::write(&csv, "user,item\na,x\na,y\nb,x\nb,y\nc,x\nc,y\n").unwrap();
    let out = dir.join("m");
    let mut child = bin()
        .args(["train", "--data", csv.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("train did not end in 120 s on a dataset without negatives");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let Output { status, stderr, .. } = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&stderr);
    assert!(!err.contains("panicked"), "{err}");
    if !status.success() {
        assert!(err.contains("error"), "a failure says why: {err}");
    }
}

#[test]
fn csv_dataset_trains_evaluates_and_refuses_other_models() {
    let dir = scratch("csv");
    let csv = synthetic_csv(&dir);
    let model = dir.join("model");
    let (ok, table, err) = run(bin().args([
        "train", "--data", csv.to_str().unwrap(), "--out", model.to_str().unwrap(), "--epochs", "8", "--dim", "16",
        "--hidden", "32", "--batch", "64", "--negatives", "32", "--lr", "0.01",
    ]));
    assert!(ok, "train failed: {err}");
    assert!(table.contains("two-tower") && table.contains("most-popular"), "{table}");

    let (ok, json, err) =
        run(bin().args(["eval", "--model", model.to_str().unwrap(), "--data", csv.to_str().unwrap(), "--json"]));
    assert!(ok, "eval failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hr = |who: &str, proto: &str| v[who][proto]["hr@10"].as_f64().unwrap();
    assert_eq!(v["users"], 120);
    // The structure is learnable; popularity is flat, so the model must beat it clearly.
    assert!(hr("model", "full") > hr("most_popular", "full") + 0.2, "{json}");
    assert!(v["model"]["sampled"]["ndcg@10"].as_f64().unwrap() > 0.0);

    // Explicit test and candidate files: same users, same candidates for both recommenders.
    let test = dir.join("test.tsv");
    let cands = dir.join("cands.tsv");
    let mut t = String::new();
    let mut c = String::new();
    for u in 0..120 {
        let base = if u % 2 == 0 { 0 } else { 30 };
        t += &format!("person-{u}\ttitle-{}\n", base + (u * 7 + 14 * 3) % 30);
        c += &format!("person-{u}\ttitle-{}\ttitle-{}\n", (base + 30) % 60, (base + 31) % 60);
    }
    std::fs::write(&test, t).unwrap();
    std::fs::write(&cands, c).unwrap();
    let (ok, json, err) = run(bin().args([
        "eval", "--model", model.to_str().unwrap(), "--data", csv.to_str().unwrap(), "--test", test.to_str().unwrap(),
        "--candidates", cands.to_str().unwrap(), "--json",
    ]));
    assert!(ok, "eval with files failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Among 1 + 2 candidates, every item ranks in the top 10.
    assert_eq!(v["model"]["sampled"]["hr@10"], 1.0);

    // Other data than the model was trained on.
    let other = dir.join("other.csv");
    std::fs::write(&other, "user,item\na,b\na,c\n").unwrap();
    fails_with(
        &["eval", "--model", model.to_str().unwrap(), "--data", other.to_str().unwrap()],
        "is not the dataset this model was trained on",
    );

    // A model directory of another architecture.
    let manifest = model.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("two-tower-v1", "matrix-factorization-v0");
    std::fs::write(&manifest, text).unwrap();
    fails_with(
        &["eval", "--model", model.to_str().unwrap(), "--data", csv.to_str().unwrap()],
        "model architecture \"matrix-factorization-v0\" is not \"two-tower-v1\"",
    );
    // No model at all.
    fails_with(
        &["eval", "--model", dir.join("nothing").to_str().unwrap(), "--data", csv.to_str().unwrap()],
        "does not exist",
    );
}

#[test]
fn synth_split_and_a_model_that_learned_nothing_is_flagged() {
    let dir = scratch("guard");
    let data = dir.join("plays");
    let (ok, _, err) = run(bin().args(["synth", "--shape", "long-tail", "--out", data.to_str().unwrap()]));
    assert!(ok, "synth failed: {err}");
    let csv = data.join("interactions.csv");

    // The split other tools are scored on: one validation and one test line per user with
    // enough history, 99 candidates each, and no test item in the training rows.
    let split = dir.join("split");
    let (ok, _, err) = run(bin().args(["split", "--data", csv.to_str().unwrap(), "--out", split.to_str().unwrap()]));
    assert!(ok, "split failed: {err}");
    assert!(err.contains("unordered data"), "{err}");
    let read = |name: &str| std::fs::read_to_string(split.join(name)).unwrap();
    let (train, valid, test, cands) = (read("train.tsv"), read("valid.tsv"), read("test.tsv"), read("candidates.tsv"));
    assert_eq!(test.lines().count(), 1200);
    assert_eq!(valid.lines().count(), 1200);
    assert!(cands.lines().all(|l| l.split('\t').count() == 100));
    let rows: std::collections::HashSet<(&str, &str)> =
        train.lines().map(|l| { let f: Vec<&str> = l.split('\t').collect(); (f[0], f[1]) }).collect();
    for l in test.lines().chain(valid.lines()) {
        let (u, i) = l.split_once('\t').unwrap();
        assert!(!rows.contains(&(u, i)), "held-out {u} {i} is in train.tsv");
    }

    // A model that learned nothing (one epoch at a vanishing learning rate) does not beat
    // most-popular on this long-tailed data: `train` says so loudly and records it.
    let model = dir.join("model");
    let (ok, _, err) = run(bin().args([
        "train", "--data", csv.to_str().unwrap(), "--out", model.to_str().unwrap(), "--epochs", "1", "--lr", "1e-9",
    ]));
    assert!(ok, "train failed: {err}");
    assert!(err.contains("data kind: unordered (no timestamp column)"), "{err}");
    assert!(err.contains("WARNING: this model does NOT beat most-popular on the validation split"), "{err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["selection"]["beats_most_popular"], false, "{manifest}");
    assert_eq!(manifest["selection"]["order"], "unordered");
    assert_eq!(manifest["selection"]["curve"].as_array().unwrap().len(), 1);
}

#[test]
fn each_training_into_a_directory_publishes_the_next_model_version() {
    let dir = scratch("versions");
    let csv = synthetic_csv(&dir);
    let model = dir.join("model");
    let (data, out) = (csv.to_str().unwrap(), model.to_str().unwrap());
    let train = ["train", "--data", data, "--out", out, "--epochs", "2", "--dim", "8", "--hidden", "16", "--batch", "64", "--negatives", "16"];
    let version = || -> (u64, String) {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
        let shard = hearth_core::artifact::shard::CatalogShard::decode(&std::fs::read(model.join("items.shard")).unwrap()).unwrap();
        (m["model_version"].as_u64().unwrap(), shard.model_version().to_owned())
    };
    let (ok, _, err) = run(bin().args(train));
    assert!(ok, "{err}");
    assert!(err.contains("wrote model version 1 to"), "{err}");
    assert_eq!(version(), (1, "1".into()));
    let (ok, _, err) = run(bin().args(train));
    assert!(ok, "{err}");
    assert!(err.contains("wrote model version 2 to"), "{err}");
    assert_eq!(version(), (2, "2".into()), "retraining publishes a new version, shard included");
    // Rewriting the shard or the calibration changes no parameter: the version stays.
    let (ok, _, err) = run(bin().args(["shard", "--model", out]));
    assert!(ok, "{err}");
    let (ok, _, err) = run(bin().args(["calibrate", "--model", out, "--data", data]));
    assert!(ok, "{err}");
    assert_eq!(version(), (2, "2".into()));
    // A manifest whose version cannot be read: nothing is published over it.
    std::fs::write(model.join("manifest.json"), b"{ not json").unwrap();
    fails_with(&train, "holds no readable model version");
    assert_eq!(std::fs::read(model.join("manifest.json")).unwrap(), b"{ not json");
}

#[test]
fn epsilon_reports_dp_accountings_figure_and_the_distributed_mechanisms() {
    // ../shared/testvectors/dp_epsilon.tsv: q 0.01, σ 1, 100 steps, δ 1e-5 → 1.21415 (dp-accounting 0.6.0).
    let (ok, out, err) = run(bin().args(["epsilon", "--sampling", "0.01", "--noise", "1", "--rounds", "100", "--delta", "1e-5", "--json"]));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((v["rdp"].as_f64().unwrap() - 1.21415).abs() < 1e-4, "{out}");
    assert!(v["order"].as_f64().unwrap() > 1.0 && v.get("distributed").is_none(), "{out}");
    // With the distributed mechanism's parameters: its ε beside the central one, a little above
    // it (the discrete noise, rounding and Zhu–Wang's subsampling bound).
    let (ok, out, err) = run(bin().args([
        "epsilon", "--sampling", "0.1", "--noise", "1.2", "--rounds", "50", "--clients", "100", "--dim", "36000", "--clip", "1", "--json",
    ]));
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (central, distributed) = (v["rdp"].as_f64().unwrap(), v["distributed"]["epsilon"].as_f64().unwrap());
    assert!(distributed > central && distributed < 1.5 * central, "{out}");
    assert_eq!(v["distributed"]["padded"], 36864);
    let (ok, text, _) = run(bin().args(["epsilon", "--sampling", "0.1", "--noise", "1.2", "--rounds", "50"]));
    assert!(ok && text.contains("50 rounds, sampling 0.1, noise multiplier 1.2: ε = "), "{text}");
    fails_with(&["epsilon", "--sampling", "1.5", "--noise", "1", "--rounds", "1"], "the sampling rate 1.5 is not in [0, 1]");
    fails_with(&["epsilon", "--sampling", "0.1", "--noise", "1", "--rounds", "1", "--delta", "2"], "delta 2 is not in [0, 1]");
    fails_with(&["epsilon", "--sampling", "0.1", "--noise", "1", "--rounds", "1", "--clients", "10"], "--dim");
}
