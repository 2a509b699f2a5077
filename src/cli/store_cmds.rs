//! `asymm verify`, `gc`, `tag` and `list`: store maintenance.

use super::{resolve_ref, short};
use asymm::store::Store;
use clap::Args;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Report what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Tag name.
    pub name: String,
    /// Artifacts (ids, prefixes or PIPELINE.toml:STAGE).
    #[arg(required = true)]
    pub artifacts: Vec<String>,
    /// Device whose results PIPELINE.toml:STAGE names for device-sensitive stages (default: the
    /// most recent result on any device).
    #[arg(long)]
    pub device: Option<String>,
}

pub fn verify(store: &Store) -> anyhow::Result<i32> {
    let ids = store.list()?;
    let mut bad = 0;
    for id in &ids {
        if let Err(e) = store.verify(id) {
            println!("CORRUPT {e}");
            bad += 1;
        }
    }
    println!(
        "verified {} artifacts: {} ok, {} corrupt",
        ids.len(),
        ids.len() - bad,
        bad
    );
    Ok(if bad > 0 { 3 } else { 0 })
}

pub fn gc(store: &Store, a: GcArgs) -> anyhow::Result<i32> {
    let r = store.gc(a.dry_run)?;
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for id in &r.removed {
        println!("{verb} {}", short(id));
    }
    println!(
        "{verb} {} artifacts ({:.1} MB) and {} records; kept {}",
        r.removed.len(),
        r.bytes_freed as f64 / 1e6,
        r.records_removed,
        r.kept
    );
    Ok(0)
}

pub fn tag(store: &Store, a: TagArgs) -> anyhow::Result<i32> {
    let ids: Vec<String> = a
        .artifacts
        .iter()
        .map(|r| resolve_ref(store, r, a.device.as_deref()))
        .collect::<anyhow::Result<_>>()?;
    store.set_tag(&a.name, &ids)?;
    println!(
        "tag {} → {}",
        a.name,
        ids.iter().map(|i| short(i)).collect::<Vec<_>>().join(" ")
    );
    Ok(0)
}

pub fn list(store: &Store) -> anyhow::Result<i32> {
    for id in store.list()? {
        let m = store.manifest(&id)?;
        let stage = m
            .producer
            .get("instance")
            .and_then(|s| s.as_str())
            .unwrap_or("-");
        println!(
            "{}  {:<14} {:>8} rows  {}",
            short(&id),
            m.kind,
            m.rows.unwrap_or(0),
            stage
        );
    }
    Ok(0)
}
