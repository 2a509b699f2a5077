//! Stage instances as Slurm jobs: the runner plans, Slurm runs.
//!
//! The scheduler loop plans the pipeline (a dry run: what is cached, what could run now because
//! its inputs are there, what waits on upstream results), submits each instance that can run
//! with `sbatch --parsable` as one job (`asymm run-stage PIPELINE --instance NAME --key KEY`
//! against the same store, or a store remote), polls the jobs (`sacct`, or `scontrol show job`
//! where the cluster keeps no accounting), and plans again whenever one ends. The DAG's edges are
//! the only dependencies; independent instances (sweep points, RL runs) run at once. A job that
//! ends without its run record (killed, preempted, its node lost) is submitted again, up to
//! [`SlurmConfig::retries`] times; one that fails has its log shown. Everything cached submits
//! nothing.

use super::{DagError, Outcome, Pipeline, Reason, RunOptions, RunRow, Runner};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where a run's stage instances execute (`executor = "local"` or
/// `executor = { slurm = { … } }` in `[pipeline]`, or `--executor`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Executor {
    /// In this process, one instance after another.
    #[default]
    Local,
    /// One Slurm job per instance.
    Slurm(SlurmConfig),
}

/// `sbatch` settings of the jobs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition` (the cluster's default when absent).
    pub partition: Option<String>,
    /// `--time` limit, e.g. `"02:00:00"`.
    pub time: Option<String>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// `--gres`, e.g. `"gpu:1"`.
    pub gres: Option<String>,
    /// Submissions after the first for a job that ends without its record (default 2).
    pub retries: Option<u32>,
}

/// A job's state as Slurm reports it, reduced to what the scheduler acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Pending, running, completing, suspended…
    Active,
    Completed,
    /// Failed, timed out, out of memory: the stage itself went wrong.
    Failed,
    /// Cancelled, preempted, node failure, or no longer known to Slurm: the job was stopped
    /// from outside.
    Lost,
}

/// Reads a Slurm state name (`COMPLETED`, `CANCELLED by 0`, `NODE_FAIL`…).
pub fn job_state(s: &str) -> JobState {
    let s = s.trim();
    let word = s.split_whitespace().next().unwrap_or("");
    match word.trim_end_matches('+') {
        "COMPLETED" => JobState::Completed,
        "FAILED" | "TIMEOUT" | "OUT_OF_MEMORY" | "OUT_OF_ME" | "DEADLINE" | "BOOT_FAIL" => {
            JobState::Failed
        }
        "CANCELLED" | "PREEMPTED" | "NODE_FAIL" | "REVOKED" | "" => JobState::Lost,
        _ => JobState::Active,
    }
}

/// `sacct -n -P -X -o JobIDRaw,State` lines → job id → state.
pub fn parse_sacct(out: &str) -> BTreeMap<String, JobState> {
    out.lines()
        .filter_map(|l| {
            let (id, state) = l.split_once('|')?;
            Some((id.trim().to_string(), job_state(state)))
        })
        .collect()
}

/// `scontrol show job -o ID` output → the job's state (`None` when Slurm no longer knows it).
pub fn parse_scontrol(out: &str) -> Option<JobState> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .map(job_state)
}

