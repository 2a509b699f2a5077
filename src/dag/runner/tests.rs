use super::*;
use crate::dag::{InputSpec, OutputSpec, StageDef, pipeline::parse_str};

/// `gen` writes its config; `train` (device-sensitive) and `eval` write their input id, and
/// `train` also the device, so a result shows where it came from.
struct Fake(&'static str);

impl StageDef for Fake {
    fn name(&self) -> &'static str {
        self.0
    }
    fn version(&self) -> u32 {
        1
    }
    fn inputs(&self) -> Vec<InputSpec> {
        match self.0 {
            "gen" => vec![],
            _ => vec![InputSpec {
                name: "x",
                kind: "blob",
                optional: false,
                many: false,
            }],
        }
    }
    fn outputs(&self) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: "main",
            kind: "blob",
        }]
    }
    fn config(&self, table: &toml::Table) -> Result<serde_json::Value, crate::dag::ConfigError> {
        serde_json::to_value(table).map_err(|e| crate::dag::ConfigError::Invalid(e.to_string()))
    }
    fn uses_device(&self) -> bool {
        self.0 == "train"
    }
    fn run(
        &self,
        ctx: &RunCtx,
    ) -> Result<crate::dag::Outputs, Box<dyn std::error::Error + Send + Sync>> {
        let mut w = ctx.store.writer("blob", 1)?;
        let body = format!(
            "{} {} {} {}",
            self.0,
            ctx.config,
            ctx.input("x").unwrap_or("-"),
            if self.uses_device() { &ctx.device } else { "" }
        );
        w.add_bytes("data", body.as_bytes())?;
        Ok([("main".to_string(), ctx.commit(w, None)?)].into())
    }
}

struct Reg(Vec<Fake>);

impl Registry for Reg {
    fn get(&self, name: &str) -> Option<&dyn StageDef> {
        self.0
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s as &dyn StageDef)
    }
    fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|s| s.0).collect()
    }
}

fn pipeline(reg: &Reg, steps: u32) -> Pipeline {
    let text = format!(
        "[pipeline]\nname = \"p\"\n[stages.gen]\nn = 1\n\
         [stages.train]\ninputs = {{ x = \"gen\" }}\nsteps = {steps}\n\
         [stages.eval]\ninputs = {{ x = \"train\" }}\n"
    );
    parse_str(&text, "p.toml", "p", reg).unwrap()
}

/// Sweeping `seed` gives replicates: each instance, and every instance downstream of it,
/// runs with its seed (a distinct cache key), unless a stage sets its own; a seed both set
/// and swept, or one that is not a non-negative integer, is refused.
#[test]
fn a_seed_sweep_makes_replicates_downstream() {
    let reg = Reg(vec![Fake("gen"), Fake("train"), Fake("eval")]);
    let text = "[pipeline]\nname = \"p\"\nseed = 7\n[stages.gen]\nn = 1\n\
                [stages.train]\ninputs = { x = \"gen\" }\nsweep = { seed = [1, 2] }\n\
                [stages.eval]\ninputs = { x = \"train\" }\n\
                [stages.fixed]\nstage = \"eval\"\ninputs = { x = \"train\" }\nseed = 5\n";
    let p = parse_str(text, "p.toml", "p", &reg).unwrap();
    let seed_of = |name: &str| {
        p.instances
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no `{name}`"))
            .seed
    };
    assert_eq!(seed_of("gen"), 7);
    assert_eq!(seed_of("train[seed=1]"), 1);
    assert_eq!(seed_of("train[seed=2]"), 2);
    assert_eq!(seed_of("eval[seed=2]"), 2);
    assert_eq!(seed_of("fixed[seed=1]"), 5);
    // The seed is not a config key, and the replicates are distinct results.
    assert!(p.instances.iter().all(|i| i.config.get("seed").is_none()));
    let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
    let store = Store::open(d.path()).unwrap();
    let rows = run_on(&store, &reg, &p, "cpu");
    let key = |inst: &str| {
        rows.iter()
            .find(|r| r.instance == inst)
            .unwrap()
            .key
            .clone()
    };
    assert_ne!(key("train[seed=1]"), key("train[seed=2]"));
    let bad = |body: &str| {
        parse_str(&format!("[stages.gen]\n{body}\n"), "p.toml", "p", &reg)
            .unwrap_err()
            .to_string()
    };
    let e = bad("seed = 1\nsweep = { seed = [1, 2] }");
    assert!(e.contains("both sets `seed` and sweeps it"), "{e}");
    let e = bad("sweep = { seed = [1, -2] }");
    assert!(
        e.contains("lists `-2`; seeds are non-negative integers"),
        "{e}"
    );
    let e = bad("sweep = { seed = [1.5] }");
    assert!(e.contains("lists `1.5`"), "{e}");
}

