//! Sharded runs: one job split over many processes (a Slurm job array, a Kubernetes Indexed
//! Job, or plain shell loops), each scoring its own share of the architectures into a JSON
//! Lines file, and the merge of those files into exactly what one unsharded run writes.
//!
//! * [`Shard`]: which share a process scores. Shard `I/N` (numbered from 0: `0 ≤ I < N`) takes
//!   the architectures at the positions `p` of the selection with `p % N == I`, so the shares
//!   are disjoint, cover the selection, and depend on nothing but `I`, `N` and the selection
//!   (not on timing, threads or the other shards). [`Shard::resolve`] also reads `auto` from
//!   the scheduler's environment.
//! * [`file`](mod@file): the shard file: a header line that records everything that decides the values,
//!   then one line per architecture, appended and synced as each one finishes; a re-run
//!   resumes it (after a kill or a preemption) and scores only what is not there yet.
//! * [`run`]: the sharded form of [`crate::scoring::Job::score`], used by `score`, `baselines` and
//!   `nas`; a later command that scores architectures one by one can use it as it is.
//! * [`merge`]: reads shard files, checks that they belong to one run, reports missing and
//!   duplicate architectures, and rebuilds the unsharded run's [`crate::scoring::ScoreTable`].
//!
//! Probes are seeded per architecture (from `--seed` and the architecture's position in the
//! benchmark), so a shard computes exactly the values the unsharded run computes for its
//! architectures, and merged output is the unsharded output byte for byte (timings aside).

pub mod file;
pub mod merge;
pub mod run;

use std::fmt;

use anyhow::{bail, Result};

use crate::report::clip;

/// Slurm: the array index of this task.
pub const SLURM_TASK_ID: &str = "SLURM_ARRAY_TASK_ID";
/// Slurm: the number of tasks in the job array.
pub const SLURM_TASK_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
/// Slurm: the lowest index of the job array.
pub const SLURM_TASK_MIN: &str = "SLURM_ARRAY_TASK_MIN";
/// Slurm: the step between the indices of the job array.
pub const SLURM_TASK_STEP: &str = "SLURM_ARRAY_TASK_STEP";
/// Kubernetes Indexed Job: the completion index of this pod (from 0).
pub const K8S_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
/// The number of shards when the scheduler does not say it (Kubernetes sets no such
/// variable): lpzero's own variable, read by `--shard auto` when `--shard-count` is not given.
pub const SHARD_COUNT_ENV: &str = "LPZERO_SHARD_COUNT";

/// One shard of a run: `index` of `count`, numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This shard's number, `0 ≤ index < count`.
    pub index: usize,
    /// How many shards share the run (at least 1).
    pub count: usize,
}

impl fmt::Display for Shard {
    /// Writes `I/N`, the form `--shard` reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Shard `index` of `count`; fails unless `count ≥ 1` and `index < count`. `what` names
    /// where the numbers came from, for the message.
    pub fn new(index: usize, count: usize, what: &str) -> Result<Self> {
        if count == 0 {
            bail!("{what}: the shard count is 0; expected at least 1 shard");
        }
        if index >= count {
            bail!(
                "{what}: shard index {index} is out of range for {count} shard(s): expected \
                 0..={} (shards are numbered from 0)",
                count - 1
            );
        }
        Ok(Self { index, count })
    }

    /// Resolves `--shard SPEC` (with `--shard-count` as `count`): `I/N`, or `auto`, which
    /// reads the scheduler's environment through `env`:
    ///
    /// * Slurm job array: `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT` shards; the
    ///   index counts from `SLURM_ARRAY_TASK_MIN` in steps of `SLURM_ARRAY_TASK_STEP` (when
    ///   set), so `--array=1-8` and `--array=0-7` both give shards 0..=7. `count`, when given,
    ///   must agree with the array.
    /// * Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`, with the count from `count`, else
    ///   from `LPZERO_SHARD_COUNT` (Kubernetes does not pass `completions` to the pod).
    ///
    /// `count` is refused with `I/N`, which already names the count. Every failure names the
    /// spec or the variable and says what was expected (the caller adds its flag).
    pub fn resolve(
        spec: &str,
        count: Option<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let spec = spec.trim();
        if spec == "auto" {
            return Self::from_env(count, env);
        }
        let Some((i, n)) = spec.split_once('/') else {
            bail!(
                "shard `{}`: expected I/N (shard I of N, numbered from 0, e.g. 0/4) or `auto`",
                clip(spec)
            );
        };
        if count.is_some() {
            bail!(
                "a separate shard count goes with `auto` only; `{}` already names the count",
                clip(spec)
            );
        }
        let what = format!("shard {}", clip(spec));
        let index = parse_count(i, &what, "the shard index I")?;
        let total = parse_count(n, &what, "the shard count N")?;
        Self::new(index, total, &what)
    }