fn run_cmd(cmd: &mut Command) -> Result<String, DagError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| DagError::Executor(format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        return Err(DagError::Executor(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Quotes a word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What one Slurm-run instance is waiting on.
struct Job {
    id: String,
    key: String,
    log: PathBuf,
    submissions: u32,
    /// A forced instance already has a record: only one written after this counts.
    forced_since: Option<std::time::SystemTime>,
}

/// The Slurm side of a run: how jobs are submitted and what they run.
pub struct SlurmRun<'a> {
    pub config: &'a SlurmConfig,
    /// The `asymm` binary the jobs start.
    pub exe: PathBuf,
    /// The store (an absolute path every node sees).
    pub store: PathBuf,
    /// The pipeline file (likewise).
    pub pipeline_file: PathBuf,
    pub device: String,
    /// A store remote the jobs pull from and push to.
    pub remote: Option<String>,
    /// How often job states are read.
    pub poll: Duration,
}

impl SlurmRun<'_> {
    fn submit(&self, inst: &str, key: &str, force: bool) -> Result<(String, PathBuf), DagError> {
        let dir = self.store.join("slurm");
        std::fs::create_dir_all(&dir)
            .map_err(|e| DagError::Executor(format!("cannot create {}: {e}", dir.display())))?;
        let short = &key[..12.min(key.len())];
        let script = dir.join(format!("{short}.sh"));
        let mut cmd = vec![
            self.exe.display().to_string(),
            "--store".into(),
            self.store.display().to_string(),
            "run-stage".into(),
            self.pipeline_file.display().to_string(),
            "--instance".into(),
            inst.to_string(),
            "--key".into(),
            key.to_string(),
            "--device".into(),
            self.device.clone(),
        ];
        if let Some(r) = &self.remote {
            cmd.extend(["--remote".into(), r.clone()]);
        }
        if force {
            cmd.push("--force".into());
        }
        let line: Vec<String> = cmd.iter().map(|w| sh_quote(w)).collect();
        std::fs::write(&script, format!("#!/bin/sh\nexec {}\n", line.join(" ")))
            .map_err(|e| DagError::Executor(format!("cannot write {}: {e}", script.display())))?;
        let log = dir.join(format!("{short}-%j.log"));
        let mut sb = Command::new("sbatch");
        sb.arg("--parsable")
            .arg(format!("--job-name=asymm:{inst}"))
            .arg(format!("--output={}", log.display()));
        let c = self.config;
        if let Some(p) = &c.partition {
            sb.arg(format!("--partition={p}"));
        }
        if let Some(t) = &c.time {
            sb.arg(format!("--time={t}"));
        }
        if let Some(n) = c.cpus {
            sb.arg(format!("--cpus-per-task={n}"));
        }
        if let Some(g) = &c.gres {
            sb.arg(format!("--gres={g}"));
        }
        sb.arg(&script);
        let out = run_cmd(&mut sb)?;
        // `--parsable` prints `id` or `id;cluster`.
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DagError::Executor(format!(
                "sbatch printed `{}`, not a job id",
                out.trim()
            )));
        }
        let log = dir.join(format!("{short}-{id}.log"));
        Ok((id, log))
    }

    /// The states of `ids`: from `sacct`, or per job from `scontrol` when the cluster keeps no
    /// accounting.
    fn states(&self, ids: &[&str]) -> Result<BTreeMap<String, JobState>, DagError> {
        let list = ids.join(",");
        let sacct = Command::new("sacct")
            .args(["-n", "-P", "-X", "-o", "JobIDRaw,State", "-j", &list])
            .output();
        if let Ok(o) = &sacct
            && o.status.success()
        {
            let mut got = parse_sacct(&String::from_utf8_lossy(&o.stdout));
            // A job accounting does not list yet (or any more) is asked of the controller.
            let missing: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| !got.contains_key(*id))
                .collect();
            got.extend(self.controller_states(&missing)?);
            return Ok(got);
        }
        self.controller_states(ids)
    }

    /// The states of `ids` from `scontrol show job`.
    fn controller_states(&self, ids: &[&str]) -> Result<BTreeMap<String, JobState>, DagError> {
        let mut got = BTreeMap::new();
        for id in ids {
            let o = Command::new("scontrol")
                .args(["show", "job", "-o", id])
                .output()
                .map_err(|e| DagError::Executor(format!("cannot run scontrol: {e}")))?;
            let state = match parse_scontrol(&String::from_utf8_lossy(&o.stdout)) {
                Some(state) => state,
                // Slurm forgot the job (it ended long ago): judged by its record.
                None if String::from_utf8_lossy(&o.stderr).contains("Invalid job id") => {
                    JobState::Lost
                }
                // The controller did not answer: ask again at the next poll.
                None => JobState::Active,
            };
            got.insert(id.to_string(), state);
        }
        Ok(got)
    }

    /// Runs the selected instances of `p` as Slurm jobs until everything selected has its
    /// result; returns the run table (instances that ran in a job read `Ran`).
    pub fn run(
        &self,
        runner: &mut Runner,
        p: &Pipeline,
        opts: &RunOptions,
    ) -> Result<SlurmReport, DagError> {
        let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
        let out = self.run_jobs(runner, p, opts, &mut jobs);
        if out.is_err() && !jobs.is_empty() {
            // Nothing will collect their results: stop them.
            let ids: Vec<&str> = jobs.values().map(|j| j.id.as_str()).collect();
            let _ = Command::new("scancel").args(&ids).status();
        }
        out
    }

    fn run_jobs(
        &self,
        runner: &mut Runner,
        p: &Pipeline,
        opts: &RunOptions,
        jobs: &mut BTreeMap<String, Job>,
    ) -> Result<SlurmReport, DagError> {
        // `--force` names declarations or instances; spelled out as instances, each leaves the
        // list once its job has run, so that the plan then finds its new result.
        let forced: Vec<String> = p
            .instances
            .iter()
            .filter(|i| opts.force.iter().any(|f| f == &i.name || f == &i.decl))
            .map(|i| i.name.clone())
            .collect();
        let retries = self.config.retries.unwrap_or(2);
        let mut ran: BTreeMap<String, (String, Duration)> = BTreeMap::new();
        let mut submitted = 0usize;
        loop {
            let plan_opts = RunOptions {
                dry_run: true,
                force: forced
                    .iter()
                    .filter(|f| !ran.contains_key(*f))
                    .cloned()
                    .collect(),
                ..opts.clone()
            };
            let rows = runner.run(p, &plan_opts)?;
            // A job may finish between two polls and the plan find its result first.
            for r in rows.iter().filter(|r| r.outcome == Outcome::Cached) {
                if let Some(job) = jobs.remove(&r.instance) {
                    let ms = runner
                        .store
                        .record(&job.key)?
                        .map_or(0, |rec| rec.duration_ms);
                    ran.insert(r.instance.clone(), (job.id, Duration::from_millis(ms)));
                }
            }
            let mut waiting = false;
            for r in &rows {
                let Outcome::WouldRun(why) = &r.outcome else {
                    continue;
                };
                waiting = true;
                let upstream = why
                    .iter()
                    .any(|w| matches!(w, Reason::UpstreamPending { .. }));
                if upstream || jobs.contains_key(&r.instance) {
                    continue;
                }
                if ran.contains_key(&r.instance) {
                    // Its job wrote a record, yet the plan does not find it (a device-keyed
                    // stage planned for another device, say): submitting again would loop.
                    return Err(DagError::Executor(format!(
                        "`{}` ran as a Slurm job, but the plan still does not find its result ({})",
                        r.instance,
                        why.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
                let Some(key) = r.key.clone() else { continue };
                let force = forced.contains(&r.instance);
                let since = std::time::SystemTime::now();
                let (id, log) = self.submit(&r.instance, &key, force)?;
                eprintln!("slurm: submitted {} as job {id}", r.instance);
                submitted += 1;
                jobs.insert(
                    r.instance.clone(),
                    Job {
                        id,
                        key,
                        log,
                        submissions: 1,
                        forced_since: force.then_some(since),
                    },
                );
            }
            if !waiting {
                // Everything selected has its result: one ordinary run sets the heads, pushes
                // to the remote and applies retention, as a local run would.
                let rows = runner.run(
                    p,
                    &RunOptions {
                        force: Vec::new(),
                        dry_run: false,
                        ..opts.clone()
                    },
                )?;
                let rows = rows
                    .into_iter()
                    .map(|mut r| {
                        if let Some((_, d)) = ran.get(&r.instance)
                            && r.outcome == Outcome::Cached
                        {
                            r.outcome = Outcome::Ran;
                            r.duration = *d;
                        }
                        r
                    })
                    .collect();
                return Ok(SlurmReport {
                    rows,
                    jobs: submitted,
                });
            }
            if jobs.is_empty() {
                return Err(DagError::Executor(
                    "nothing can run and nothing is running: an upstream result is missing".into(),
                ));
            }
            self.wait_for_one(runner, jobs, &mut ran, retries, &mut submitted, &forced)?;
        }
    }

    /// Polls until at least one job ends; resubmits the lost ones, fails on a failed one.
    fn wait_for_one(
        &self,
        runner: &mut Runner,
        jobs: &mut BTreeMap<String, Job>,
        ran: &mut BTreeMap<String, (String, Duration)>,
        retries: u32,
        submitted: &mut usize,
        forced: &[String],
    ) -> Result<(), DagError> {
        let t0 = Instant::now();
        loop {
            std::thread::sleep(self.poll.min(Duration::from_millis(200) + t0.elapsed() / 4));
            let ids: Vec<&str> = jobs.values().map(|j| j.id.as_str()).collect();
            let states = self.states(&ids)?;
            let mut ended = false;
            let names: Vec<String> = jobs.keys().cloned().collect();
            for inst in names {
                let state = states
                    .get(&jobs[&inst].id)
                    .copied()
                    .unwrap_or(JobState::Lost);
                if state == JobState::Active {
                    continue;
                }
                ended = true;
                let job = jobs
                    .remove(&inst)
                    .ok_or_else(|| DagError::Executor(inst.clone()))?;
                // The job's record: in the shared store, or pushed to the remote.
                let rec = match runner.store.record(&job.key)? {
                    Some(rec) => Some(rec),
                    None => runner.pull(&job.key)?,
                };
                let rec = match job.forced_since {
                    Some(t) => rec.filter(|_| {
                        runner
                            .store
                            .record_time(&job.key)
                            .ok()
                            .flatten()
                            .is_some_and(|w| w >= t)
                    }),
                    None => rec,
                };
                if let Some(rec) = rec {
                    ran.insert(
                        inst.clone(),
                        (job.id.clone(), Duration::from_millis(rec.duration_ms)),
                    );
                    continue;
                }
                let log = std::fs::read_to_string(&job.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = match lines.len() {
                    0 => "(empty)".to_string(),
                    n => lines[n.saturating_sub(30)..].join("\n"),
                };
                if state == JobState::Lost && job.submissions <= retries {
                    let force = forced.contains(&inst);
                    let since = std::time::SystemTime::now();
                    let (id, log) = self.submit(&inst, &job.key, force)?;
                    eprintln!(
                        "slurm: job {} of {inst} ended without its result ({state:?}); submitted again as job {id}",
                        job.id
                    );
                    *submitted += 1;
                    jobs.insert(
                        inst,
                        Job {
                            id,
                            key: job.key,
                            log,
                            submissions: job.submissions + 1,
                            forced_since: force.then_some(since),
                        },
                    );
                    continue;
                }
                return Err(DagError::Executor(format!(
                    "slurm job {} ({inst}) ended {state:?} without its result; its log ({}):\n{tail}",
                    job.id,
                    job.log.display()
                )));
            }
            if ended {
                return Ok(());
            }
        }
    }
}

/// What a Slurm run did.
pub struct SlurmReport {
    pub rows: Vec<RunRow>,
    /// Jobs submitted (resubmissions included).
    pub jobs: usize,
}

/// The absolute form of `p` (jobs run elsewhere, from another directory).
pub fn absolute(p: &Path) -> Result<PathBuf, DagError> {
    std::path::absolute(p).map_err(|e| DagError::Executor(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_states_are_read_as_the_scheduler_needs_them() {
        let got = parse_sacct(
            "12|COMPLETED\n13|CANCELLED by 0\n14|RUNNING\n15|FAILED\n16|NODE_FAIL\n17|PENDING\n18|OUT_OF_MEMORY\n",
        );
        assert_eq!(got["12"], JobState::Completed);
        assert_eq!(got["13"], JobState::Lost);
        assert_eq!(got["14"], JobState::Active);
        assert_eq!(got["15"], JobState::Failed);
        assert_eq!(got["16"], JobState::Lost);
        assert_eq!(got["17"], JobState::Active);
        assert_eq!(got["18"], JobState::Failed);
        let line = "JobId=7 JobName=asymm:x UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null)";
        assert_eq!(parse_scontrol(line), Some(JobState::Lost));
        assert_eq!(
            parse_scontrol("JobId=8 JobState=COMPLETED Reason=None"),
            Some(JobState::Completed)
        );
        assert_eq!(
            parse_scontrol("slurm_load_jobs error: Invalid job id specified"),
            None
        );
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_executor_reads_from_toml() {
        #[derive(Deserialize)]
        struct W {
            executor: Executor,
        }
        let w: W = toml::from_str("executor = \"local\"").unwrap();
        assert_eq!(w.executor, Executor::Local);
        let w: W = toml::from_str(
            "executor = { slurm = { partition = \"gpu\", time = \"01:00:00\", cpus = 4, gres = \"gpu:1\" } }",
        )
        .unwrap();
        assert_eq!(
            w.executor,
            Executor::Slurm(SlurmConfig {
                partition: Some("gpu".into()),
                time: Some("01:00:00".into()),
                cpus: Some(4),
                gres: Some("gpu:1".into()),
                retries: None,
            })
        );
        assert!(toml::from_str::<W>("executor = { slurm = { partitions = \"x\" } }").is_err());
    }
}
