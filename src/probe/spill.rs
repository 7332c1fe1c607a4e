//! Expression inputs kept in a file instead of memory: what lets a search hold a fitness set
//! larger than the memory it may use.
//!
//! A search keeps the five expression inputs of every fitness architecture for its whole GP
//! loop: at GPT-2's default probe (16 × 192 tokens) about 210 MB per architecture even as
//! bfloat16, 10.5 GB for 50 architectures. With a [`SpillFile`] each probe's lists are written
//! once, exactly as stored (`f32` or bfloat16 bits, unchanged), and every read loads one list
//! back for as long as the reader holds it ([`Spilled`] is an [`InputSource`]). Every value is
//! the same bit for bit, so a search gives the same result either way; it trades memory for
//! reads. The operating system keeps the file in memory it has to spare (its page cache, which
//! it gives back under pressure) and reads it from disk otherwise.
//!
//! The file is created in a directory of the caller's choosing and unlinked at once, so only
//! the open handle keeps it: it disappears when the last [`Spilled`] is dropped or the process
//! ends, however it ends.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::array::{Array, Stored, StoredOwned};
use crate::proxy::eval::{InputList, InputSource};
use crate::proxy::expr::Input;

/// Bytes converted per write or read call (the values go through a buffer of this size).
const CHUNK_BYTES: usize = 1 << 20;

/// A value type an array may be stored as, with its bytes in the file (native order: the file
/// is written and read by the same process).
trait Raw: Copy {
    /// Bytes per value.
    const WIDTH: usize;
    /// Appends the value's bytes.
    fn put(self, out: &mut Vec<u8>);
    /// The value of `WIDTH` bytes.
    fn get(bytes: &[u8]) -> Self;
}

impl Raw for f32 {
    const WIDTH: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend(self.to_ne_bytes());
    }
    fn get(b: &[u8]) -> Self {
        f32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Raw for u16 {
    const WIDTH: usize = 2;
    fn put(self, out: &mut Vec<u8>) {
        out.extend(self.to_ne_bytes());
    }
    fn get(b: &[u8]) -> Self {
        u16::from_ne_bytes([b[0], b[1]])
    }
}

/// One file holding the input lists of many sources, written once and read many times from
/// several threads.
pub struct SpillFile {
    file: File,
    /// The directory the file was created in (for messages; the file is already unlinked).
    dir: PathBuf,
    /// Bytes written (or reserved for a write in progress) so far.
    end: Mutex<u64>,
    /// The first failed read, kept for the owner ([`SpillFile::check`]): a read happens where
    /// only "no list" can be answered ([`InputSource::input`]).
    failure: Mutex<Option<String>>,
}

impl SpillFile {
    /// A new, empty spill file in `dir` (which must exist), unlinked at once.
    pub fn create_in(dir: &Path) -> Result<Arc<Self>> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            ".lpzero-spill-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "creating a spill file in {}: the directory must exist and be writable",
                    dir.display()
                )
            })?;
        std::fs::remove_file(&path)
            .with_context(|| format!("unlinking the spill file {}", path.display()))?;
        Ok(Arc::new(Self {
            file,
            dir: dir.to_path_buf(),
            end: Mutex::new(0),
            failure: Mutex::new(None),
        }))
    }

    /// Writes the five input lists of `src` and returns the source that reads them back
    /// (a list `src` does not provide is served empty).
    pub fn spill(self: &Arc<Self>, src: &dyn InputSource) -> Result<Spilled> {
        let head_is_act = src.serves_head_as_act();
        let mut lists: [Vec<Slot>; 5] = Default::default();
        for input in Input::ALL {
            if head_is_act && input == Input::Head {
                continue;
            }
            let Some(list) = src.input(input) else {
                continue;
            };
            for a in list.iter() {
                lists[input.index()].push(self.write(a)?);
            }
        }
        Ok(Spilled {
            file: self.clone(),
            lists,
            head_is_act,
        })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An error naming the file when a read back failed (the search must not go on as if the
    /// list were absent).
    pub fn check(&self) -> Result<()> {
        match &*self.failure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => anyhow::bail!(
                "reading the fitness probes back from the spill file in {} failed: {e}",
                self.dir.display()
            ),
            None => Ok(()),
        }
    }

    /// Appends one array's stored values; returns where they are.
    fn write(&self, a: &Array) -> Result<Slot> {
        let (offset, compact) = match a.stored() {
            Stored::F32(v) => (self.append(v)?, false),
            Stored::Bf16(v) => (self.append(v)?, true),
        };
        Ok(Slot {
            shape: a.shape().to_vec(),
            offset,
            compact,
        })
    }

    /// Appends `values` at a range reserved for them; returns its byte offset.
    fn append<T: Raw>(&self, values: &[T]) -> Result<u64> {
        let bytes = (values.len() * T::WIDTH) as u64;
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            let at = *end;
            *end += bytes;
            at
        };
        let mut buf = Vec::with_capacity(CHUNK_BYTES.min(bytes as usize));
        let mut at = offset;
        for chunk in values.chunks(CHUNK_BYTES / T::WIDTH) {
            buf.clear();
            chunk.iter().for_each(|&x| x.put(&mut buf));
            write_at(&self.file, &buf, at).with_context(|| {
                format!(
                    "writing a probe to the spill file in {} (is the disk full?)",
                    self.dir.display()
                )
            })?;
            at += buf.len() as u64;
        }
        Ok(offset)
    }

    /// Reads one array back.
    fn read(&self, slot: &Slot) -> std::io::Result<Array> {
        let n: usize = slot.shape.iter().product();
        let values = if slot.compact {
            StoredOwned::Bf16(self.read_values(slot.offset, n)?)
        } else {
            StoredOwned::F32(self.read_values(slot.offset, n)?)
        };
        Array::from_stored(slot.shape.clone(), values).map_err(std::io::Error::other)
    }

    /// Reads `n` values starting at byte `offset`.
    fn read_values<T: Raw>(&self, offset: u64, n: usize) -> std::io::Result<Vec<T>> {
        let mut buf = vec![0u8; CHUNK_BYTES.min(n * T::WIDTH)];
        let mut values = Vec::with_capacity(n);
        let mut at = offset;
        while values.len() < n {
            let b = &mut buf[..((n - values.len()) * T::WIDTH).min(CHUNK_BYTES)];
            read_at(&self.file, b, at)?;
            at += b.len() as u64;
            values.extend(b.chunks_exact(T::WIDTH).map(T::get));
        }
        Ok(values)
    }

    /// Keeps the first failed read for [`SpillFile::check`].
    fn record_failure(&self, e: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(e);
    }
}