    /// `--shard auto`: see [`Shard::resolve`].
    fn from_env(count: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|v| parse_count(&v, &format!("auto: ${name}"), "a number"))
                .transpose()
        };
        let slurm = env(SLURM_TASK_ID).is_some();
        let k8s = env(K8S_COMPLETION_INDEX).is_some();
        if slurm && k8s {
            bail!(
                "auto: both ${SLURM_TASK_ID} (Slurm) and ${K8S_COMPLETION_INDEX} \
                 (Kubernetes) are set; give the shard as I/N"
            );
        }
        if slurm {
            let id = read(SLURM_TASK_ID)?.unwrap_or_default();
            let Some(total) = read(SLURM_TASK_COUNT)? else {
                bail!(
                    "auto: ${SLURM_TASK_ID} is set but ${SLURM_TASK_COUNT} is not; \
                     expected both inside a Slurm job array (or give the shard as I/N)"
                );
            };
            let min = read(SLURM_TASK_MIN)?.unwrap_or(0);
            let step = read(SLURM_TASK_STEP)?.unwrap_or(1).max(1);
            let offset = id.checked_sub(min).filter(|d| d % step == 0);
            let Some(offset) = offset else {
                bail!(
                    "auto: ${SLURM_TASK_ID}={id} is not ${SLURM_TASK_MIN}={min} plus a \
                     multiple of ${SLURM_TASK_STEP}={step}; submit the array as a range such as \
                     --array=0-{}",
                    total.saturating_sub(1)
                );
            };
            if let Some(n) = count.filter(|&n| n != total) {
                bail!(
                    "the shard count {n} disagrees with ${SLURM_TASK_COUNT}={total}; leave \
                     the count out inside a Slurm job array"
                );
            }
            let what = format!(
                "auto (${SLURM_TASK_ID}={id}, ${SLURM_TASK_COUNT}={total}, first index \
                 {min}, step {step})"
            );
            return Self::new(offset / step, total, &what);
        }
        if k8s {
            let index = read(K8S_COMPLETION_INDEX)?.unwrap_or_default();
            let total = match count {
                Some(n) => n,
                None => read(SHARD_COUNT_ENV)?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "auto: ${K8S_COMPLETION_INDEX} is set, but not the number of \
                         shards: give a shard count or set ${SHARD_COUNT_ENV}=N (the Job's \
                         `completions`)"
                    )
                })?,
            };
            let what = format!("auto (${K8S_COMPLETION_INDEX}={index}, {total} shard(s))");
            return Self::new(index, total, &what);
        }
        bail!(
            "auto: neither ${SLURM_TASK_ID} (a Slurm job array) nor \
             ${K8S_COMPLETION_INDEX} (a Kubernetes Indexed Job) is set; run inside such a job \
             or give the shard as I/N"
        )
    }

    /// True when the selection position `pos` belongs to this shard.
    pub fn owns(&self, pos: usize) -> bool {
        pos % self.count == self.index
    }

    /// This shard's share of `selection`: the items at positions `p` with `p % count ==
    /// index`, in selection order.
    pub fn share<T: Copy>(&self, selection: &[T]) -> Vec<T> {
        selection
            .iter()
            .enumerate()
            .filter(|(pos, _)| self.owns(*pos))
            .map(|(_, &x)| x)
            .collect()
    }
}

