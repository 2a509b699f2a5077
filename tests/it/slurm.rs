//! The Slurm executor against a real one-node Slurm on this machine: `munged`, `slurmctld` and
//! `slurmd` (Debian's `slurm-wlm` and `munge`, which `make test` installs), started here with
//! process-group tracking and no systemd. A test that cannot start them fails.

use crate::common::*;
use asymm::util::fsx::TempDir;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A one-node cluster (2 CPUs, partition `debug`), its daemons killed when dropped.
struct Slurm {
    daemons: Vec<Child>,
    conf: PathBuf,
    dir: TempDir,
}

impl Drop for Slurm {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a port")
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what} did not come up in 60 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Slurm {
    fn start() -> Slurm {
        // munged serves the whole machine; start it unless one answers.
        let munge_ok = || {
            Command::new("munge")
                .arg("-n")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !munge_ok() {
            std::fs::create_dir_all("/run/munge").unwrap();
            let st = Command::new("munged").arg("--force").status();
            assert!(st.is_ok_and(|s| s.success()), "munged did not start");
            wait_for("munged", Path::new("/var/log/munge/munged.log"), munge_ok);
        }
        let dir = TempDir::new("asymm-slurm").unwrap();
        let d = dir.path();
        for sub in ["state", "spool", "log", "run"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let conf = d.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=asymmtest\nSlurmctldHost=localhost\nSlurmctldPort={}\nSlurmdPort={}\n\
                 SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/pgid\nTaskPlugin=task/none\nAuthType=auth/munge\n\
                 CredType=cred/munge\nMpiDefault=none\nReturnToService=2\nSchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
                 JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
                 NodeName=localhost CPUs=2 RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port(),
                d = d.display()
            ),
        )
        .unwrap();
        let spawn = |conf: &Path, cmd: &mut Command| {
            cmd.env("SLURM_CONF", conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
        };
        let ctld = spawn(&conf, Command::new("slurmctld").args(["-D", "-i"]));
        let mut s = Slurm {
            daemons: vec![ctld],
            conf,
            dir,
        };
        let ctld_log = s.dir.path().join("log/slurmctld.log");
        wait_for("slurmctld", &ctld_log, || {
            s.cmd("scontrol", &["ping"]).status.success()
        });
        let slurmd = spawn(
            &s.conf,
            Command::new("slurmd").args(["-D", "-N", "localhost"]),
        );
        s.daemons.push(slurmd);
        let d_log = s.dir.path().join("log/slurmd.log");
        wait_for("slurmd", &d_log, || {
            String::from_utf8_lossy(&s.cmd("sinfo", &["-h", "-o", "%T"]).stdout).trim() == "idle"
        });
        s
    }

    fn cmd(&self, prog: &str, args: &[&str]) -> Output {
        Command::new(prog)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e}"))
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("SLURM_CONF", self.conf.to_str().unwrap())]
    }

    fn jobs_named(&self, name: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.cmd("squeue", &["-h", "-n", name, "-o", "%i"]).stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn sweep_pipeline(dir: &Path, sizes: &str) -> PathBuf {
    let p = dir.join("sweep.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[pipeline]
name = "sweep"
seed = 3
executor = {{ slurm = {{ cpus = 1 }} }}

[stages.synthesize]
task = "graph_coloring"
splits = {{ test = 8, sft = 24, rl = 4 }}

[stages.render]
inputs = {{ puzzles = "synthesize" }}
sweep = {{ size = [{sizes}] }}
"#
        ),
    )
    .unwrap();
    p
}

/// A 3-point sweep runs as 3 jobs; a rerun submits none; a job killed before it finishes is
/// submitted again; a job that fails stops the run with its log.
#[test]
fn a_sweep_runs_as_slurm_jobs() {
    let slurm = Slurm::start();
    let d = TempDir::new("asymm-it").unwrap();
    let store = d.path().join("s");
    let p = sweep_pipeline(d.path(), "48, 56, 64");
    let ps = p.to_str().unwrap();
    ok(asymm(
        &store,
        &["run", ps, "--until", "synthesize", "--executor", "local"],
    ));

    let o = asymm_env(&store, &["run", ps], &slurm.env());
    let out = ok(o.clone());
    assert!(
        stderr(&o).contains("slurm: 3 jobs submitted"),
        "{}",
        stderr(&o)
    );
    let rows = table(&out);
    assert_eq!(rows.iter().filter(|r| r.1 == "ran").count(), 3, "{rows:?}");
    let o = asymm_env(&store, &["run", ps, "--executor", "slurm"], &slurm.env());
    assert!(
        stderr(&o).contains("slurm: 0 jobs submitted"),
        "{}",
        stderr(&o)
    );
    let rows = table(&ok(o));
    assert!(
        rows.len() == 4 && rows.iter().all(|r| r.1 == "cached"),
        "{rows:?}"
    );
    // Forced: each instance runs once more, then the run ends.
    let o = asymm_env(&store, &["run", ps, "--force", "render"], &slurm.env());
    assert!(
        stderr(&o).contains("slurm: 3 jobs submitted"),
        "{}",
        stderr(&o)
    );
    let rows = table(&ok(o));
    assert_eq!(rows.iter().filter(|r| r.1 == "ran").count(), 3, "{rows:?}");
    let computed = std::fs::read_dir(store.join("slurm"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("render[size=48] Ran"))
        })
        .count();
    assert_eq!(computed, 2, "the forced job computed again");

    // Killed: jobs wait in a partition that is down; one is cancelled, then the partition
    // comes up. The cancelled job left no record, so it is submitted again.
    let p = sweep_pipeline(d.path(), "40, 44");
    slurm.cmd("scontrol", &["update", "PartitionName=debug", "State=DOWN"]);
    let child = Command::new(bin())
        .arg("--store")
        .arg(&store)
        .args(["run", p.to_str().unwrap()])
        .env("SLURM_CONF", &slurm.conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let name = "asymm:render[size=40]";
    wait_for(
        "the held job",
        &slurm.dir.path().join("log/slurmctld.log"),
        || !slurm.jobs_named(name).is_empty(),
    );
    let cancelled = slurm.jobs_named(name)[0].clone();
    assert!(slurm.cmd("scancel", &[&cancelled]).status.success());
    std::thread::sleep(Duration::from_millis(500));
    slurm.cmd("scontrol", &["update", "PartitionName=debug", "State=UP"]);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "job {cancelled} of render[size=40] ended without its result"
        )) && err.contains("slurm: 3 jobs submitted"),
        "{err}"
    );
    let rows = table(&stdout(&o));
    let renders: Vec<_> = rows.iter().filter(|r| r.0.starts_with("render")).collect();
    assert!(
        renders.len() == 2 && renders.iter().all(|r| r.1 == "ran"),
        "{rows:?}"
    );

    // Failed: the stage dies before its record; the run stops and shows the job's log.
    let p = sweep_pipeline(d.path(), "34");
    let mut env = slurm.env().to_vec();
    env.push(("ASYMM_FAULT", "render:before-record"));
    let o = asymm_env(&store, &["run", p.to_str().unwrap()], &env);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("(render[size=34]) ended Failed without its result")
            && err.contains("ASYMM_FAULT: aborting `render[size=34]` before its run record"),
        "{err}"
    );
}
