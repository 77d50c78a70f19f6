//! Interactions and catalogs: dataset readers (MovieLens 100K layout, generic CSV), the
//! leave-one-out split and seeded negative sampling.
//!
//! Readers are sans-IO: they take the bytes of a file plus the name to report in errors. The
//! aggregator (or the browser) does the reading. Every malformed line gives a [`DataError`] that
//! names the file and the 1-based line.
//!
//! ```
//! use hearth_core::data::{Dataset, leave_one_out};
//! let csv = b"user,item,rating,timestamp\nann,a,5,10\nann,b,4,20\nbob,a,3,5\n";
//! let ds = Dataset::from_csv("mine.csv", csv, None).unwrap();
//! assert_eq!((ds.users.len(), ds.items.len()), (2, 2));
//! let split = leave_one_out(&ds).unwrap();
//! // ann's latest interaction (b at t=20) is held out; bob has one interaction and stays in training.
//! assert_eq!(split.test.len(), 1);
//! assert_eq!(ds.items[split.test[0].item as usize].id, "b");
//! ```

use std::collections::HashMap;
use std::fmt;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Why a dataset could not be read or split.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A line could not be parsed.
    #[error("{file}:{line}: {message}")]
    Malformed {
        /// File name as given by the caller.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong with the line.
        message: String,
    },
    /// The file parsed but holds no interactions.
    #[error("{file}: no interactions (the dataset is empty)")]
    Empty {
        /// File name as given by the caller.
        file: String,
    },
    /// A metadata file refers to something the interactions do not know, or vice versa.
    #[error("{file}: {message}")]
    Inconsistent {
        /// File name as given by the caller.
        file: String,
        /// What does not fit.
        message: String,
    },
}

fn malformed(file: &str, line: usize, message: impl Into<String>) -> DataError {
    DataError::Malformed { file: file.to_owned(), line, message: message.into() }
}

pub mod rights;

/// One catalog item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// External id as it appears in the data.
    pub id: String,
    /// Human-readable title (the id when the data has none).
    pub title: String,
    /// Indices into [`Dataset::item_tags`] (genres, any multi-hot tags).
    pub tags: Vec<u32>,
    /// Where, when and for what it may be offered ([`rights::Rights`]); `None`: no rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rights: Option<rights::Rights>,
    /// Content quality / source reliability in [0, 1]; below the caller's minimum (default
    /// [`rights::DEFAULT_MIN_TRUST`]) it is not recommended. `None`: not rated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<f32>,
}

/// One user (the dataset's view of a person; on a device there is exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// External id as it appears in the data.
    pub id: String,
    /// Indices into [`Dataset::user_tags`] (demographics when present: age band, gender, ...).
    pub tags: Vec<u32>,
}

/// One interaction, by dense indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    /// Index into [`Dataset::users`].
    pub user: u32,
    /// Index into [`Dataset::items`].
    pub item: u32,
    /// Explicit rating, or 1.0 for implicit data.
    pub rating: f32,
    /// Seconds (or any monotone clock); the file position when the data has no timestamps.
    pub timestamp: i64,
}

/// A set of interactions with its catalog. `interactions` keeps file order, which breaks
/// timestamp ties everywhere.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Short name (the directory or file stem).
    pub name: String,
    /// Users, indexed densely.
    pub users: Vec<User>,
    /// Items, indexed densely.
    pub items: Vec<Item>,
    /// Names of item tags (e.g. genres).
    pub item_tags: Vec<String>,
    /// Names of user tags (e.g. `age:25-34`, `gender:F`, `occupation:writer`).
    pub user_tags: Vec<String>,
    /// All interactions in file order.
    pub interactions: Vec<Interaction>,
    /// Whether the timestamps came from the data (a timestamp column); `false` when they are
    /// only file positions, which carry no order of their own.
    pub timed: bool,
}

/// Interns string ids into dense indices.
#[derive(Default)]
struct Interner {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn get_or_insert(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.names.len() as u32;
        self.index.insert(id.to_owned(), i);
        self.names.push(id.to_owned());
        i
    }
}

/// Decodes a text file: UTF-8 when valid, otherwise Latin-1 (MovieLens' `u.item` is Latin-1).
pub fn decode_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.strip_prefix('\u{feff}').unwrap_or(s).to_owned(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// Lines with their 1-based numbers, skipping blank lines.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn parse_field<T: std::str::FromStr>(
    file: &str,
    line: usize,
    what: &str,
    raw: &str,
) -> Result<T, DataError> {
    raw.trim()
        .parse()
        .map_err(|_| malformed(file, line, format!("{what} {raw:?} is not a number")))
}

/// Splits a line into exactly `expected` fields separated by `sep`.
fn columns<'a>(file: &str, line: usize, l: &'a str, sep: char, expected: usize) -> Result<Vec<&'a str>, DataError> {
    let fields: Vec<&str> = l.split(sep).collect();
    if fields.len() != expected {
        let kind = if sep == '\t' { "tab".to_owned() } else { format!("`{sep}`") };
        return Err(malformed(file, line, format!("expected {expected} {kind}-separated columns, found {}", fields.len())));
    }
    Ok(fields)
}

fn check_rating(file: &str, line: usize, rating: f32) -> Result<f32, DataError> {
    if rating.is_finite() {
        Ok(rating)
    } else {
        Err(malformed(file, line, format!("rating {rating} is not finite")))
    }
}

