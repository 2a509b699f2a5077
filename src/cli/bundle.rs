//! `asymm bundle export|import`: share artifacts (with their lineage and run records).

use super::resolve_ref;
use asymm::store::{Store, export_bundle, import_bundle};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Write artifacts and everything upstream of them to one file.
    Export {
        /// Output file (a tar archive).
        #[arg(short, long)]
        out: PathBuf,
        /// Artifacts (ids, prefixes or PIPELINE.toml:STAGE).
        #[arg(required = true)]
        artifacts: Vec<String>,
        /// Device whose results PIPELINE.toml:STAGE names for device-sensitive stages (default:
        /// the most recent result on any device).
        #[arg(long)]
        device: Option<String>,
    },
    /// Verify and import a bundle into this store.
    Import {
        /// Bundle file.
        file: PathBuf,
    },
}

pub fn bundle(store: &Store, cmd: BundleCmd) -> anyhow::Result<i32> {
    match cmd {
        BundleCmd::Export {
            out,
            artifacts,
            device,
        } => {
            let ids: Vec<String> = artifacts
                .iter()
                .map(|r| resolve_ref(store, r, device.as_deref()))
                .collect::<anyhow::Result<_>>()?;
            let r = export_bundle(store, &ids, &out)?;
            println!(
                "exported {} artifacts and {} run records ({:.1} MB) to {}",
                r.artifacts,
                r.records,
                r.bytes as f64 / 1e6,
                out.display()
            );
        }
        BundleCmd::Import { file } => {
            let r = import_bundle(store, &file)?;
            println!(
                "imported {} artifacts ({} already present) and {} run records from {}",
                r.artifacts,
                r.already_present,
                r.records,
                file.display()
            );
        }
    }
    Ok(0)
}
