//! Bundles: round trip with cache hits, and hostile bundles rejected with the store unchanged.

use crate::common::*;
use std::path::Path;

fn tar_with(path: &Path, entries: &[(&str, &[u8])], link: Option<(&str, &str)>) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name so that traversal attempts reach the importer unchanged.
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, *bytes).unwrap();
    }
    if let Some((name, target)) = link {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn round_trip_hits_the_cache() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let a = d.path().join("a");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    let first = table(&ok(asymm(&a, &["run", ps])));
    let bundle = d.path().join("x.bundle");
    let out = ok(asymm(
        &a,
        &[
            "bundle",
            "export",
            "-o",
            bundle.to_str().unwrap(),
            &format!("{ps}:distill_format"),
        ],
    ));
    assert!(
        out.contains("exported 3 artifacts and 3 run records"),
        "{out}"
    );
    let b = d.path().join("b");
    let imp = ok(asymm(&b, &["bundle", "import", bundle.to_str().unwrap()]));
    assert!(imp.contains("imported 3 artifacts"), "{imp}");
    ok(asymm(&b, &["verify"]));
    let rerun = table(&ok(asymm(&b, &["run", ps])));
    assert!(rerun.iter().all(|r| r.1 == "cached"), "{rerun:?}");
    assert_eq!(
        rerun.iter().map(|r| &r.2).collect::<Vec<_>>(),
        first.iter().map(|r| &r.2).collect::<Vec<_>>()
    );
    // Importing again is harmless.
    let again = ok(asymm(&b, &["bundle", "import", bundle.to_str().unwrap()]));
    assert!(again.contains("3 already present"), "{again}");
}

fn rejected(bundle: &Path, needle: &str) {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let s = d.path().join("s");
    let o = asymm(&s, &["bundle", "import", bundle.to_str().unwrap()]);
    assert!(!o.status.success(), "accepted a hostile bundle");
    assert!(
        stderr(&o).contains(needle),
        "expected `{needle}` in: {}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(s.join("objects")).unwrap().count(),
        0,
        "nothing imported"
    );
    assert_eq!(std::fs::read_dir(s.join("records")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(s.join("tmp")).unwrap().count(),
        0,
        "staging cleaned up"
    );
}

#[test]
fn hostile_bundles_are_rejected() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let index: &[u8] = b"{}";
    let t = d.path().join("traversal.tar");
    tar_with(
        &t,
        &[("bundle.json", index), ("objects/../../evil", b"x")],
        None,
    );
    rejected(&t, "unsafe path");
    let abs = d.path().join("absolute.tar");
    tar_with(&abs, &[("bundle.json", index), ("/etc/evil", b"x")], None);
    rejected(&abs, "unsafe path");
    let l = d.path().join("link.tar");
    tar_with(
        &l,
        &[("bundle.json", index)],
        Some(("objects/aa/link", "/etc/passwd")),
    );
    rejected(&l, "not a regular file");
    let odd = d.path().join("odd.tar");
    tar_with(&odd, &[("bundle.json", index), ("notes.txt", b"x")], None);
    rejected(&odd, "unexpected path");
    let garbage = d.path().join("garbage.tar");
    std::fs::write(
        &garbage,
        b"this is not a tar file at all, just some bytes....",
    )
    .unwrap();
    rejected(&garbage, "bundle rejected");
}

#[test]
fn tampered_bundle_is_rejected() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let a = d.path().join("a");
    let p = data_pipeline(d.path(), 64);
    let ps = p.to_str().unwrap();
    ok(asymm(&a, &["run", ps]));
    let bundle = d.path().join("x.bundle");
    ok(asymm(
        &a,
        &[
            "bundle",
            "export",
            "-o",
            bundle.to_str().unwrap(),
            &format!("{ps}:render"),
        ],
    ));
    // Rewrite the bundle with one data byte flipped (sizes unchanged).
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&bundle).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
        if name.ends_with("data.parquet")
            && entries.iter().all(|(n, _)| !n.ends_with("data.parquet"))
        {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
        }
        entries.push((name, bytes));
    }
    let tampered = d.path().join("tampered.tar");
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    tar_with(&tampered, &refs, None);
    rejected(&tampered, "hash mismatch");
}