/// The files of a MovieLens 100K directory, as bytes. `u.item` and `u.user` are optional.
#[derive(Debug, Clone, Copy)]
pub struct MovieLensFiles<'a> {
    /// `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`.
    pub data: &'a [u8],
    /// `u.item`: `id|title|release|video release|url|19 genre flags`.
    pub item: Option<&'a [u8]>,
    /// `u.genre`: `name|index` (names the genre flags).
    pub genre: Option<&'a [u8]>,
    /// `u.user`: `id|age|gender|occupation|zip`.
    pub user: Option<&'a [u8]>,
}

/// Age bands as MovieLens 1M defines them; used for the 100K ages too.
fn age_band(age: u32) -> &'static str {
    match age {
        0..=17 => "under-18",
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=49 => "45-49",
        50..=55 => "50-55",
        _ => "56+",
    }
}

impl Dataset {
    /// Reads the MovieLens 100K layout. Items listed in `u.item` but never rated are still part
    /// of the catalog (they get an embedding from their genres).
    pub fn from_movielens(name: &str, files: MovieLensFiles<'_>) -> Result<Dataset, DataError> {
        let mut items = Interner::default();
        let mut item_meta: Vec<Item> = Vec::new();
        let mut item_tags: Vec<String> = Vec::new();

        if let Some(genre) = files.genre {
            let text = decode_text(genre);
            let mut named: Vec<(usize, String)> = Vec::new();
            for (line, l) in numbered_lines(&text) {
                let (n, idx) = l
                    .rsplit_once('|')
                    .ok_or_else(|| malformed("u.genre", line, "expected `name|index`"))?;
                let idx: usize = parse_field("u.genre", line, "genre index", idx)?;
                named.push((idx, n.to_owned()));
            }
            named.sort();
            for (expected, (idx, _)) in named.iter().enumerate() {
                if *idx != expected {
                    return Err(malformed("u.genre", 0, "genre indices must be 0..n without gaps"));
                }
            }
            item_tags = named.into_iter().map(|(_, n)| n).collect();
        }

        if let Some(item) = files.item {
            let text = decode_text(item);
            for (line, l) in numbered_lines(&text) {
                let fields: Vec<&str> = l.split('|').collect();
                if fields.len() < 5 {
                    return Err(malformed(
                        "u.item",
                        line,
                        format!("expected at least 5 `|`-separated columns, found {}", fields.len()),
                    ));
                }
                let flags = &fields[5..];
                if item_tags.is_empty() {
                    item_tags = (0..flags.len()).map(|i| format!("genre{i}")).collect();
                }
                if flags.len() != item_tags.len() {
                    return Err(malformed(
                        "u.item",
                        line,
                        format!("expected {} genre flags, found {}", item_tags.len(), flags.len()),
                    ));
                }
                let mut tags = Vec::new();
                for (g, f) in flags.iter().enumerate() {
                    match f.trim() {
                        "0" => {}
                        "1" => tags.push(g as u32),
                        other => {
                            return Err(malformed(
                                "u.item",
                                line,
                                format!("genre flag {other:?} is not 0 or 1"),
                            ));
                        }
                    }
                }
                let id = fields[0].trim();
                if id.is_empty() {
                    return Err(malformed("u.item", line, "empty item id"));
                }
                let before = items.names.len();
                let idx = items.get_or_insert(id);
                if items.names.len() == before {
                    return Err(malformed("u.item", line, format!("item {id} listed twice")));
                }
                debug_assert_eq!(idx as usize, item_meta.len());
                item_meta.push(Item { id: id.to_owned(), title: fields[1].to_owned(), tags, ..Default::default() });
            }
        }
        let items_listed = files.item.is_some();

        let mut users = Interner::default();
        let mut user_meta: Vec<User> = Vec::new();
        let mut user_tags = Interner::default();
        if let Some(user) = files.user {
            let text = decode_text(user);
            for (line, l) in numbered_lines(&text) {
                let fields = columns("u.user", line, l, '|', 5)?;
                let age: u32 = parse_field("u.user", line, "age", fields[1])?;
                let id = fields[0].trim();
                let before = users.names.len();
                users.get_or_insert(id);
                if users.names.len() == before {
                    return Err(malformed("u.user", line, format!("user {id} listed twice")));
                }
                let tags = vec![
                    user_tags.get_or_insert(&format!("age:{}", age_band(age))),
                    user_tags.get_or_insert(&format!("gender:{}", fields[2].trim())),
                    user_tags.get_or_insert(&format!("occupation:{}", fields[3].trim())),
                ];
                user_meta.push(User { id: id.to_owned(), tags });
            }
        }
        let users_listed = files.user.is_some();

        let text = decode_text(files.data);
        let mut interactions = Vec::new();
        for (line, l) in numbered_lines(&text) {
            let fields = columns("u.data", line, l, '\t', 4)?;
            let (u, i) = (fields[0].trim(), fields[1].trim());
            if u.is_empty() || i.is_empty() {
                return Err(malformed("u.data", line, "empty user or item id"));
            }
            let rating = check_rating("u.data", line, parse_field("u.data", line, "rating", fields[2])?)?;
            let timestamp: i64 = parse_field("u.data", line, "timestamp", fields[3])?;
            let user = match users.index.get(u) {
                Some(&x) => x,
                None if users_listed => {
                    return Err(malformed("u.data", line, format!("user {u} is not in u.user")));
                }
                None => {
                    user_meta.push(User { id: u.to_owned(), tags: vec![] });
                    users.get_or_insert(u)
                }
            };
            let item = match items.index.get(i) {
                Some(&x) => x,
                None if items_listed => {
                    return Err(malformed("u.data", line, format!("item {i} is not in u.item")));
                }
                None => {
                    item_meta.push(Item { id: i.to_owned(), title: i.to_owned(), ..Default::default() });
                    items.get_or_insert(i)
                }
            };
            interactions.push(Interaction { user, item, rating, timestamp });
        }
        if interactions.is_empty() {
            return Err(DataError::Empty { file: "u.data".into() });
        }
        Ok(Dataset {
            name: name.to_owned(),
            users: user_meta,
            items: item_meta,
            item_tags,
            user_tags: user_tags.names,
            interactions,
            timed: true,
        })
    }

