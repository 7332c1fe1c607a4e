//! Build script: lists the shipped benchmark files under `data/` so that the library can embed
//! them (`src/bench/source.rs` includes the generated list). The binary then works from any
//! directory without a data folder.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let data = manifest.join("data");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=data");
    if !data.is_dir() {
        panic!(
            "{}: missing; lpzero embeds the benchmarks of this folder (it ships with the \
             source, restore it with `git checkout -- data`)",
            data.display()
        );
    }
    let mut files = Vec::new();
    collect(&data, "", &mut files);
    files.sort();
    // One `(relative path, include_str!(absolute path))` pair per file: rustc then tracks
    // every embedded file itself, so editing one rebuilds the crate.
    let mut list = String::from("&[\n");
    for rel in &files {
        let abs = data.join(rel);
        let abs = abs.to_str().unwrap_or_else(|| {
            panic!("{}: path is not valid UTF-8", abs.display());
        });
        writeln!(list, "    ({rel:?}, include_str!({abs:?})),").expect("writing to a String");
    }
    list.push_str("]\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("embedded_data.rs"), list).expect("cannot write the embedded list");
}

/// Appends the data files under `dir` (relative to the data folder, `/`-separated) to `out`,
/// leaving out documentation (`*.md`) and hidden files.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let listing = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for item in listing {
        let item = item.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = item.file_name();
        let name = name
            .to_str()
            .unwrap_or_else(|| panic!("{}: a file name is not valid UTF-8", dir.display()));
        if name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let path = item.path();
        if path.is_dir() {
            collect(&path, &format!("{rel}/"), out);
        } else {
            out.push(rel);
        }
    }
}
