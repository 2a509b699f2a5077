//! A pipeline's declarations turned into stage instances: upstream instances joined where
//! their sweep values agree, crossed with each declaration's own sweep.

use super::{Decl, Instance, set_path, unknown_stage, value_label};
use crate::dag::{DagError, Registry};
use std::collections::{BTreeMap, BTreeSet};

/// One instance's sweep values and, per upstream declaration, the upstream instance it joins.
type Combo = (BTreeMap<String, String>, BTreeMap<String, String>);

/// The instances made so far, in topological order.
#[derive(Default)]
pub(super) struct Instances {
    pub(super) instances: Vec<Instance>,
    /// Declaration name → indices of its instances.
    by_decl: BTreeMap<String, Vec<usize>>,
    /// The value behind each (sweep variable, label).
    swept: BTreeMap<(String, String), toml::Value>,
}

impl Instances {
    /// Adds the instances of `d` (its upstream declarations already added).
    pub(super) fn add(&mut self, d: &Decl, reg: &dyn Registry, seed: u64) -> Result<(), DagError> {
        let def = reg.get(&d.stage).ok_or_else(|| unknown_stage(d, reg))?;
        for (key, values) in &d.sweep {
            for v in values {
                self.swept.insert((key.clone(), value_label(v)), v.clone());
            }
        }
        // A list input gathers every instance of the stages it names (their sweep values do
        // not pass on); the other inputs join upstream instances whose sweep values agree.
        let many: BTreeSet<&str> = def
            .inputs()
            .iter()
            .filter(|s| s.many)
            .map(|s| s.name)
            .collect();
        let gathered = |iname: &str| many.contains(iname.split_once('.').map_or(iname, |p| p.0));
        for (vars, chosen) in self.combos(d, &gathered)? {
            let table = self.configured(d, &vars)?;
            // Its own `seed`, else a replicate's (swept here or upstream), else the pipeline's.
            let seed = match (d.seed, vars.get(super::SEED)) {
                (Some(own), _) => own,
                (None, Some(label)) => label.parse().map_err(|_| DagError::Sweep {
                    stage: d.name.clone(),
                    msg: format!("seed `{label}` is not a non-negative integer"),
                })?,
                (None, None) => seed,
            };
            let config = def.config(&table).map_err(|reason| DagError::Config {
                stage: d.name.clone(),
                at: None,
                reason,
            })?;
            let name = if vars.is_empty() {
                d.name.clone()
            } else {
                let label: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}[{}]", d.name, label.join(","))
            };
            crate::store::check_name(&name).map_err(|e| DagError::Sweep {
                stage: d.name.clone(),
                msg: e.to_string(),
            })?;
            let inputs = self.wire(d, &chosen, &gathered);
            self.by_decl
                .entry(d.name.clone())
                .or_default()
                .push(self.instances.len());
            self.instances.push(Instance {
                name,
                decl: d.name.clone(),
                stage: d.stage.clone(),
                config,
                seed,
                inputs,
                vars,
                discard: d.discard.clone(),
            });
        }
        Ok(())
    }

    /// Every agreeing join of `d`'s upstream instances (list inputs aside), crossed with `d`'s
    /// own sweep.
    fn combos(&self, d: &Decl, gathered: &dyn Fn(&str) -> bool) -> Result<Vec<Combo>, DagError> {
        let mut combos: Vec<Combo> = vec![(BTreeMap::new(), BTreeMap::new())];
        let ups: BTreeSet<&str> = d
            .inputs
            .iter()
            .filter(|(iname, _)| !gathered(iname))
            .map(|(_, (s, _))| s.as_str())
            .collect();
        for up in ups {
            let mut next = Vec::new();
            for (vars, chosen) in &combos {
                for &i in &self.by_decl[up] {
                    let u = &self.instances[i];
                    if u.vars
                        .iter()
                        .all(|(k, v)| vars.get(k).is_none_or(|x| x == v))
                    {
                        let mut vs = vars.clone();
                        vs.extend(u.vars.clone());
                        let mut ch = chosen.clone();
                        ch.insert(up.to_string(), u.name.clone());
                        next.push((vs, ch));
                    }
                }
            }
            combos = next;
        }
        for (key, values) in &d.sweep {
            let mut next = Vec::new();
            for (vars, chosen) in &combos {
                if vars.contains_key(key) {
                    return Err(DagError::Sweep {
                        stage: d.name.clone(),
                        msg: format!("`{key}` is already swept upstream"),
                    });
                }
                for v in values {
                    let mut vs = vars.clone();
                    vs.insert(key.clone(), value_label(v));
                    next.push((vs, chosen.clone()));
                }
            }
            combos = next;
        }
        Ok(combos)
    }

    /// `d`'s table with its swept and followed settings set to the values of `vars`.
    fn configured(
        &self,
        d: &Decl,
        vars: &BTreeMap<String, String>,
    ) -> Result<toml::Table, DagError> {
        let sweep_err = |msg: String| DagError::Sweep {
            stage: d.name.clone(),
            msg,
        };
        let mut table = d.table.clone();
        for (key, values) in d.sweep.iter().filter(|(k, _)| k != super::SEED) {
            let v = values
                .iter()
                .find(|v| Some(&value_label(v)) == vars.get(key))
                .cloned()
                .unwrap_or(toml::Value::Boolean(false));
            set_path(&mut table, key)
                .map(|slot| *slot = v)
                .ok_or_else(|| sweep_err(format!("cannot set `{key}`")))?;
        }
        for (var, path) in &d.follow {
            let v = vars
                .get(var)
                .and_then(|label| self.swept.get(&(var.clone(), label.clone())))
                .cloned()
                .ok_or_else(|| {
                    sweep_err(format!("follows `{var}`, which no stage upstream sweeps"))
                })?;
            set_path(&mut table, path)
                .map(|slot| *slot = v)
                .ok_or_else(|| sweep_err(format!("cannot set `{path}`")))?;
        }
        Ok(table)
    }

    /// `d`'s inputs: the chosen upstream instance for each, every instance of the named stages
    /// for each list input (`name.k`, in the order given).
    fn wire(
        &self,
        d: &Decl,
        chosen: &BTreeMap<String, String>,
        gathered: &dyn Fn(&str) -> bool,
    ) -> BTreeMap<String, (String, String)> {
        let mut inputs = BTreeMap::new();
        let mut lists: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        for (iname, (up, out)) in &d.inputs {
            if gathered(iname) {
                let base = iname.split_once('.').map_or(iname.as_str(), |p| p.0);
                // Entries in the order given (`name.k`, k numeric), each expanded to every
                // instance of its stage.
                let k: usize = iname
                    .split_once('.')
                    .and_then(|p| p.1.parse().ok())
                    .unwrap_or(0);
                let list = lists.entry(base).or_default();
                for &i in &self.by_decl[up] {
                    list.push((format!("{k:06}/{}", self.instances[i].name), out.clone()));
                }
                list.sort();
            } else {
                inputs.insert(iname.clone(), (chosen[up].clone(), out.clone()));
            }
        }
        for (base, list) in lists {
            for (k, (tagged, out)) in list.into_iter().enumerate() {
                let inst = tagged
                    .split_once('/')
                    .map_or(tagged.clone(), |p| p.1.to_string());
                inputs.insert(format!("{base}.{k}"), (inst, out));
            }
        }
        inputs
    }
}