    /// Reads generic CSV interactions: `user,item[,rating][,timestamp]`. A header row is
    /// detected case-insensitively (`user`/`user_id`/`userid`, `item`/`item_id`/`itemid`/`movieid`/
    /// `artistid`/`trackid`/`productid`…, `rating`/`weight`/`plays`/`count`…,
    /// `timestamp`/`time`/`ts`) and may order the columns; without one the columns are
    /// positional. Ids are strings. Missing ratings are 1.0 (implicit feedback); missing
    /// timestamps are the row's position in the file.
    ///
    /// `items`, when given, is a second CSV `item,title[,tags]` with `|`-separated tags, which
    /// gives titles and content features (items listed there but never seen are kept).
    pub fn from_csv(
        file: &str,
        bytes: &[u8],
        items: Option<(&str, &[u8])>,
    ) -> Result<Dataset, DataError> {
        let mut item_ids = Interner::default();
        let mut item_meta: Vec<Item> = Vec::new();
        let mut tag_names = Interner::default();
        if let Some((items_file, items_bytes)) = items {
            read_item_csv(items_file, items_bytes, &mut item_ids, &mut item_meta, &mut tag_names)?;
        }
        let items_listed = items.is_some();

        let text = decode_text(bytes);
        let mut rows = csv_records(file, &text);
        let Some(first) = rows.next().transpose()? else {
            return Err(DataError::Empty { file: file.to_owned() });
        };
        let (columns, first_data) = match CsvColumns::from_header(&first.1) {
            Some(c) => (c, None),
            None => (CsvColumns::positional(file, &first)?, Some(first)),
        };

        let mut users = Interner::default();
        let mut user_meta: Vec<User> = Vec::new();
        let mut interactions = Vec::new();
        for row in first_data.into_iter().map(Ok).chain(rows) {
            let (line, fields) = row?;
            if fields.len() != columns.width {
                return Err(malformed(
                    file,
                    line,
                    format!("expected {} columns, found {}", columns.width, fields.len()),
                ));
            }
            let u = fields[columns.user].trim();
            let i = fields[columns.item].trim();
            if u.is_empty() || i.is_empty() {
                return Err(malformed(file, line, "empty user or item id"));
            }
            let rating = match columns.rating {
                Some(c) => check_rating(file, line, parse_field(file, line, "rating", &fields[c])?)?,
                None => 1.0,
            };
            let timestamp = match columns.timestamp {
                Some(c) => parse_field(file, line, "timestamp", &fields[c])?,
                None => interactions.len() as i64,
            };
            let before = users.names.len();
            let user = users.get_or_insert(u);
            if users.names.len() != before {
                user_meta.push(User { id: u.to_owned(), tags: vec![] });
            }
            let item = match item_ids.index.get(i) {
                Some(&x) => x,
                None if items_listed => {
                    return Err(malformed(file, line, format!("item {i:?} is not in the item file")));
                }
                None => {
                    item_meta.push(Item { id: i.to_owned(), title: i.to_owned(), ..Default::default() });
                    item_ids.get_or_insert(i)
                }
            };
            interactions.push(Interaction { user, item, rating, timestamp });
        }
        if interactions.is_empty() {
            return Err(DataError::Empty { file: file.to_owned() });
        }
        let name = file.rsplit('/').next().unwrap_or(file);
        let name = name.strip_suffix(".csv").unwrap_or(name);
        Ok(Dataset {
            name: name.to_owned(),
            users: user_meta,
            items: item_meta,
            item_tags: tag_names.names,
            user_tags: vec![],
            interactions,
            timed: columns.timestamp.is_some(),
        })
    }

    /// A stable SHA-256 fingerprint of the interactions and catalog (ids, ratings, timestamps,
    /// tags), in hex. Models record it so evaluation can tell when it is given other data.
    pub fn fingerprint(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut put = |s: &[u8]| {
            ctx.update(&(s.len() as u64).to_le_bytes());
            ctx.update(s);
        };
        for it in &self.items {
            put(it.id.as_bytes());
            for t in &it.tags {
                put(self.item_tags[*t as usize].as_bytes());
            }
        }
        for u in &self.users {
            put(u.id.as_bytes());
            for t in &u.tags {
                put(self.user_tags[*t as usize].as_bytes());
            }
        }
        for x in &self.interactions {
            put(&x.user.to_le_bytes());
            put(&x.item.to_le_bytes());
            put(&x.rating.to_le_bytes());
            put(&x.timestamp.to_le_bytes());
        }
        hex(ctx.finish().as_ref())
    }

    /// Index of the item with external id `id`.
    pub fn item_index(&self, id: &str) -> Option<u32> {
        self.items.iter().position(|it| it.id == id).map(|i| i as u32)
    }

    /// A map from external user id to index.
    pub fn user_index_map(&self) -> HashMap<&str, u32> {
        self.users.iter().enumerate().map(|(i, u)| (u.id.as_str(), i as u32)).collect()
    }

    /// A map from external item id to index.
    pub fn item_index_map(&self) -> HashMap<&str, u32> {
        self.items.iter().enumerate().map(|(i, it)| (it.id.as_str(), i as u32)).collect()
    }