/// Where one array lies in a [`SpillFile`].
#[derive(Clone, Debug)]
struct Slot {
    shape: Vec<usize>,
    /// Byte offset of its first value.
    offset: u64,
    /// Stored as bfloat16 (else `f32`).
    compact: bool,
}

/// The input lists of one source, kept in a [`SpillFile`]: every read loads the list back
/// (the same bits that were written). A failed read serves no list and is kept in the file for
/// [`SpillFile::check`].
pub struct Spilled {
    file: Arc<SpillFile>,
    /// Per input (indexed like [`Input::ALL`]), where its arrays are; `head`'s is empty when
    /// it is `act`'s list.
    lists: [Vec<Slot>; 5],
    head_is_act: bool,
}

impl InputSource for Spilled {
    fn input(&self, which: Input) -> Option<InputList<'_>> {
        let which = if self.head_is_act && which == Input::Head {
            Input::Act
        } else {
            which
        };
        let loaded: std::io::Result<Vec<Array>> = self.lists[which.index()]
            .iter()
            .map(|slot| self.file.read(slot))
            .collect();
        match loaded {
            Ok(list) => Some(InputList::Shared(Arc::new(list))),
            Err(e) => {
                self.file.record_failure(e.to_string());
                None
            }
        }
    }

    fn serves_head_as_act(&self) -> bool {
        self.head_is_act
    }
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_write(file, buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(file, buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::eval::Inputs;

    fn arrays(seed: u64, n: usize) -> Vec<Array> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n)
            .map(|k| Array::new(vec![3, k + 2], rng.normal_vec(3 * (k + 2), 1.0)).unwrap())
            .collect()
    }

    #[test]
    fn spilled_lists_read_back_bit_for_bit_in_either_storage() {
        let dir = std::env::temp_dir();
        let file = SpillFile::create_in(&dir).unwrap();
        let act = arrays(1, 3);
        let grad: Vec<Array> = arrays(2, 2).iter().map(Array::to_bf16).collect();
        let weight = vec![Array::scalar(-0.0), Array::new(vec![0], vec![]).unwrap()];
        let src = Inputs {
            act: &act,
            head: &act,
            softmax: &[],
            grad: &grad,
            weight: &weight,
        };
        assert!(src.serves_head_as_act());
        let spilled = file.spill(&src).unwrap();
        assert!(spilled.serves_head_as_act());
        for input in Input::ALL {
            let want = src.input(input).unwrap();
            let got = spilled.input(input).unwrap();
            assert_eq!(got.len(), want.len(), "{input:?}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert_eq!(g.shape(), w.shape());
                assert_eq!(g.is_compact(), w.is_compact());
                let bits = |a: &Array| a.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(g), bits(w), "{input:?}");
            }
        }
        // Head is stored once: 3 act arrays of 6, 9 and 12 f32 values, 2 bf16 grads of 6 and
        // 9, one f32 scalar and one empty weight.
        assert_eq!(file.bytes(), (6 + 9 + 12) * 4 + (6 + 9) * 2 + 4);
        file.check().unwrap();
        // No file is left in the directory.
        let left = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.starts_with(&format!(".lpzero-spill-{}-", std::process::id()))
            });
        assert!(!left, "the spill file must be unlinked");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let e = SpillFile::create_in(Path::new("/nonexistent/lpzero/spill"))
            .err()
            .unwrap();
        let text = format!("{e:#}");
        assert!(text.contains("/nonexistent/lpzero/spill"), "{text}");
        assert!(text.contains("must exist"), "{text}");
    }

    #[test]
    fn a_failed_read_is_kept_for_the_owner() {
        let file = SpillFile::create_in(&std::env::temp_dir()).unwrap();
        let act = arrays(3, 1);
        let src = Inputs {
            act: &act,
            ..Inputs::default()
        };
        let mut spilled = file.spill(&src).unwrap();
        // A slot past the end of the file: the read fails.
        spilled.lists[0][0].offset = 1 << 40;
        assert!(spilled.input(Input::Act).is_none());
        let e = file.check().unwrap_err().to_string();
        assert!(e.contains("spill file"), "{e}");
    }
}
