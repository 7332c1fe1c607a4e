//! Where benchmark files come from: a data folder on disk, or the copy of the repository's
//! `data/` folder compiled into the library.
//!
//! The loaders ask a [`DataSource`] for files by their path inside the data folder
//! (`flexibert/BERT_benchmark.json`) and parse the text the same way whatever the source, so
//! the embedded copy and a folder get the same checks and the same messages. Messages name a
//! file as `DIR/flexibert/BERT_benchmark.json`, or `<embedded>/flexibert/BERT_benchmark.json`
//! for the compiled-in copy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Environment variable naming a data folder to use instead of the embedded copy.
pub const DATA_ENV: &str = "LPZERO_DATA";

/// How messages name the embedded copy.
pub const EMBEDDED_NAME: &str = "<embedded>";

/// Every shipped data file as `(path inside data/, contents)`, sorted by path (listed by
/// `build.rs`).
static EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/embedded_data.rs"));

/// A place holding benchmark files laid out as the repository's `data/` folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// A folder on disk.
    Dir(PathBuf),
    /// The copy of `data/` compiled into the library.
    Embedded,
}

impl DataSource {
    /// The source to read: the folder `explicit` when given (a command-line choice), else the
    /// folder named by `$LPZERO_DATA`, else the embedded copy. A named folder must exist.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            return Self::dir(dir);
        }
        if let Some(dir) = std::env::var_os(DATA_ENV) {
            return Self::dir(Path::new(&dir)).with_context(|| format!("${DATA_ENV}"));
        }
        Ok(DataSource::Embedded)
    }

    /// The folder `dir`, checked to be one.
    pub fn dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: not a directory", dir.display());
        }
        Ok(DataSource::Dir(dir.to_path_buf()))
    }

    /// How messages name the file at `rel` (a `/`-separated path inside the data folder).
    pub fn name(&self, rel: &str) -> PathBuf {
        match self {
            DataSource::Dir(dir) => dir.join(rel),
            DataSource::Embedded => Path::new(EMBEDDED_NAME).join(rel),
        }
    }

    /// The text of the file at `rel`, or `None` when the source has no such file.
    pub fn read_optional(&self, rel: &str) -> Result<Option<String>> {
        match self {
            DataSource::Dir(dir) => {
                let path = dir.join(rel);
                if !path.is_file() {
                    return Ok(None);
                }
                std::fs::read_to_string(&path)
                    .map(Some)
                    .with_context(|| format!("{}: cannot read", path.display()))
            }
            DataSource::Embedded => Ok(EMBEDDED
                .binary_search_by(|(name, _)| (*name).cmp(rel))
                .ok()
                .map(|i| EMBEDDED[i].1.to_string())),
        }
    }

    /// The text of the file at `rel`; `what` says what the file is, for the message when it
    /// is missing.
    pub fn read(&self, rel: &str, what: &str) -> Result<String> {
        self.read_optional(rel)?
            .with_context(|| format!("{}: not found ({what})", self.name(rel).display()))
    }

    /// The names of the files directly inside the folder `rel` whose names end in `.{ext}`,
    /// sorted; an error when the folder does not exist.
    pub fn list(&self, rel: &str, ext: &str) -> Result<Vec<String>> {
        let suffix = format!(".{ext}");
        let mut names = Vec::new();
        match self {
            DataSource::Dir(dir) => {
                let folder = dir.join(rel);
                let listing = std::fs::read_dir(&folder)
                    .with_context(|| format!("{}: cannot list the folder", folder.display()))?;
                for item in listing {
                    let item =
                        item.with_context(|| format!("{}: cannot list", folder.display()))?;
                    if !item.path().is_file() {
                        continue;
                    }
                    let name = item.file_name();
                    let Some(name) = name.to_str() else {
                        bail!("{}: file name is not valid UTF-8", item.path().display());
                    };
                    if name.ends_with(&suffix) {
                        names.push(name.to_string());
                    }
                }
            }
            DataSource::Embedded => {
                let prefix = format!("{rel}/");
                let mut found = false;
                for (path, _) in EMBEDDED {
                    let Some(name) = path.strip_prefix(&prefix) else {
                        continue;
                    };
                    found = true;
                    if !name.contains('/') && name.ends_with(&suffix) {
                        names.push(name.to_string());
                    }
                }
                if !found {
                    bail!("{}: no such folder", self.name(rel).display());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// The paths (inside `data/`) of every embedded file, sorted.
pub fn embedded_files() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(path, _)| *path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_copy_is_sorted_and_listed() {
        assert!(EMBEDDED.windows(2).all(|w| w[0].0 < w[1].0));
        let src = DataSource::Embedded;
        let configs = src.list("gpt2_wt103/configs", "yaml").unwrap();
        assert_eq!(configs.len(), 200);
        assert!(configs.contains(&"config_0_j0.yaml".to_string()));
        assert!(src.list("gpt2_wt103", "yaml").unwrap().len() == 2);
        let e = src.list("nowhere", "yaml").unwrap_err().to_string();
        assert!(e.contains("<embedded>/nowhere"), "{e}");
        assert!(src.read_optional("flexibert/none.json").unwrap().is_none());
        let e = src.read("flexibert/none.json", "a test file").unwrap_err();
        assert!(
            e.to_string().contains("<embedded>/flexibert/none.json"),
            "{e}"
        );
        assert!(embedded_files().all(|p| !p.ends_with(".md")));
    }
}