    /// Number of interactions per item (a popularity count).
    pub fn item_counts(&self, interactions: &[Interaction]) -> Vec<u32> {
        let mut counts = vec![0u32; self.items.len()];
        for x in interactions {
            counts[x.item as usize] += 1;
        }
        counts
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn read_item_csv(
    file: &str,
    bytes: &[u8],
    ids: &mut Interner,
    meta: &mut Vec<Item>,
    tags: &mut Interner,
) -> Result<(), DataError> {
    let text = decode_text(bytes);
    let mut rows = csv_records(file, &text).peekable();
    if let Some(Ok((_, first))) = rows.peek()
        && first.first().is_some_and(|f| is_one_of(f, ITEM_NAMES))
    {
        rows.next();
    }
    for row in rows {
        let (line, fields) = row?;
        if !(2..=5).contains(&fields.len()) {
            return Err(malformed(
                file,
                line,
                format!("expected `item,title[,tags[,rights[,trust]]]`, found {} columns", fields.len()),
            ));
        }
        let id = fields[0].trim();
        if id.is_empty() {
            return Err(malformed(file, line, "empty item id"));
        }
        let before = ids.names.len();
        ids.get_or_insert(id);
        if ids.names.len() == before {
            return Err(malformed(file, line, format!("item {id:?} listed twice")));
        }
        let item_tags = match fields.get(2) {
            Some(t) => t
                .split('|')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| tags.get_or_insert(t))
                .collect(),
            None => vec![],
        };
        let rights = match fields.get(3) {
            Some(cell) => rights::Rights::parse(cell).map_err(|e| malformed(file, line, e))?,
            None => None,
        };
        let trust = match fields.get(4) {
            Some(cell) => rights::parse_trust(cell).map_err(|e| malformed(file, line, e))?,
            None => None,
        };
        meta.push(Item { id: id.to_owned(), title: fields[1].clone(), tags: item_tags, rights, trust });
    }
    Ok(())
}

const USER_NAMES: &[&str] = &["user", "user_id", "userid", "uid"];
const ITEM_NAMES: &[&str] = &[
    "item", "item_id", "itemid", "movie", "movieid", "movie_id", "iid", "artist", "artistid", "artist_id", "track",
    "trackid", "track_id", "song", "songid", "song_id", "product", "productid", "product_id",
];
/// Explicit ratings or implicit strengths (play counts, weights).
const RATING_NAMES: &[&str] = &["rating", "score", "value", "weight", "plays", "playcount", "play_count", "count"];
const TIME_NAMES: &[&str] = &["timestamp", "time", "ts"];

fn is_one_of(field: &str, names: &[&str]) -> bool {
    let f = field.trim();
    names.iter().any(|n| f.eq_ignore_ascii_case(n))
}

/// Where each column of an interactions CSV is.
struct CsvColumns {
    width: usize,
    user: usize,
    item: usize,
    rating: Option<usize>,
    timestamp: Option<usize>,
}

impl CsvColumns {
    fn from_header(fields: &[String]) -> Option<CsvColumns> {
        let find = |names: &[&str]| fields.iter().position(|f| is_one_of(f, names));
        let user = find(USER_NAMES)?;
        let item = find(ITEM_NAMES)?;
        Some(CsvColumns {
            width: fields.len(),
            user,
            item,
            rating: find(RATING_NAMES),
            timestamp: find(TIME_NAMES),
        })
    }

    fn positional(file: &str, (line, fields): &(usize, Vec<String>)) -> Result<CsvColumns, DataError> {
        let width = fields.len();
        if !(2..=4).contains(&width) {
            return Err(malformed(
                file,
                *line,
                format!("expected `user,item[,rating][,timestamp]` (2 to 4 columns), found {width}"),
            ));
        }
        Ok(CsvColumns {
            width,
            user: 0,
            item: 1,
            rating: (width >= 3).then_some(2),
            timestamp: (width == 4).then_some(3),
        })
    }
}

/// Splits CSV text into records with their 1-based starting line. Fields may be quoted with
/// `"` (doubled inside to escape); a quoted field may span lines.
fn csv_records<'a>(
    file: &'a str,
    text: &'a str,
) -> impl Iterator<Item = Result<(usize, Vec<String>), DataError>> + 'a {
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    std::iter::from_fn(move || {
        loop {
            chars.peek()?;
            let start = line;
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut quoted = false;
            let mut was_quoted = false;
            let mut any = false;
            loop {
                let Some(c) = chars.next() else {
                    if quoted {
                        return Some(Err(malformed(file, start, "unterminated quoted field")));
                    }
                    break;
                };
                any = true;
                if quoted {
                    match c {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        '"' => quoted = false,
                        '\n' => {
                            line += 1;
                            field.push('\n');
                        }
                        _ => field.push(c),
                    }
                    continue;
                }
                match c {
                    '"' if field.trim().is_empty() && !was_quoted => {
                        field.clear();
                        quoted = true;
                        was_quoted = true;
                    }
                    ',' => {
                        fields.push(std::mem::take(&mut field));
                        was_quoted = false;
                    }
                    '\n' => {
                        line += 1;
                        break;
                    }
                    '\r' => {}
                    _ => field.push(c),
                }
            }
            fields.push(field);
            let blank = fields.len() == 1 && fields[0].trim().is_empty();
            if !any || blank {
                chars.peek()?;
                continue;
            }
            return Some(Ok((start, fields)));
        }
    })
}

/// A held-out interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heldout {
    /// User index.
    pub user: u32,
    /// The held-out item.
    pub item: u32,
}

/// Training interactions and held-out items.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training interactions, in file order.
    pub train: Vec<Interaction>,
    /// One held-out item per evaluated user, by user index.
    pub test: Vec<Heldout>,
}

