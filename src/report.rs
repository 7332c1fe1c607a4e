//! Output helpers: progress bars, CSV and JSON files, the atomic file writer, and the text
//! helpers that keep messages short.
//!
//! Every file lpzero writes goes through [`write_atomic`]: the content lands in a temporary
//! file next to the target, is flushed to disk and then renamed over the target, so a full
//! disk or a crash leaves either the old file or the complete new one, never a cut one.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, drawn only when stderr is a terminal and `quiet` is false.
pub fn progress(len: usize, message: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} {elapsed_precise} (eta {eta})",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
    }
    bar.set_message(message.to_string());
    bar
}

/// Formats one CSV field (quotes it when needed).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Formats a float for CSV: shortest round-trip form, `nan`/`inf`/`-inf` spelled out.
pub fn csv_number(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{x}")
    }
}

/// Writes a CSV table (header + rows) to `out`.
pub fn write_csv(
    mut out: impl Write,
    header: &[String],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let line = |cells: &[String]| {
        cells
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",")
    };
    writeln!(out, "{}", line(header))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

/// Reads CSV text as [`write_csv`] writes it (RFC 4180: fields may be quoted, a quote inside
/// a quoted field is doubled, quoted fields may hold commas and line breaks): the rows, each a
/// list of fields. Fails on an unclosed quote or text after a closing quote, naming the line.
pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut quoted = false;
    let mut after_quote = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                row.push(std::mem::take(&mut field));
                after_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                after_quote = false;
                line += 1;
            }
            '"' if field.is_empty() && !after_quote => quoted = true,
            _ if after_quote => {
                bail!("line {line}: text after a closing quote; expected `,` or a line end")
            }
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("line {line}: a quoted field is not closed; expected a closing `\"`");
    }
    if !field.is_empty() || !row.is_empty() || after_quote {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// Writes a CSV table to a file atomically ([`write_atomic`]), creating parent folders.
pub fn write_csv_file(path: &Path, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    let mut text = Vec::new();
    write_csv(&mut text, header, rows).context("formatting the CSV table")?;
    write_atomic(path, &text)
}

/// Writes `contents` to `path` so that `path` is never left half-written: the bytes go to
/// `<name>.tmp-<pid>` in the same folder (created when missing), which is flushed and synced
/// to disk and then renamed over `path`. On any failure the temporary file is removed, `path`
/// keeps its old content, and the error names the path and the cause (a full disk, a missing
/// permission).
///
/// A symbolic link is followed (the file it points to is replaced, the link stays). A target
/// that exists and is not a regular file (`/dev/stdout`, a pipe, `/dev/full`) cannot be
/// replaced: it is written directly, and write errors are still reported.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let contents = contents.as_ref();
    let target = match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            return write_in_place(path, contents)
                .with_context(|| format!("{}: cannot write", path.display()));
        }
        Ok(_) => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        Err(_) => path.to_path_buf(),
    };
    let name = target
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let folder = target.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(folder) = folder {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("{}: cannot create folder", folder.display()))?;
    }
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = match folder {
        Some(f) => f.join(tmp_name),
        None => PathBuf::from(tmp_name),
    };
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.flush()?;
        file.sync_all()
    })();
    let result = written
        .with_context(|| format!("{}: cannot write", path.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, &target).with_context(|| {
                format!(
                    "{}: cannot replace it with {}",
                    path.display(),
                    tmp.display()
                )
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `contents` straight into an existing special file (a device or a pipe).
fn write_in_place(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(contents)?;
    file.flush()
}

/// Longest text, in characters, that messages echo whole (see [`clip`]).
pub const ECHO_CHARS: usize = 80;

/// Longest message of a parser (serde's, which may quote a whole input value), in characters,
/// that is passed on whole (see [`clip_to`]).
pub const MESSAGE_CHARS: usize = 240;

/// `text` as error messages echo it: whole when it has at most [`ECHO_CHARS`] characters,
/// else cut as [`clip_to`] does.
pub fn clip(text: &str) -> Cow<'_, str> {
    clip_to(text, ECHO_CHARS)
}

/// `text` whole when it has at most `max` characters, else its first two thirds and last
/// third of `max` characters around an ellipsis, with the total length, so a huge input never
/// floods the terminal and the end of a message (often what was expected) stays visible. Cuts
/// fall on character boundaries.
pub fn clip_to(text: &str, max: usize) -> Cow<'_, str> {
    let count = text.chars().count();
    if count <= max {
        return Cow::Borrowed(text);
    }
    let head = max * 2 / 3;
    let tail = max - head;
    let start = text.char_indices().nth(head).map_or(text.len(), |(i, _)| i);
    let end = text
        .char_indices()
        .nth(count - tail)
        .map_or(text.len(), |(i, _)| i);
    Cow::Owned(format!(
        "{} … {} ({count} characters in all)",
        &text[..start],
        &text[end..]
    ))
}

/// The entry of `all` called `text` (as `name` spells it; ASCII case-insensitive, surrounding
/// whitespace ignored), or the message ``unknown {what} `text`: expected a, b or c`` (the
/// text clipped, see [`clip`]): how the name tables of options parse.
pub fn find_named<T: Copy>(
    text: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
    what: &str,
) -> Result<T, String> {
    let text = text.trim();
    if let Some(&found) = all.iter().find(|&&x| text.eq_ignore_ascii_case(name(x))) {
        return Ok(found);
    }
    let names: Vec<&str> = all.iter().map(|&x| name(x)).collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => "nothing".to_string(),
    };
    Err(format!(
        "unknown {what} `{}`: expected {expected}",
        clip(text)
    ))
}