fn outputs_of(rows: &[StatusRow], inst: &str) -> (&'static str, Option<String>) {
    let r = rows.iter().find(|r| r.instance == inst).unwrap();
    (r.state, r.outputs.get("main").cloned())
}

fn run_on(store: &Store, reg: &Reg, p: &Pipeline, device: &str) -> Vec<RunRow> {
    Runner::new(store, reg, device)
        .run(p, &RunOptions::default())
        .unwrap()
}

#[test]
fn lookups_find_results_computed_on_another_device() {
    let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
    let store = Store::open(d.path()).unwrap();
    let reg = Reg(vec![Fake("gen"), Fake("train"), Fake("eval")]);
    let p = pipeline(&reg, 5);
    let gpu = run_on(&store, &reg, &p, "cuda:0");
    assert!(gpu.iter().all(|r| r.outcome == Outcome::Ran));
    let out = |rows: &[RunRow], i: usize| rows[i].outputs.get("main").cloned();

    // Keyed for the CPU, training and what follows it are not cached…
    let strict = Runner::new(&store, &reg, "cpu").status(&p).unwrap();
    assert_eq!(outputs_of(&strict, "gen"), ("cached", out(&gpu, 0)));
    assert_eq!(outputs_of(&strict, "train").0, "stale");
    assert_eq!(outputs_of(&strict, "eval").0, "stale");
    // …but a lookup across devices finds the GPU run's artifacts, downstream included.
    let any = Runner::new(&store, &reg, "cpu")
        .any_device()
        .status(&p)
        .unwrap();
    assert_eq!(outputs_of(&any, "train"), ("cached", out(&gpu, 1)));
    assert_eq!(outputs_of(&any, "eval"), ("cached", out(&gpu, 2)));
    assert_eq!(any[1].key, gpu[1].key, "the record found is the GPU run's");

    // The most recent run of the instance wins: a CPU run, then the GPU run again (cached).
    let cpu = run_on(&store, &reg, &p, "cpu");
    assert_ne!(out(&cpu, 1), out(&gpu, 1));
    let any = Runner::new(&store, &reg, "cpu")
        .any_device()
        .status(&p)
        .unwrap();
    assert_eq!(outputs_of(&any, "train").1, out(&cpu, 1));
    let again = run_on(&store, &reg, &p, "cuda:0");
    assert_eq!(again[1].outcome, Outcome::Cached);
    let any = Runner::new(&store, &reg, "cuda:7")
        .any_device()
        .status(&p)
        .unwrap();
    assert_eq!(outputs_of(&any, "train").1, out(&gpu, 1));
    assert_eq!(outputs_of(&any, "eval").1, out(&gpu, 2));

    // Without a head (another pipeline name), the newest matching record is used.
    let mut other = p.clone();
    other.name = "q".into();
    let any = Runner::new(&store, &reg, "cpu")
        .any_device()
        .status(&other)
        .unwrap();
    assert_eq!(outputs_of(&any, "train").0, "cached");

    // Anything else that differs still makes the result stale, and says why (not the device).
    let changed = pipeline(&reg, 6);
    let any = Runner::new(&store, &reg, "cpu")
        .any_device()
        .status(&changed)
        .unwrap();
    let train = any.iter().find(|r| r.instance == "train").unwrap();
    assert_eq!(train.state, "stale");
    assert_eq!(
        train.reasons,
        vec![Reason::Config {
            field: "steps".into(),
            old: Some(serde_json::json!(5)),
            new: Some(serde_json::json!(6)),
        }]
    );
}