impl Split {
    /// Each user's training items ordered by time (ties by file order): the history the user
    /// tower reads.
    pub fn histories(&self, n_users: usize) -> Vec<Vec<u32>> {
        histories(&self.train, n_users)
    }
}

/// Each user's items ordered by time, ties broken by file order.
pub fn histories(interactions: &[Interaction], n_users: usize) -> Vec<Vec<u32>> {
    timed_histories(interactions, n_users).into_iter().map(|h| h.into_iter().map(|(i, _)| i).collect()).collect()
}

/// Each user's `(item, timestamp)` pairs ordered by time, ties broken by file order.
pub fn timed_histories(interactions: &[Interaction], n_users: usize) -> Vec<Vec<(u32, i64)>> {
    per_user_in_time_order(interactions, n_users, |x| (x.item, x.timestamp))
}

/// `f` of each user's interactions, ordered by time with ties broken by file order (the order of
/// [`timed_histories`]).
pub fn per_user_in_time_order<T>(interactions: &[Interaction], n_users: usize, f: impl Fn(&Interaction) -> T) -> Vec<Vec<T>> {
    let mut per_user: Vec<Vec<(i64, usize)>> = vec![Vec::new(); n_users];
    for (pos, x) in interactions.iter().enumerate() {
        per_user[x.user as usize].push((x.timestamp, pos));
    }
    per_user
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v.into_iter().map(|(_, pos)| f(&interactions[pos])).collect()
        })
        .collect()
}

/// The interactions not marked in `held`, in their given order.
fn without_held(interactions: &[Interaction], held: &[bool]) -> Vec<Interaction> {
    interactions.iter().zip(held).filter(|(_, h)| !**h).map(|(x, _)| *x).collect()
}

/// Whether a dataset's interactions carry a real order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Real timestamps: each person's history is a sequence (items sharing a timestamp are a set
    /// inside it). Held out: the latest interaction.
    Sequential,
    /// No timestamp column, or (nearly, ≥ 95 %) every consecutive pair of a person's
    /// timestamps tied: each history is a set. Held out: a seeded random interaction, never
    /// merely the last one in the file.
    Unordered,
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Sequential => "sequential",
            Order::Unordered => "unordered",
        })
    }
}

/// What [`Dataset::order`] found: the kind, and the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderReport {
    /// The kind of data.
    pub order: Order,
    /// Consecutive pairs in users' time-sorted histories.
    pub pairs: usize,
    /// Of those, pairs with equal timestamps.
    pub tied: usize,
}

impl Dataset {
    /// Whether the interactions have a real order: they do when the data had a timestamp column
    /// and more than 5 % of the consecutive pairs in users' histories have distinct timestamps
    /// (MovieLens 100K: about half of them share a second, and the rest carry a real order).
    pub fn order(&self) -> OrderReport {
        if !self.timed {
            return OrderReport { order: Order::Unordered, pairs: 0, tied: 0 };
        }
        let mut times: Vec<Vec<i64>> = vec![Vec::new(); self.users.len()];
        for x in &self.interactions {
            times[x.user as usize].push(x.timestamp);
        }
        let (mut pairs, mut tied) = (0, 0);
        for t in &mut times {
            t.sort_unstable();
            pairs += t.len().saturating_sub(1);
            tied += t.windows(2).filter(|w| w[0] == w[1]).count();
        }
        let order = if pairs == 0 || 20 * tied >= 19 * pairs { Order::Unordered } else { Order::Sequential };
        OrderReport { order, pairs, tied }
    }
}

/// Seed of the random hold-outs of unordered data (fixed: a dataset has one split).
const SPLIT_SEED: u64 = 0x6865_6172_7468;

/// Holds out one interaction per user with at least two: the latest (ties: the later in
/// `interactions`) for sequential data, a seeded random one (stream `stage`) for unordered data.
fn hold_out_one(interactions: &[Interaction], n_users: usize, order: Order, stage: u64) -> Split {
    let mut positions: Vec<Vec<usize>> = vec![Vec::new(); n_users];
    for (pos, x) in interactions.iter().enumerate() {
        positions[x.user as usize].push(pos);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SPLIT_SEED ^ stage);
    let mut held = vec![false; interactions.len()];
    let mut test = Vec::new();
    for (u, ps) in positions.iter().enumerate() {
        if ps.len() < 2 {
            continue;
        }
        let pos = match order {
            Order::Sequential => *ps.iter().max_by_key(|&&p| (interactions[p].timestamp, p)).unwrap_or(&ps[0]),
            Order::Unordered => ps[rng.random_range(0..ps.len())],
        };
        held[pos] = true;
        test.push(Heldout { user: u as u32, item: interactions[pos].item });
    }
    Split { train: without_held(interactions, &held), test }
}

/// Leave-one-out: each user's latest interaction by timestamp (ties: the one later in the file)
/// is held out; for [`Order::Unordered`] data, a seeded random interaction of each user. Users
/// with a single interaction stay in training only.
pub fn leave_one_out(ds: &Dataset) -> Result<Split, DataError> {
    if ds.interactions.is_empty() {
        return Err(DataError::Empty { file: ds.name.clone() });
    }
    Ok(hold_out_one(&ds.interactions, ds.users.len(), ds.order().order, 0))
}

/// The validation split carved out of a split's training part the way the test item was
/// carved out of the data: each user's latest remaining interaction (a random one for unordered
/// data), for users with at least two left. Model selection reads only this; the test items
/// are not in it.
pub fn validation_split(ds: &Dataset, split: &Split) -> Split {
    hold_out_one(&split.train, ds.users.len(), ds.order().order, 1)
}

