//! Rendered graphs determine their edge lists: the clearance of every stored drawing, re-checked
//! from the `images` artifact's node geometry read back with polars.

use crate::common::*;
use asymm::render::Gray;
use asymm::render::clearance::{clearance_margin_px, clearance_violation};
use asymm::tasks::graph_coloring::Graph;
use polars::prelude::{DataFrame, ParquetReader, SerReader};
use std::collections::HashMap;
use std::path::Path;

/// The single data file of the artifact of `kind` in a store holding one run.
fn artifact_frame(store: &Path, kind: &str) -> DataFrame {
    let files: Vec<_> = object_files(store)
        .into_iter()
        .filter(|f| {
            let m = std::fs::read_to_string(f.parent().unwrap().join("manifest.json")).unwrap();
            m.contains(&format!("\"kind\": \"{kind}\""))
        })
        .collect();
    assert_eq!(files.len(), 1, "{kind}: {files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .unwrap()
}

fn strings(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

fn float_lists(df: &DataFrame, name: &str) -> Vec<Vec<f32>> {
    df.column(name)
        .unwrap()
        .list()
        .unwrap()
        .series_iter()
        .map(|s| {
            let s = s.unwrap_or_else(|| panic!("null `{name}` for a graph"));
            s.f32().unwrap().iter().map(|x| x.unwrap()).collect()
        })
        .collect()
}

#[test]
fn every_stored_graph_drawing_has_clearance() {
    let d = asymm::util::fsx::TempDir::new("asymm-it").unwrap();
    let store = d.path().join("store");
    let p = d.path().join("p.toml");
    std::fs::write(
        &p,
        r#"
[pipeline]
name = "clearance"
seed = 11

[stages.synthesize]
task = "graph_coloring"
splits = { test = 200, sft = 4600, rl = 200 }
graph = { min_nodes = 7, max_nodes = 9, edge_prob = 0.35 }

[stages.render]
inputs = { puzzles = "synthesize" }
size = 224
"#,
    )
    .unwrap();
    ok(asymm(&store, &["run", p.to_str().unwrap()]));
    let puzzles = artifact_frame(&store, "puzzles");
    let perception: HashMap<String, String> = strings(&puzzles, "id")
        .into_iter()
        .zip(strings(&puzzles, "perception"))
        .collect();
    let images = artifact_frame(&store, "images");
    let ids = strings(&images, "id");
    assert_eq!(ids.len(), 5000);
    let xs = float_lists(&images, "node_x");
    let ys = float_lists(&images, "node_y");
    let radii: Vec<f32> = images
        .column("node_radius")
        .unwrap()
        .f32()
        .unwrap()
        .iter()
        .map(|r| r.unwrap())
        .collect();
    let pngs: Vec<Vec<u8>> = images
        .column("image")
        .unwrap()
        .struct_()
        .unwrap()
        .field_by_name("bytes")
        .unwrap()
        .binary()
        .unwrap()
        .iter()
        .map(|b| b.unwrap().to_vec())
        .collect();
    let margin = clearance_margin_px(224, 1.6);
    for (i, id) in ids.iter().enumerate() {
        let g = Graph::parse(&perception[id]).unwrap();
        assert!((7..=9).contains(&g.n), "{id}");
        assert_eq!((xs[i].len(), ys[i].len()), (g.n, g.n), "{id}");
        assert!(
            (radii[i] - 0.055 * 224.0).abs() < 1e-4,
            "{id}: {}",
            radii[i]
        );
        let centres: Vec<(f32, f32)> = xs[i].iter().copied().zip(ys[i].iter().copied()).collect();
        if let Some(v) = clearance_violation(&g.edges, &centres, radii[i], margin) {
            panic!("{id} ({}): {v}", perception[id]);
        }
        // The geometry is that of the stored image: each node's ring crosses the pixel one
        // radius to the left, right, above and below its centre.
        let img = Gray::from_png(&pngs[i]).unwrap();
        assert_eq!((img.width, img.height), (224, 224));
        for &(x, y) in &centres {
            let r = radii[i];
            for (px, py) in [(x + r, y), (x - r, y), (x, y + r), (x, y - r)] {
                let v = img.pixels[py as usize * 224 + px as usize];
                assert!(v < 128, "{id}: no ring at ({px}, {py}): {v}");
            }
        }
    }
}