/// A byte count for people: `512 B`, `3.4 kB`, `12.0 MB`, `1.50 GB`, `2.3 TB` (powers of
/// 1000, so they read like the GB of `LPZERO_PROBE_MEMORY_GB`).
pub fn format_bytes(bytes: f64) -> String {
    let units = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    for (scale, unit) in units {
        if bytes >= scale {
            let v = bytes / scale;
            return if v < 10.0 {
                format!("{v:.2} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes:.0} B")
}

/// 64-bit FNV-1a hash of `bytes`: a small, stable content checksum (the same value on every
/// platform and Rust version), used to recognise a changed checkpoint or corpus file. Not a
/// defence against deliberate forgery.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A JSON number, or null for NaN/±Inf (JSON has no such numbers).
pub fn json_number(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Memory the system can still give to processes, in bytes (Linux `MemAvailable`), or `None`
/// elsewhere.
pub fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), or `None` elsewhere.
pub fn peak_rss_mib() -> Option<f64> {
    status_kib("VmHWM:").map(|kib| kib / 1024.0)
}

/// Resident memory of this process now in MiB (Linux `VmRSS`), or `None` elsewhere.
pub fn rss_mib() -> Option<f64> {
    status_kib("VmRSS:").map(|kib| kib / 1024.0)
}

/// The value in KiB of the line starting with `key` in `/proc/self/status`.
fn status_kib(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident set size of this process to its current size (Linux:
/// `/proc/self/clear_refs`), so that a later [`peak_rss_mib`] measures what follows; does
/// nothing where that file cannot be written.
pub fn reset_peak_rss() {
    // Best effort: the peak then only covers more than asked.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Linux the resident size reads as a positive number no larger than the peak.
    #[cfg(target_os = "linux")]
    #[test]
    fn resident_size_is_positive_and_below_the_peak() {
        let now = rss_mib().expect("VmRSS is readable on Linux");
        let peak = peak_rss_mib().expect("VmHWM is readable on Linux");
        assert!(now > 0.0 && now <= peak, "rss {now} MiB, peak {peak} MiB");
    }

    #[test]
    fn csv_reads_back_what_it_writes() {
        let header = vec!["id".to_string(), "add(a, b)".to_string()];
        let rows = vec![
            vec!["x".to_string(), "say \"hi\"".to_string()],
            vec!["two\nlines".to_string(), String::new()],
        ];
        let mut text = Vec::new();
        write_csv(&mut text, &header, &rows).unwrap();
        let back = parse_csv(std::str::from_utf8(&text).unwrap()).unwrap();
        assert_eq!(back[0], header);
        assert_eq!(&back[1..], &rows[..]);
        assert_eq!(parse_csv("a,b\r\n1,2").unwrap()[1], vec!["1", "2"]);
        let e = parse_csv("a\n\"open").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("not closed"), "{e}");
        let e = parse_csv("\"a\"b,c").unwrap_err().to_string();
        assert!(e.contains("after a closing quote"), "{e}");
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_characters() {
        assert_eq!(clip("params"), "params");
        let long = format!("{}, expected usize", "é".repeat(200));
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(53)), "{c}");
        assert_eq!(clip_to(&long, 300), long);
        assert!(
            c.ends_with("é, expected usize (216 characters in all)"),
            "{c}"
        );
        assert!(c.chars().count() < 120, "{c}");
        assert_eq!(clip(&"a".repeat(ECHO_CHARS)), "a".repeat(ECHO_CHARS));
    }

    #[test]
    fn bytes_and_hashes() {
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(1.5e9), "1.50 GB");
        assert_eq!(format_bytes(25e9), "25.0 GB");
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_name_the_path_on_failure() {
        let dir = std::env::temp_dir().join(format!("lpzero-report-{}", std::process::id()));
        let path = dir.join("sub/out.txt");
        write_atomic(&path, "first").unwrap();
        write_atomic(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second");
        let leftovers = std::fs::read_dir(dir.join("sub")).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        let err = write_atomic(&path.join("x.csv"), "data").unwrap_err();
        assert!(format!("{err:#}").contains("out.txt"), "{err:#}");
        if Path::new("/dev/full").exists() {
            // A device is written in place (never replaced), and its errors are reported.
            let err = write_atomic(Path::new("/dev/full"), "data").unwrap_err();
            assert!(
                format!("{err:#}").contains("/dev/full: cannot write"),
                "{err:#}"
            );
            assert!(!Path::new("/dev/full").is_file());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