/// Holds out exactly the given (user, item) pairs: the most recent matching interaction of each
/// is removed from training. Used when an explicit test file fixes the protocol.
pub fn split_with_test(ds: &Dataset, test: &[Heldout]) -> Result<Split, DataError> {
    let mut want: HashMap<(u32, u32), usize> = HashMap::new();
    for h in test {
        *want.entry((h.user, h.item)).or_default() += 1;
    }
    let mut order: Vec<usize> = (0..ds.interactions.len()).collect();
    order.sort_by_key(|&p| std::cmp::Reverse((ds.interactions[p].timestamp, p)));
    let mut held = vec![false; ds.interactions.len()];
    for p in order {
        let x = ds.interactions[p];
        if let Some(n) = want.get_mut(&(x.user, x.item))
            && *n > 0
        {
            *n -= 1;
            held[p] = true;
        }
    }
    Ok(Split { train: without_held(&ds.interactions, &held), test: test.to_vec() })
}

/// Samples `n` negatives per held-out user, uniformly without replacement from the items the
/// user never interacted with (training or test). Deterministic given `seed`; users are drawn in
/// the order of `split.test`.
pub fn sample_negatives(ds: &Dataset, split: &Split, n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut seen: Vec<std::collections::HashSet<u32>> = vec![Default::default(); ds.users.len()];
    for x in &ds.interactions {
        seen[x.user as usize].insert(x.item);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n_items = ds.items.len() as u32;
    split
        .test
        .iter()
        .map(|h| {
            let s = &seen[h.user as usize];
            draw_distinct(&mut rng, n_items, n, |j| s.contains(&j))
        })
        .collect()
}

/// Up to `want` distinct items drawn uniformly from `0..n_items`, skipping those `excluded`
/// holds: random draws while they are cheap (at most `16 · want + 1024`), then the rest from a
/// shuffle of what is left, so it ends however few items are eligible. Fewer than `want` come
/// back only when fewer are eligible.
pub fn draw_distinct(rng: &mut impl Rng, n_items: u32, want: usize, excluded: impl Fn(u32) -> bool) -> Vec<u32> {
    use rand::seq::SliceRandom;
    let mut out = Vec::with_capacity(want.min(n_items as usize));
    if n_items == 0 {
        return out;
    }
    let mut taken = std::collections::HashSet::with_capacity(out.capacity());
    let mut draws = want.saturating_mul(16).saturating_add(1024);
    while out.len() < want && draws > 0 {
        draws -= 1;
        let j = rng.random_range(0..n_items);
        if !excluded(j) && taken.insert(j) {
            out.push(j);
        }
    }
    if out.len() < want {
        let mut rest: Vec<u32> = (0..n_items).filter(|&j| !excluded(j) && !taken.contains(&j)).collect();
        rest.shuffle(rng);
        out.extend(rest.into_iter().take(want - out.len()));
    }
    out
}

/// Reads a test file: `user<TAB>item` per line (external ids).
pub fn read_test_file(file: &str, bytes: &[u8], ds: &Dataset) -> Result<Vec<Heldout>, DataError> {
    let users = ds.user_index_map();
    let items = ds.item_index_map();
    let text = decode_text(bytes);
    let mut out = Vec::new();
    for (line, l) in numbered_lines(&text) {
        let fields = columns(file, line, l, '\t', 2)?;
        let user = *users
            .get(fields[0].trim())
            .ok_or_else(|| malformed(file, line, format!("unknown user {:?}", fields[0])))?;
        let item = *items
            .get(fields[1].trim())
            .ok_or_else(|| malformed(file, line, format!("unknown item {:?}", fields[1])))?;
        out.push(Heldout { user, item });
    }
    if out.is_empty() {
        return Err(DataError::Empty { file: file.to_owned() });
    }
    Ok(out)
}

/// Reads a candidates file: `user<TAB>item1<TAB>item2…` per line, and returns the candidates in
/// the order of `test` (one line per test user is required).
pub fn read_candidates_file(
    file: &str,
    bytes: &[u8],
    ds: &Dataset,
    test: &[Heldout],
) -> Result<Vec<Vec<u32>>, DataError> {
    let users = ds.user_index_map();
    let items = ds.item_index_map();
    let text = decode_text(bytes);
    let mut by_user: HashMap<u32, Vec<u32>> = HashMap::new();
    for (line, l) in numbered_lines(&text) {
        let fields: Vec<&str> = l.split('\t').collect();
        if fields.len() < 2 {
            return Err(malformed(file, line, "expected `user<TAB>item1<TAB>item2…`"));
        }
        let user = *users
            .get(fields[0].trim())
            .ok_or_else(|| malformed(file, line, format!("unknown user {:?}", fields[0])))?;
        let cands = fields[1..]
            .iter()
            .map(|f| {
                items
                    .get(f.trim())
                    .copied()
                    .ok_or_else(|| malformed(file, line, format!("unknown item {f:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if by_user.insert(user, cands).is_some() {
            return Err(malformed(file, line, format!("user {:?} has a second line", fields[0])));
        }
    }
    test.iter()
        .map(|h| {
            by_user.get(&h.user).cloned().ok_or_else(|| DataError::Inconsistent {
                file: file.to_owned(),
                message: format!("no candidates for test user {:?}", ds.users[h.user as usize].id),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ml(data: &str) -> Result<Dataset, DataError> {
        Dataset::from_movielens(
            "t",
            MovieLensFiles { data: data.as_bytes(), item: None, genre: None, user: None },
        )
    }

    #[test]
    fn movielens_errors_name_file_and_line() {
        let e = ml("1\t2\t3\t4\n1\t2\t3\n").unwrap_err();
        assert_eq!(e.to_string(), "u.data:2: expected 4 tab-separated columns, found 3");
        let e = ml("1\t2\t3\tnoon\n").unwrap_err();
        assert_eq!(e.to_string(), "u.data:1: timestamp \"noon\" is not a number");
        let e = ml("1\t2\tNaN\t4\n").unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
        assert!(matches!(ml("\n\n").unwrap_err(), DataError::Empty { .. }));
    }

    #[test]
    fn movielens_metadata() {
        let ds = Dataset::from_movielens(
            "t",
            MovieLensFiles {
                data: b"7\t1\t5\t100\n7\t2\t3\t50\n",
                item: Some(b"1|Caf\xe9 (1995)|x||u|0|1\n2|B|x||u|1|1\n3|Unseen|x||u|1|0\n"),
                genre: Some(b"Action|0\nDrama|1\n"),
                user: Some(b"7|30|F|writer|123\n"),
            },
        )
        .unwrap();
        assert_eq!(ds.items.len(), 3, "unrated items stay in the catalog");
        assert_eq!(ds.items[0].title, "Café (1995)");
        assert_eq!(ds.items[1].tags, vec![0, 1]);
        assert_eq!(ds.item_tags, vec!["Action", "Drama"]);
        let tags: Vec<&str> = ds.users[0].tags.iter().map(|&t| ds.user_tags[t as usize].as_str()).collect();
        assert_eq!(tags, vec!["age:25-34", "gender:F", "occupation:writer"]);
        let e = Dataset::from_movielens(
            "t",
            MovieLensFiles { data: b"7\t9\t5\t100\n", item: Some(b"1|A|x||u|0|1\n"), genre: None, user: None },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "u.data:1: item 9 is not in u.item");
    }

    #[test]
    fn csv_header_any_case_and_order() {
        let ds = Dataset::from_csv("x.csv", b"Item,USER,Timestamp\nA,u1,5\n\"B,2\",u1,3\n", None).unwrap();
        assert_eq!(ds.items[1].id, "B,2");
        assert_eq!(ds.interactions[0].timestamp, 5);
        assert_eq!(ds.interactions[1].rating, 1.0);
        let ds = Dataset::from_csv("x.csv", b"u1,a\nu2,a\n", None).unwrap();
        assert_eq!(ds.interactions[1].timestamp, 1, "file position stands in for time");
        let e = Dataset::from_csv("x.csv", b"user,item,rating\nu,a,1\nu,b\n", None).unwrap_err();
        assert_eq!(e.to_string(), "x.csv:3: expected 3 columns, found 2");
        let e = Dataset::from_csv("x.csv", b"user,item,rating,timestamp\nu,a,1,yesterday\n", None).unwrap_err();
        assert_eq!(e.to_string(), "x.csv:2: timestamp \"yesterday\" is not a number");
        let e = Dataset::from_csv("x.csv", b"user,item\n", None).unwrap_err();
        assert_eq!(e.to_string(), "x.csv: no interactions (the dataset is empty)");
        let e = Dataset::from_csv("x.csv", b"a,b,c,d,e\n", None).unwrap_err();
        assert!(e.to_string().starts_with("x.csv:1: expected `user,item"), "{e}");
    }

    #[test]
    fn csv_item_file_gives_tags_and_titles() {
        let ds = Dataset::from_csv(
            "x.csv",
            b"u1,a\n",
            Some(("items.csv", b"item,title,tags\na,Alpha,x|y\nb,Beta,y\n")),
        )
        .unwrap();
        assert_eq!(ds.items.len(), 2);
        assert_eq!(ds.items[1].tags, vec![1]);
        assert_eq!(ds.items[0].title, "Alpha");
    }

    #[test]
    fn leave_one_out_takes_latest_and_ties_by_file_order() {
        // user 1: t=5 (a), t=9 (b), t=9 (c): c is later in the file, so c is held out.
        // user 2: one interaction, stays in training.
        let ds = ml("1\ta\t1\t5\n1\tb\t1\t9\n2\ta\t1\t1\n1\tc\t1\t9\n").unwrap();
        let split = leave_one_out(&ds).unwrap();
        assert_eq!(split.test, vec![Heldout { user: 0, item: 2 }]);
        assert_eq!(split.train.len(), 3);
        assert_eq!(split.histories(2), vec![vec![0, 1], vec![0]]);
    }

    #[test]
    fn an_items_csv_may_carry_rights_and_trust() {
        let items = b"item,title,tags,rights,trust\na,Alpha,x,territories=CH;until=2027-01-01,0.9\nb,Beta,,,\nc,Gamma,y,,0.4\n";
        let ds = Dataset::from_csv("plays.csv", b"user,item\nu,a\nu,b\nv,c\n", Some(("items.csv", items))).unwrap();
        let by = |id: &str| ds.items.iter().find(|i| i.id == id).unwrap();
        let a = by("a");
        assert_eq!(a.rights.as_ref().unwrap().territories, ["CH"]);
        assert_eq!(a.rights.as_ref().unwrap().until, Some(1_798_761_600_000));
        assert_eq!(a.trust, Some(0.9));
        assert_eq!((by("b").rights.clone(), by("b").trust), (None, None));
        assert_eq!((by("c").rights.clone(), by("c").trust), (None, Some(0.4)));
        // A served catalog without rules serializes as before.
        assert_eq!(serde_json::to_string(by("b")).unwrap(), r#"{"id":"b","title":"Beta","tags":[]}"#);
        for (cell, needle) in [("a,A,,region=CH,", "unknown rights rule"), ("a,A,,,2", "trust \"2\"")] {
            let e = Dataset::from_csv("plays.csv", b"user,item\nu,a\n", Some(("items.csv", format!("item,title\n{cell}\n").as_bytes()))).unwrap_err();
            assert!(e.to_string().contains("items.csv:2") && e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn drawing_ends_however_few_items_are_eligible() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // A million items, all but two excluded: the draws give up and the scan finds both.
        let mut got = draw_distinct(&mut rng, 1_000_000, 99, |j| j != 17 && j != 999_999);
        got.sort_unstable();
        assert_eq!(got, [17, 999_999]);
        assert!(draw_distinct(&mut rng, 5, 3, |_| true).is_empty());
        assert!(draw_distinct(&mut rng, 0, 3, |_| false).is_empty());
        let some = draw_distinct(&mut rng, 10, 10, |j| j % 2 == 0);
        assert_eq!(some.len(), 5);
        assert!(some.iter().all(|j| j % 2 == 1));
    }

    #[test]
    fn negatives_avoid_seen_items_and_are_seeded() {
        let mut data = String::new();
        for i in 0..50 {
            data += &format!("1\t{i}\t1\t{i}\n");
        }
        for i in 50..150 {
            data += &format!("2\t{i}\t1\t{i}\n");
        }
        for i in 150..400 {
            data += &format!("3\t{i}\t1\t{i}\n");
        }
        let ds = ml(&data).unwrap();
        let split = leave_one_out(&ds).unwrap();
        let a = sample_negatives(&ds, &split, 99, 7);
        assert_eq!(a, sample_negatives(&ds, &split, 99, 7));
        assert_ne!(a, sample_negatives(&ds, &split, 99, 8));
        for (h, negs) in split.test.iter().zip(&a) {
            assert_eq!(negs.len(), 99);
            let mut uniq = negs.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 99);
            assert!(negs.iter().all(|&j| !ds.interactions.iter().any(|x| x.user == h.user && x.item == j)));
        }
    }

    #[test]
    fn test_and_candidate_files() {
        let ds = ml("1\ta\t1\t5\n1\tb\t1\t9\n2\ta\t1\t1\n2\tc\t1\t2\n").unwrap();
        let test = read_test_file("t.tsv", b"1\tb\n2\tc\n", &ds).unwrap();
        let split = split_with_test(&ds, &test).unwrap();
        assert_eq!(split.train.len(), 2);
        let c = read_candidates_file("c.tsv", b"2\ta\tb\n1\tc\n", &ds, &test).unwrap();
        assert_eq!(c, vec![vec![2], vec![0, 1]]);
        let e = read_candidates_file("c.tsv", b"1\tc\n", &ds, &test).unwrap_err();
        assert!(e.to_string().contains("no candidates for test user \"2\""), "{e}");
        let e = read_test_file("t.tsv", b"1\tzzz\n", &ds).unwrap_err();
        assert_eq!(e.to_string(), "t.tsv:1: unknown item \"zzz\"");
    }

    #[test]
    fn data_without_real_order_is_unordered_and_holds_out_a_random_item() {
        // Sorted by user then item id, no timestamps: the last row of each user is just the
        // highest id, so holding it out (or learning "next id is higher") would be an artefact.
        let mut csv = String::from("user,item\n");
        for u in 0..200 {
            for i in 0..10 {
                csv += &format!("u{u},i{:02}\n", i + u % 7);
            }
        }
        let ds = Dataset::from_csv("plays.csv", csv.as_bytes(), None).unwrap();
        assert!(!ds.timed);
        assert_eq!(ds.order().order, Order::Unordered);
        let split = leave_one_out(&ds).unwrap();
        assert_eq!(split.test.len(), 200);
        let last: usize = split
            .test
            .iter()
            .filter(|h| ds.items[h.item as usize].id == format!("i{:02}", 9 + h.user % 7))
            .count();
        assert!(last < 60, "{last} of 200 held-out items are the user's last row");
        assert_eq!(leave_one_out(&ds).unwrap().test, split.test, "the split is seeded");

        // Validation comes out of the training part: never the test item, one per user left
        // with two or more.
        let valid = validation_split(&ds, &split);
        assert_eq!(valid.test.len(), 200);
        assert_eq!(valid.train.len(), 2000 - 400);
        for (v, t) in valid.test.iter().zip(&split.test) {
            assert_eq!(v.user, t.user);
            assert_ne!(v.item, t.item);
        }

        // All timestamps of a person equal: no order either. Distinct timestamps: sequential.
        let tied = b"user,item,timestamp\na,x,5\na,y,5\na,z,5\nb,x,7\nb,z,7\n";
        let ds = Dataset::from_csv("t.csv", tied, None).unwrap();
        assert_eq!(ds.order(), OrderReport { order: Order::Unordered, pairs: 3, tied: 3 });
        let timed = b"user,item,timestamp\na,x,5\na,y,6\na,z,6\nb,x,7\nb,z,9\n";
        let ds = Dataset::from_csv("t.csv", timed, None).unwrap();
        assert_eq!(ds.order(), OrderReport { order: Order::Sequential, pairs: 3, tied: 1 });
        let split = leave_one_out(&ds).unwrap();
        assert_eq!(split.test.iter().map(|h| ds.items[h.item as usize].id.as_str()).collect::<Vec<_>>(), ["z", "z"]);
        let valid = validation_split(&ds, &split);
        assert_eq!(valid.test.iter().map(|h| ds.items[h.item as usize].id.as_str()).collect::<Vec<_>>(), ["y"]);
    }
}
