//! Retention: outputs an instance marks `discard` are deleted from the store (leaving a
//! tombstone) once every instance of the pipeline that reads them has its result, and a
//! discarded input is recomputed, by re-running its producer, when a stage that must run
//! needs it.

use super::runner::{Resolved, Runner};
use super::{DagError, Instance, Pipeline};
use std::collections::{BTreeMap, BTreeSet};

impl Runner<'_> {
    /// Recomputes every input in `inputs` that was discarded, by re-running the instance that
    /// produced it (itself after its own discarded inputs). Returns whether any was.
    pub(super) fn restore_inputs(
        &mut self,
        p: &Pipeline,
        results: &mut BTreeMap<String, BTreeMap<String, String>>,
        inputs: &BTreeMap<String, String>,
    ) -> Result<bool, DagError> {
        let mut any = false;
        for id in inputs.values() {
            if self.store.has(id) || !self.store.is_discarded(id) {
                continue;
            }
            let Some(inst) = p.instances.iter().find(|i| {
                results
                    .get(&i.name)
                    .is_some_and(|o| o.values().any(|v| v == id))
            }) else {
                continue;
            };
            let Resolved::Ready(up) = self.resolve(inst, results) else {
                continue;
            };
            self.restore_inputs(p, results, &up)?;
            let Resolved::Ready(up) = self.resolve(inst, results) else {
                continue;
            };
            let parts = self.key_parts(inst, up)?;
            let key = parts.key();
            eprintln!("recomputing {} (its output {id} was discarded)", inst.name);
            let row = self.execute(p, inst, parts, key, true)?;
            results.insert(inst.name.clone(), row.outputs);
            any = true;
        }
        Ok(any)
    }

    /// Discards the outputs instances mark `discard` (of the instances in `among`, or all)
    /// once every instance of `p` that reads them has its result in this run, unless the same
    /// artifact is also kept as another output of the pipeline or tagged.
    pub(super) fn discard_consumed(
        &self,
        p: &Pipeline,
        results: &BTreeMap<String, BTreeMap<String, String>>,
        among: Option<&BTreeSet<&str>>,
    ) -> Result<(), DagError> {
        let candidates = |i: &Instance| {
            !i.discard.is_empty() && among.is_none_or(|a| a.contains(i.name.as_str()))
        };
        if !p.instances.iter().any(candidates) {
            return Ok(());
        }
        let mut protected: BTreeSet<String> = self.store.tags()?.into_values().flatten().collect();
        for inst in &p.instances {
            for (out, id) in results.get(&inst.name).into_iter().flatten() {
                if !inst.discard.contains(out) {
                    protected.insert(id.clone());
                }
            }
        }
        for inst in p.instances.iter().filter(|i| candidates(i)) {
            let Some(outs) = results.get(&inst.name) else {
                continue;
            };
            for out in &inst.discard {
                let Some(id) = outs.get(out) else { continue };
                let consumed = p
                    .instances
                    .iter()
                    .filter(|c| {
                        c.inputs
                            .values()
                            .any(|(up, o)| *up == inst.name && o == out)
                    })
                    .all(|c| results.contains_key(&c.name));
                if consumed && !protected.contains(id) {
                    self.store.discard(id)?;
                }
            }
        }
        Ok(())
    }
}
