//! Files: datasets in, model directories and splits out. Every write goes to a temporary name,
//! is synced, renamed, and the directory synced, as `FileStore` does; a model directory's
//! manifest comes last, so a reader never sees a manifest naming files that are not there.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hearth_core::artifact::bundle::ModelBundle;
use hearth_core::artifact::shard::CatalogShard;
use hearth_core::data::{self, Dataset, MovieLensFiles, Split};
use hearth_core::model::ARCHITECTURE;

use crate::error::{AggregatorError, Result, io};
use crate::NEGATIVES;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io("read", path))
}

/// Loads a dataset: a directory in the MovieLens 100K layout (`u.data`, optional `u.item`,
/// `u.genre`, `u.user`), or a CSV file of interactions with an optional item CSV.
pub fn load_dataset(path: &Path, items: Option<&Path>) -> Result<Dataset> {
    if !path.exists() {
        return Err(AggregatorError::NoData(path.to_path_buf()));
    }
    if path.is_dir() {
        let opt = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = path.join(name);
            if p.exists() { Ok(Some(read(&p)?)) } else { Ok(None) }
        };
        let data_path = path.join("u.data");
        if !data_path.exists() {
            return Err(AggregatorError::NotMovieLens(path.to_path_buf()));
        }
        let data = read(&data_path)?;
        let (item, genre, user) = (opt("u.item")?, opt("u.genre")?, opt("u.user")?);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
        Dataset::from_movielens(
            &name,
            MovieLensFiles { data: &data, item: item.as_deref(), genre: genre.as_deref(), user: user.as_deref() },
        )
        .map_err(AggregatorError::from)
    } else {
        let bytes = read(path)?;
        let item_bytes = items.map(read).transpose()?;
        let items_name = items.map(|p| p.display().to_string());
        let items_arg = match (&items_name, &item_bytes) {
            (Some(n), Some(b)) => Some((n.as_str(), b.as_slice())),
            _ => None,
        };
        Ok(Dataset::from_csv(&path.display().to_string(), &bytes, items_arg)?)
    }
}

/// The evaluation protocol for a dataset: leave-one-out, or the pairs of an explicit test file.
pub fn make_split(ds: &Dataset, test: Option<&Path>) -> Result<Split> {
    Ok(match test {
        Some(t) => {
            let held = data::read_test_file(&t.display().to_string(), &read(t)?, ds)?;
            data::split_with_test(ds, &held)?
        }
        None => data::leave_one_out(ds)?,
    })
}

/// Writes the exact split `train` uses, as files other tools can read (external ids, tab
/// separated, no header), so peers are scored on hearth's split and candidates:
/// `items.tsv` (the catalog), `train.tsv` (`user item rating`: training minus validation),
/// `valid.tsv` (`user item rating`), `test.tsv` (`user item`, as `eval --test` reads it), `valid_candidates.tsv` and `candidates.tsv`
/// (`user item…`: the sampled negatives, `NEGATIVES` per user, drawn with `seed` as `train` and
/// `eval` draw them). Returns (training rows, validation users, test users).
pub fn write_split(ds: &Dataset, test: Option<&Path>, seed: u64, dir: &Path) -> Result<(usize, usize, usize)> {
    let split = make_split(ds, test)?;
    let valid = data::validation_split(ds, &split);
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let user = |u: u32| ds.users[u as usize].id.as_str();
    let item = |i: u32| ds.items[i as usize].id.as_str();
    let mut items = String::new();
    for it in &ds.items {
        items += &it.id;
        items.push('\n');
    }
    let mut train = String::new();
    for x in &valid.train {
        train += &format!("{}\t{}\t{}\n", user(x.user), item(x.item), x.rating);
    }
    let held = |s: &Split| -> String { s.test.iter().map(|h| format!("{}\t{}\n", user(h.user), item(h.item))).collect() };
    // Validation rows carry their rating too, so peers refit on train + validation with it.
    let rating: std::collections::HashMap<(u32, u32), f32> =
        ds.interactions.iter().map(|x| ((x.user, x.item), x.rating)).collect();
    let held_rated = |s: &Split| -> String {
        s.test
            .iter()
            .map(|h| format!("{}\t{}\t{}\n", user(h.user), item(h.item), rating.get(&(h.user, h.item)).copied().unwrap_or(1.0)))
            .collect()
    };
    let cands = |s: &Split| -> String {
        s.test
            .iter()
            .zip(data::sample_negatives(ds, s, NEGATIVES, seed))
            .map(|(h, c)| {
                let mut line = user(h.user).to_owned();
                for i in c {
                    line.push('\t');
                    line += item(i);
                }
                line + "\n"
            })
            .collect()
    };
    for (name, text) in [
        ("items.tsv", items),
        ("train.tsv", train),
        ("valid.tsv", held_rated(&valid)),
        ("valid_candidates.tsv", cands(&valid)),
        ("test.tsv", held(&split)),
        ("candidates.tsv", cands(&split)),
    ] {
        write_atomic(dir, name, text.as_bytes())?;
    }
    Ok((valid.train.len(), valid.test.len(), split.test.len()))
}

/// Writes a model directory. Each file goes to a temporary name, is synced, then renamed; the
/// manifest comes last, so an interrupted write never leaves a manifest naming missing files.
pub fn write_model_dir(dir: &Path, bundle: &ModelBundle) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    for (name, bytes) in bundle.to_files() {
        write_atomic(dir, name, &bytes)?;
    }
    Ok(())
}

/// Publishes a newly trained model into `dir`: it gets the next model version there (one above
/// the version of the model `dir` holds, or the bundle's own in an empty directory), its
/// `items.shard` is built for that version, and the files are written manifest last. A device
/// holding a shard or a fine-tuning offset of the old version then sees a version that differs.
/// Errors (writing nothing) when `dir` holds a manifest whose version cannot be read.
pub fn publish_model_dir(dir: &Path, bundle: &mut ModelBundle) -> Result<CatalogShard> {
    if let Some(previous) = published_version(dir)? {
        let next = previous.checked_add(1).ok_or(AggregatorError::VersionOverflow)?;
        bundle.manifest.model_version = bundle.manifest.model_version.max(next);
    }
    let shard = attach_shard(bundle)?;
    write_model_dir(dir, bundle)?;
    Ok(shard)
}

/// The model version of the model in `dir`, `None` when it holds none.
pub fn published_version(dir: &Path) -> Result<Option<u32>> {
    let path = dir.join(hearth_core::artifact::bundle::MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let version = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|m| m.get("model_version")?.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| AggregatorError::UnreadableVersion(path.clone()))?;
    Ok(Some(version))
}

/// Quantizes the model's item vectors into its int8 catalog shard (`items.shard`) and keeps it in
/// the bundle, so [`write_model_dir`] writes it with its digest in the manifest.
pub fn attach_shard(bundle: &mut ModelBundle) -> Result<CatalogShard> {
    Ok(bundle.attach_shard::<burn::backend::Flex>(&Default::default())?)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(io("write", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, &target).map_err(io("rename", &target))?;
    // The rename is durable only once the directory entry is: sync the directory too.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))?;
    Ok(())
}

/// Reads and verifies a model directory.
pub fn read_model_dir(dir: &Path) -> Result<ModelBundle> {
    if !dir.is_dir() {
        return Err(AggregatorError::NoModelDir(dir.to_path_buf()));
    }
    ModelBundle::from_files(ARCHITECTURE, &mut |name| fs::read(dir.join(name)).ok())
        .map_err(|source| AggregatorError::ModelDir { dir: dir.to_path_buf(), source: Box::new(source) })
}