/// Parses a non-negative integer; `what` names the flag or variable and `role` the number.
fn parse_count(text: &str, what: &str, role: &str) -> Result<usize> {
    text.trim().parse::<usize>().map_err(|_| {
        anyhow::anyhow!(
            "{what}: `{}` is not {role}; expected a non-negative integer",
            clip(text.trim())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn auto(vars: &[(&str, &str)], count: Option<usize>) -> Shard {
        Shard::resolve("auto", count, &env(vars)).unwrap()
    }

    fn err(spec: &str, count: Option<usize>, vars: &[(&str, &str)]) -> String {
        format!("{:#}", Shard::resolve(spec, count, &env(vars)).unwrap_err())
    }

    #[test]
    fn explicit_shards_parse_and_validate() {
        let none = env(&[]);
        assert_eq!(
            Shard::resolve("2/3", None, &none).unwrap(),
            Shard { index: 2, count: 3 }
        );
        assert_eq!(
            Shard::resolve(" 0/1 ", None, &none).unwrap().to_string(),
            "0/1"
        );
        assert!(err("3/3", None, &[]).contains("out of range for 3 shard(s): expected 0..=2"));
        assert!(err("0/0", None, &[]).contains("at least 1 shard"));
        assert!(err("a/3", None, &[]).contains("`a` is not the shard index I"));
        assert!(err("1/-2", None, &[]).contains("`-2` is not the shard count N"));
        assert!(err("3", None, &[]).contains("expected I/N"));
        assert!(err("0/2", Some(2), &[]).contains("a separate shard count goes with `auto` only"));
    }

    #[test]
    fn auto_reads_slurm_and_kubernetes() {
        let slurm = [(SLURM_TASK_ID, "2"), (SLURM_TASK_COUNT, "4")];
        assert_eq!(auto(&slurm, None), Shard { index: 2, count: 4 });
        // --array=1-4: ids 1..=4 are shards 0..=3; --array=0-12:4 in steps of 4.
        let one_based = [
            (SLURM_TASK_ID, "4"),
            (SLURM_TASK_COUNT, "4"),
            (SLURM_TASK_MIN, "1"),
        ];
        assert_eq!(auto(&one_based, None), Shard { index: 3, count: 4 });
        let stepped = [
            (SLURM_TASK_ID, "8"),
            (SLURM_TASK_COUNT, "4"),
            (SLURM_TASK_MIN, "0"),
            (SLURM_TASK_STEP, "4"),
        ];
        assert_eq!(auto(&stepped, None), Shard { index: 2, count: 4 });
        let k8s = [(K8S_COMPLETION_INDEX, "1")];
        assert_eq!(auto(&k8s, Some(3)), Shard { index: 1, count: 3 });
        let k8s_env = [(K8S_COMPLETION_INDEX, "0"), (SHARD_COUNT_ENV, "5")];
        assert_eq!(auto(&k8s_env, None), Shard { index: 0, count: 5 });
    }

    #[test]
    fn auto_explains_what_is_missing() {
        assert!(err("auto", None, &[]).contains("neither $SLURM_ARRAY_TASK_ID"));
        assert!(err("auto", None, &[(SLURM_TASK_ID, "1")]).contains("$SLURM_ARRAY_TASK_COUNT"));
        assert!(err("auto", None, &[(K8S_COMPLETION_INDEX, "1")]).contains("give a shard count"));
        let e = err(
            "auto",
            None,
            &[(K8S_COMPLETION_INDEX, "x"), (SHARD_COUNT_ENV, "2")],
        );
        assert!(
            e.contains("$JOB_COMPLETION_INDEX: `x` is not a number"),
            "{e}"
        );
        let e = err("auto", Some(2), &[(K8S_COMPLETION_INDEX, "2")]);
        assert!(e.contains("shard index 2 is out of range for 2"), "{e}");
        let both = [(SLURM_TASK_ID, "0"), (K8S_COMPLETION_INDEX, "0")];
        assert!(err("auto", None, &both).contains("both"));
        let slurm = [(SLURM_TASK_ID, "1"), (SLURM_TASK_COUNT, "4")];
        assert!(err("auto", Some(3), &slurm).contains("disagrees"));
        let gap = [
            (SLURM_TASK_ID, "3"),
            (SLURM_TASK_COUNT, "4"),
            (SLURM_TASK_STEP, "2"),
        ];
        assert!(err("auto", None, &gap).contains("--array=0-3"));
    }

    #[test]
    fn shares_are_disjoint_and_cover_the_selection() {
        let selection: Vec<usize> = vec![9, 3, 4, 0, 7, 1, 8];
        let mut seen = Vec::new();
        for index in 0..3 {
            let shard = Shard { index, count: 3 };
            seen.extend(shard.share(&selection));
        }
        seen.sort_unstable();
        let mut all = selection.clone();
        all.sort_unstable();
        assert_eq!(seen, all);
        assert_eq!(Shard { index: 1, count: 3 }.share(&selection), vec![3, 7]);
        assert!(Shard { index: 4, count: 9 }.share(&[1, 2]).is_empty());
    }
}
