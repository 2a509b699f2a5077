//! `asymm dev …` (hidden): maintenance commands for working on asymm itself.

use asymm::stages::StageRegistry;
use asymm::stages::versions;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Check the stage version table (src/stages/versions.json) against the stages' sources, or
    /// with --write refresh it.
    StageVersions {
        /// Rewrite the table (refused while a stage's sources changed without a VERSION bump).
        #[arg(long)]
        write: bool,
        /// Record STAGE's changed sources without a VERSION bump; only when its output provably
        /// did not change (a refactor, a rename). Repeatable.
        #[arg(long, value_name = "STAGE", requires = "write")]
        unchanged_output: Vec<String>,
        /// Repository root.
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
}

pub fn dev(cmd: DevCmd) -> anyhow::Result<i32> {
    match cmd {
        DevCmd::StageVersions {
            write,
            unchanged_output,
            root,
        } => {
            if !root
                .join(versions::TABLE_PATH)
                .parent()
                .is_some_and(|d| d.is_dir())
            {
                anyhow::bail!(
                    "{} has no src/stages: run from the repository root or pass --root",
                    root.display()
                );
            }
            let reg = StageRegistry::default();
            if write {
                let r = versions::refresh(&root, &reg, &unchanged_output)?;
                for f in &r.recorded {
                    match f {
                        versions::Finding::Outdated { stage, what } => {
                            println!("recorded `{stage}`: {what}")
                        }
                        versions::Finding::NotBumped { stage, version, .. } => println!(
                            "recorded `{stage}`: sources changed, VERSION kept at {version} \
                             (--unchanged-output)"
                        ),
                        other => println!("recorded: {other}"),
                    }
                }
                if r.written {
                    println!("wrote {}", versions::TABLE_PATH);
                } else {
                    println!("{} is up to date", versions::TABLE_PATH);
                }
                return Ok(0);
            }
            let findings = versions::check(&root, &reg)?;
            for f in &findings {
                println!("{f}");
            }
            if findings.is_empty() {
                println!("{} is up to date", versions::TABLE_PATH);
                Ok(0)
            } else {
                Ok(1)
            }
        }
    }
}
